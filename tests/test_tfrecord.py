"""The TFRecord contract: encode -> file -> tf.data parse is bit-exact, and bad input is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from lvmass.core import contracts  # noqa: E402
from lvmass.storage.tfrecord import decode_example, encode_example, feature_spec, parse_example  # noqa: E402


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(contracts.TENSOR_SHAPE).astype(np.float32)
    image[..., 10:, :] = 0.0  # padding slices past n_slices
    labels = rng.integers(0, contracts.NUM_CLASSES, contracts.LABEL_VOLUME_SHAPE).astype(np.uint8)
    return image, labels


def _encode(image: np.ndarray, labels: np.ndarray | None, **overrides) -> bytes:
    kwargs = dict(
        eid=1234567,
        instance=2,
        image=image,
        labels=labels,
        spacing_mm=(1.8269, 1.8269, 10.0),
        sex="male",
        manual_lv_mass_g=101.5,
        n_slices=10,
    )
    kwargs.update(overrides)
    return encode_example(**kwargs)


class TestRoundTrip:
    def test_through_a_tfrecord_file_and_tf_data(self, tmp_path):
        image, labels = _volume(0)
        image_before, labels_before = image.copy(), labels.copy()
        path = str(tmp_path / "part-00000.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(_encode(image, labels))
            writer.write(_encode(image * 2, None, eid=7, sex="female", manual_lv_mass_g=None, n_slices=9))
        records = list(tf.data.TFRecordDataset(path).map(parse_example).as_numpy_iterator())

        assert len(records) == 2
        first, second = records
        np.testing.assert_array_equal(first[contracts.FEATURE_IMAGE], image)  # bit-exact
        assert first[contracts.FEATURE_IMAGE].dtype == np.float32
        assert first[contracts.FEATURE_IMAGE].shape == contracts.TENSOR_SHAPE
        np.testing.assert_array_equal(first[contracts.FEATURE_LABELS], labels)
        assert first[contracts.FEATURE_LABELS].dtype == np.uint8
        assert first[contracts.FEATURE_EID] == 1234567
        assert first[contracts.FEATURE_INSTANCE] == 2
        assert first[contracts.FEATURE_HAS_LABELS] == 1
        np.testing.assert_allclose(first[contracts.FEATURE_SPACING], np.float32([1.8269, 1.8269, 10.0]))
        assert first[contracts.FEATURE_SEX] == contracts.SEX_CODE["male"]
        assert first[contracts.FEATURE_MANUAL_MASS] == np.float32(101.5)
        assert first[contracts.FEATURE_HAS_MANUAL_MASS] == 1
        assert first[contracts.FEATURE_N_SLICES] == 10

        np.testing.assert_array_equal(second[contracts.FEATURE_IMAGE], image * 2)
        assert second[contracts.FEATURE_HAS_LABELS] == 0
        assert not second[contracts.FEATURE_LABELS].any()
        assert second[contracts.FEATURE_SEX] == contracts.SEX_CODE["female"]
        assert math.isnan(second[contracts.FEATURE_MANUAL_MASS])
        assert second[contracts.FEATURE_HAS_MANUAL_MASS] == 0
        # inputs untouched
        np.testing.assert_array_equal(image, image_before)
        np.testing.assert_array_equal(labels, labels_before)

    def test_nan_manual_mass_and_unknown_sex(self):
        image, labels = _volume(1)
        decoded = decode_example(_encode(image, labels, manual_lv_mass_g=float("nan"), sex=None))
        assert decoded[contracts.FEATURE_HAS_MANUAL_MASS] == 0
        assert math.isnan(decoded[contracts.FEATURE_MANUAL_MASS])
        assert decoded[contracts.FEATURE_SEX] == -1

    def test_float64_image_is_stored_as_float32(self):
        image, labels = _volume(2)
        decoded = decode_example(_encode(image.astype(np.float64), labels.astype(np.int64)))
        np.testing.assert_array_equal(decoded[contracts.FEATURE_IMAGE], image)
        np.testing.assert_array_equal(decoded[contracts.FEATURE_LABELS], labels)

    def test_spec_keys_are_the_contract_keys(self):
        keys = {getattr(contracts, name) for name in dir(contracts) if name.startswith("FEATURE_")}
        assert set(feature_spec()) == keys


_LABEL_SHAPE = contracts.LABEL_VOLUME_SHAPE


class TestRefusals:
    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            ({"image": np.zeros((256, 256, 12, 1), "f4")}, r"image must have shape .*\(256, 256, 12, 1\)"),
            ({"labels": np.full(_LABEL_SHAPE, 3, np.uint8)}, r"labels values .* Received values: \[3\]"),
            ({"labels": np.zeros(_LABEL_SHAPE, np.float32)}, "labels must be an integer array"),
            ({"spacing_mm": (1.0, 1.0)}, r"spacing_mm must be 3 .* Received: \[1.0, 1.0\]"),
            ({"spacing_mm": (1.0, -1.0, 10.0)}, "spacing_mm must be 3 positive"),
            ({"sex": "M"}, "sex must be one of .* Received: 'M'"),
            ({"n_slices": 14}, r"n_slices must be in \[1, 13\]. Received: 14"),
        ],
    )
    def test_bad_input(self, overrides, match):
        image, labels = _volume(3)
        overrides = dict(overrides)
        image = overrides.pop("image", image)
        labels = overrides.pop("labels", labels)
        with pytest.raises(ValueError, match=match):
            _encode(image, labels, **overrides)

    def test_non_finite_image(self):
        image, labels = _volume(4)
        image[0, 0, 0, 0] = np.inf
        with pytest.raises(ValueError, match="image must be finite"):
            _encode(image, labels)

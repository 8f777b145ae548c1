"""``--mode tensorize``: the same decode, written as TFRecords the trainer parses with the one spec."""

from __future__ import annotations

import io

import numpy as np
import pytest

from beam_pipeline.pipeline import run
from lvmass.core import contracts
from lvmass.core.decode import decode_participant_zip
from lvmass.storage.tfrecord import parse_example, record_dataset
from tests.core.test_overlay import ml4h_reference_labels
from tests.dicom_factory import FactoryZip, StackGeometry, ukbb_participant_zip

pytestmark = pytest.mark.slow

# Square pixels of UK Biobank's nominal 1.83 mm: the tensor grid of a run without a model, so no slice is
# resampled and the expected tensor is the acquired pixels, placed and z-scored by hand.
GEOMETRY = StackGeometry(pixel_spacing_mm=(1.83, 1.83))


def placed(acquired: np.ndarray, dtype: type) -> np.ndarray:
    """``acquired`` (rows, cols, slices), rows and cols <= 256, slices <= 13, placed by hand as the
    contract says: zero padding centred, the odd remainder bottom/right, slices from index 0."""
    rows, cols, n = acquired.shape
    top, left = (256 - rows) // 2, (256 - cols) // 2
    out = np.zeros(contracts.LABEL_VOLUME_SHAPE, dtype)
    out[top : top + rows, left : left + cols, :n] = acquired
    return out


def expected_image(z: FactoryZip) -> np.ndarray:
    """The tensor a correct decode + layout gives, from the factory's own pixel values: the
    end-diastolic (phase 0) frame of each slice, base to apex, rescaled, z-scored over all acquired
    pixels by hand (float64, ddof 0), then placed."""
    acquired = np.stack([z.expected_image(k, 0).astype(np.float64) for k in z.base_indices], axis=-1)
    z_scored = (acquired - acquired.mean()) / acquired.std()
    return placed(z_scored, np.float32)[..., np.newaxis]


def expected_labels(z: FactoryZip) -> np.ndarray:
    """The label volume from the factory's own outlines through ml4h's morphology as the test writes it
    (tests/test_overlay.py: scipy and ml4h's disk), on a copy padded wide enough that ml4h's big closing
    never meets the border, then placed."""
    pad = 40
    slices = []
    for outline in z.ed_outlines:
        if outline is None:
            slices.append(np.zeros((z.geometry.rows, z.geometry.cols), np.uint8))
        else:
            labels = ml4h_reference_labels(np.pad(outline, pad).astype(np.uint8))
            slices.append(labels[pad:-pad, pad:-pad].astype(np.uint8))
    return placed(np.stack(slices, axis=-1), np.uint8)


def test_tensorize_writes_parseable_examples(tmp_path):
    """Each example holds the tensor and labels built by hand from what the factory wrote (not from
    ``build_image_tensor`` / ``build_label_volume``, which would share any bug with the writer). Bugs
    caught: a wrong end-diastolic frame, slices in the wrong order or place, a normalisation over the
    padding, labels from another slice or shifted, a spacing other than the grid's."""

    inputs = tmp_path / "in"
    inputs.mkdir()
    zips = {
        1000001: ukbb_participant_zip(1000001, n_slices=8, seed=1, geometry=GEOMETRY),
        1000002: ukbb_participant_zip(1000002, n_slices=7, seed=2, with_inlinevf=False, geometry=GEOMETRY),
    }
    for z in zips.values():
        (inputs / z.name).write_bytes(z.data)
    (inputs / "1000003_20209_2_0.zip").write_bytes(b"not a zip")
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("eid,sex,height_cm,weight_kg,manual_lv_mass_g\n1000001,1,180,80,101.5\n1000002,0,160,60,\n")

    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--phenotypes={pheno}", f"--output={out}", "--mode=tensorize",
                   "--runner=FnApiRunner"])
    assert (summary["inputs_matched"], summary["participants_written"], summary["participants_failed"]) == (
        3, 2, 1)
    assert summary["reconciled"] and summary["mode"] == "tensorize"

    files = sorted((out / "tfrecords").glob("*.tfrecord.gz"))
    assert files
    dataset = record_dataset([str(f) for f in files]).map(parse_example)
    examples = {int(e[contracts.FEATURE_EID]): e for e in dataset.as_numpy_iterator()}
    assert sorted(examples) == [1000001, 1000002]

    for eid, z in zips.items():
        example = examples[eid]
        assert example[contracts.FEATURE_IMAGE].shape == contracts.TENSOR_SHAPE
        assert example[contracts.FEATURE_LABELS].shape == contracts.LABEL_VOLUME_SHAPE
        # float32 z-scores of magnitude < 4 against a float64 reference: 1e-5 is a few float32 ulps
        np.testing.assert_allclose(example[contracts.FEATURE_IMAGE], expected_image(z), rtol=0, atol=1e-5)
        g = z.geometry
        np.testing.assert_allclose(example[contracts.FEATURE_SPACING],
                                   [*g.pixel_spacing_mm, g.slice_spacing_mm], rtol=1e-6)
        assert example[contracts.FEATURE_INSTANCE] == 2
        assert example[contracts.FEATURE_N_SLICES] == z.n_slices
        if any(outline is not None for outline in z.ed_outlines):
            assert example[contracts.FEATURE_HAS_LABELS] == 1
            np.testing.assert_array_equal(example[contracts.FEATURE_LABELS], expected_labels(z))
        else:
            assert example[contracts.FEATURE_HAS_LABELS] == 0
            assert not example[contracts.FEATURE_LABELS].any()

    male, female = examples[1000001], examples[1000002]
    assert (male[contracts.FEATURE_SEX], female[contracts.FEATURE_SEX]) == (1, 0)
    assert male[contracts.FEATURE_HAS_MANUAL_MASS] == 1
    assert male[contracts.FEATURE_MANUAL_MASS] == pytest.approx(101.5)
    assert female[contracts.FEATURE_HAS_MANUAL_MASS] == 0 and np.isnan(female[contracts.FEATURE_MANUAL_MASS])


def test_n_slices_is_the_slices_in_the_tensor():
    """The TFRecord's n_slices counts the slices placed in the 13-slot tensor (what the trainer masks
    by), not the acquired ones: 15 acquired -> 13."""
    from lvmass.core.measure import participant_from_study
    from lvmass.core.phenotypes import Phenotype
    from lvmass.storage.tfrecord import tfrecord_bytes

    z = ukbb_participant_zip(1000015, n_slices=15, n_phases=2, seed=15)
    study = decode_participant_zip(io.BytesIO(z.data), z.name)
    participant = participant_from_study(study, with_inlinevf=True)
    assert (participant.n_slices, participant.n_slices_used) == (15, contracts.TENSOR_SLICES)
    assert contracts.QC_TOO_MANY_SLICES_TRUNCATED in participant.qc_flags
    example = parse_example(tfrecord_bytes(participant, Phenotype(eid=1000015, sex="male")))
    assert int(example[contracts.FEATURE_N_SLICES]) == contracts.TENSOR_SLICES
    assert int(example[contracts.FEATURE_HAS_LABELS]) == 1

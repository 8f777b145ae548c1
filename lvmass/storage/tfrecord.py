"""The TFRecord contract between ``--mode tensorize`` and the trainer, defined once.

One ``tf.train.Example`` per participant x instance. Keys come from ``lvmass.core.contracts``
(``FEATURE_*``); arrays travel as raw C-order bytes so that a round trip is bit-exact:

==================  ===========  =====================================================================
key                 type         content
==================  ===========  =====================================================================
eid                 int64        participant id
instance            int64        imaging visit (2 = first imaging visit in UK Biobank)
image               bytes        float32 ``TENSOR_SHAPE`` (256, 256, 13, 1), C order, layout of contracts
labels              bytes        uint8 ``LABEL_VOLUME_SHAPE`` (256, 256, 13), InlineVF labels (zeros if none)
has_labels          int64        1 when ``labels`` holds InlineVF labels, else 0
spacing_mm          float32[3]   (row_mm, col_mm, slice_mm)
sex                 int64        0 female, 1 male, -1 unknown (``contracts.SEX_CODE``)
manual_lv_mass_g    float32      manual LV mass, NaN when unknown
has_manual_mass     int64        1 when ``manual_lv_mass_g`` is finite, else 0
n_slices            int64        slices placed in the tensor, <= 13 (the rest are zero padding)
==================  ===========  =====================================================================

This is the only module of ``beam_pipeline``'s core that imports TensorFlow (lazily, inside the
functions), so the pure pipeline stays importable without it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmass.core import contracts

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

    from lvmass.core.measure import ParticipantTensor
    from lvmass.core.phenotypes import Phenotype

SEX_UNKNOWN_CODE = -1
_N_SPACING = len(contracts.SPACING_FIELDS)


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _sex_code(sex: str | None) -> int:
    if sex is None:
        return SEX_UNKNOWN_CODE
    if sex not in contracts.SEX_CODE:
        raise ValueError(f"sex must be one of {sorted(contracts.SEX_CODE)} or None. Received: {sex!r}")
    return contracts.SEX_CODE[sex]


def _check_array(name: str, array: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Return ``array`` as a C-contiguous array of ``dtype`` after checking its shape and values."""
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}. Received: {array.shape}")
    if dtype == contracts.TENSOR_DTYPE:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name} must be a float array. Received dtype: {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be finite. Received {int(np.sum(~np.isfinite(array)))} non-finite")
    else:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array. Received dtype: {array.dtype}")
        bad = (array < 0) | (array >= contracts.NUM_CLASSES)
        if np.any(bad):
            raise ValueError(
                f"{name} values must be in [0, {contracts.NUM_CLASSES - 1}] (contracts.LABEL_MAP). "
                f"Received values: {sorted(np.unique(array[bad]).tolist())[:5]}"
            )
    return np.ascontiguousarray(array, dtype=dtype)


def encode_example(
    *,
    eid: int,
    instance: int,
    image: np.ndarray,
    labels: np.ndarray | None,
    spacing_mm: tuple[float, float, float] | np.ndarray,
    sex: str | None,
    manual_lv_mass_g: float | None,
    n_slices: int,
) -> bytes:
    """Serialise one participant x instance as a ``tf.train.Example`` (bytes).

    ``image`` is the model tensor (``contracts.TENSOR_SHAPE``); ``labels`` the InlineVF label volume
    (``contracts.LABEL_VOLUME_SHAPE``) or ``None`` when InlineVF drew nothing; ``manual_lv_mass_g`` of
    ``None`` or NaN is stored as NaN with ``has_manual_mass`` 0. Inputs are not modified.
    """
    tf = _tf()
    image_f32 = _check_array("image", image, contracts.TENSOR_SHAPE, contracts.TENSOR_DTYPE)
    if labels is None:
        labels_u8 = np.zeros(contracts.LABEL_VOLUME_SHAPE, dtype=np.uint8)
        has_labels = 0
    else:
        labels_u8 = _check_array("labels", labels, contracts.LABEL_VOLUME_SHAPE, "uint8")
        has_labels = 1
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.shape != (_N_SPACING,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(
            f"spacing_mm must be {_N_SPACING} positive finite numbers {contracts.SPACING_FIELDS}. "
            f"Received: {np.asarray(spacing_mm).tolist()}"
        )
    if not 0 < int(n_slices) <= contracts.TENSOR_SLICES:
        raise ValueError(f"n_slices must be in [1, {contracts.TENSOR_SLICES}]. Received: {n_slices!r}")
    mass = math.nan if manual_lv_mass_g is None else float(manual_lv_mass_g)
    has_mass = int(math.isfinite(mass))
    if not has_mass:
        mass = math.nan

    def _int(value: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def _float(values: list[float]) -> Any:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def _bytes(value: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        contracts.FEATURE_EID: _int(eid),
        contracts.FEATURE_INSTANCE: _int(instance),
        contracts.FEATURE_IMAGE: _bytes(image_f32.tobytes(order="C")),
        contracts.FEATURE_LABELS: _bytes(labels_u8.tobytes(order="C")),
        contracts.FEATURE_HAS_LABELS: _int(has_labels),
        contracts.FEATURE_SPACING: _float([float(s) for s in spacing]),
        contracts.FEATURE_SEX: _int(_sex_code(sex)),
        contracts.FEATURE_MANUAL_MASS: _float([mass]),
        contracts.FEATURE_HAS_MANUAL_MASS: _int(has_mass),
        contracts.FEATURE_N_SLICES: _int(n_slices),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The parsing spec of :func:`encode_example`'s records (every key required)."""
    tf = _tf()
    return {
        contracts.FEATURE_EID: tf.io.FixedLenFeature([], tf.int64),
        contracts.FEATURE_INSTANCE: tf.io.FixedLenFeature([], tf.int64),
        contracts.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
        contracts.FEATURE_LABELS: tf.io.FixedLenFeature([], tf.string),
        contracts.FEATURE_HAS_LABELS: tf.io.FixedLenFeature([], tf.int64),
        contracts.FEATURE_SPACING: tf.io.FixedLenFeature([_N_SPACING], tf.float32),
        contracts.FEATURE_SEX: tf.io.FixedLenFeature([], tf.int64),
        contracts.FEATURE_MANUAL_MASS: tf.io.FixedLenFeature([], tf.float32),
        contracts.FEATURE_HAS_MANUAL_MASS: tf.io.FixedLenFeature([], tf.int64),
        contracts.FEATURE_N_SLICES: tf.io.FixedLenFeature([], tf.int64),
    }


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialised example (a scalar string tensor) into typed, shaped tensors.

    Returns ``image`` float32 ``(256, 256, 13, 1)``, ``labels`` uint8 ``(256, 256, 13)``,
    ``spacing_mm`` float32 ``(3,)`` and the scalar fields (int64, ``manual_lv_mass_g`` float32).
    Works eagerly and inside ``tf.data.Dataset.map``.
    """
    tf = _tf()
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    image = tf.io.decode_raw(parsed[contracts.FEATURE_IMAGE], tf.float32)
    labels = tf.io.decode_raw(parsed[contracts.FEATURE_LABELS], tf.uint8)
    out = dict(parsed)
    out[contracts.FEATURE_IMAGE] = tf.reshape(image, contracts.TENSOR_SHAPE)
    out[contracts.FEATURE_LABELS] = tf.reshape(labels, contracts.LABEL_VOLUME_SHAPE)
    return out


def decode_example(serialized: bytes) -> dict[str, Any]:
    """Parse one serialised example into numpy values (for tools and tests, outside tf.data)."""
    parsed = parse_example(_tf().constant(serialized))
    return {key: value.numpy() for key, value in parsed.items()}


def compression_type(path: str) -> str:
    """TFRecord compression by file name: tensorize writes ``*.tfrecord.gz`` (GZIP); others are plain."""
    return "GZIP" if str(path).endswith(".gz") else ""


def record_dataset(files: Any) -> tf.data.Dataset:
    """A ``tf.data.TFRecordDataset`` over ``files`` (a list, or a string tensor of one file name),
    reading gzip-compressed shards (as ``--mode tensorize`` writes them) and plain ones alike."""
    import tensorflow as tf

    if isinstance(files, (list, tuple)):
        kinds = {compression_type(f) for f in files}
        if len(kinds) > 1:
            raise ValueError(f"TFRecord files mix compressed and plain shards. Received: {list(files)!r}")
        return tf.data.TFRecordDataset(list(files), compression_type=kinds.pop() if kinds else "")
    name = tf.convert_to_tensor(files)
    gz = tf.strings.regex_full_match(name, r".*\.gz")
    return tf.data.TFRecordDataset(name, compression_type=tf.where(gz, "GZIP", ""))


def tfrecord_bytes(participant: ParticipantTensor, phenotype: Phenotype | None) -> bytes:
    """One ``tf.train.Example`` (:func:`encode_example`) of a participant: tensor, InlineVF labels, sex,
    manual mass, and ``n_slices`` = the slices placed in the tensor (at most 13), which is what the
    trainer needs. ``phenotype`` is the row for this participant *and visit* (``PhenotypeTable.lookup``)."""
    manual = phenotype.manual_lv_mass_g if phenotype is not None else None
    return encode_example(
        eid=participant.eid if participant.eid is not None else contracts.UNKNOWN_EID,
        instance=participant.instance,
        image=participant.image,
        labels=participant.inlinevf_labels,
        spacing_mm=participant.spacing_mm,
        sex=phenotype.sex if phenotype is not None else None,
        manual_lv_mass_g=manual,
        n_slices=participant.n_slices_used,
    )

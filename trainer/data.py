"""The trainer's ``tf.data`` input: TFRecords -> split -> (augment) -> batches for ML4H_seg / ML4H_reg.

Records are parsed with :func:`lvmass.storage.tfrecord.parse_example` (the one feature spec). The
train / validation / test split is a deterministic function of the eid (FarmHash of its decimal string,
``tf.strings.to_hash_bucket_fast``), so a participant never moves between splits when files are added,
re-sharded or read in another order; a ``--holdout`` eid list replaces the hash test split.

Augmentation is the domain randomisation of ``trainer.augmentation`` (the one definition, shared with
``trainer.portable``), applied per training example with a generator seeded from (run seed, example
index): in-plane rotation, scaling, translation, per-slice misregistration, intensity curves (gamma,
contrast, per-slice gain), a smooth bias field, blur, Rician noise and slice dropout, then the per-image
z-score of the tensor contract again, so the network learns anatomy rather than one renderer's
appearance. Geometric transforms move the labels with the image (nearest neighbour). ML4H_seg crops
(``crop_px``) are drawn by the same function as ``trainer.portable``'s. Tensors keep the layout of
``lvmass.core.contracts``: ``(rows, cols, slices, 1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from lvmass.core import contracts
from lvmass.storage.tfrecord import parse_example, record_dataset
from trainer import augmentation
from trainer.augmentation import AugmentConfig

SPLITS = ("train", "validation", "test")
_HASH_BUCKETS = 10_000


# --- files and splits -------------------------------------------------------------------------------


def list_files(patterns: str | Sequence[str]) -> list[str]:
    """Expand comma-separated globs (local or ``gs://``); raise naming each pattern that matches nothing."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise ValueError(f"no TFRecord pattern given. Received: {patterns!r}")
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern.strip()))
        if not matched:
            raise FileNotFoundError(f"{pattern}: no TFRecord file matches this pattern")
        files.extend(matched)
    return sorted(set(files))


def read_holdout_eids(path: str) -> np.ndarray:
    """Eids never trained on: one per line (or the first CSV column); a non-numeric header is skipped."""
    with tf.io.gfile.GFile(path, "r") as handle:
        lines = handle.read().splitlines()
    eids = []
    for number, line in enumerate(lines, start=1):
        field = line.split(",")[0].strip()
        if not field or field.startswith("#"):
            continue
        try:
            eids.append(int(field))
        except ValueError:
            if number == 1:  # header such as "eid"
                continue
            raise ValueError(f"{path}: line {number}: not an eid: {field!r}") from None
    if not eids:
        raise ValueError(f"{path}: holdout file lists no eids")
    return np.asarray(sorted(set(eids)), dtype=np.int64)


@dataclass(frozen=True)
class SplitSpec:
    """How eids are assigned to train / validation / test."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    holdout_eids: tuple[int, ...] | None = None  # when given, these are the test split

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1). Received: {value!r}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "validation_fraction + test_fraction must leave some training data. Received: "
                f"{self.validation_fraction!r} + {self.test_fraction!r}"
            )


def _hash_fraction(eid: tf.Tensor) -> tf.Tensor:
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.as_string(tf.cast(eid, tf.int64)), _HASH_BUCKETS)
    return tf.cast(bucket, tf.float32) / _HASH_BUCKETS


def in_split(eid: tf.Tensor, split: str, spec: SplitSpec) -> tf.Tensor:
    """Boolean tensor: does ``eid`` belong to ``split``? (graph-safe, deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: {split!r}")
    eid = tf.cast(eid, tf.int64)
    fraction = _hash_fraction(eid)
    if spec.holdout_eids is not None:
        held = tf.reduce_any(tf.equal(tf.constant(spec.holdout_eids, tf.int64), eid))
        if split == "test":
            return held
        is_validation = fraction < spec.validation_fraction
        wanted = is_validation if split == "validation" else tf.logical_not(is_validation)
        return tf.logical_and(tf.logical_not(held), wanted)
    if split == "test":
        return fraction < spec.test_fraction
    if split == "validation":
        return tf.logical_and(fraction >= spec.test_fraction,
                              fraction < spec.test_fraction + spec.validation_fraction)
    return fraction >= spec.test_fraction + spec.validation_fraction


def split_of(eid: int, spec: SplitSpec) -> str:
    """The split of one eid (eager), for reports and model cards."""
    for split in SPLITS:
        if bool(in_split(tf.constant(eid, tf.int64), split, spec)):
            return split
    raise AssertionError(f"eid {eid} fell in no split")  # pragma: no cover - splits are exhaustive


# --- augmentation -----------------------------------------------------------------------------------


def augment(
    image: tf.Tensor,
    labels: tf.Tensor | None,
    seed: tf.Tensor,
    config: AugmentConfig | None,
    *,
    slice_dropout: bool = True,
    crop_px: int | None = None,
    foreground_prob: float = 0.67,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Randomise one example: ``image`` (rows, cols, slices, 1) f32, ``labels`` (rows, cols, slices) or None.

    The randomisation is ``trainer.augmentation`` (the one definition, also used by ``trainer.portable``),
    run through ``tf.numpy_function`` with the generator :func:`trainer.augmentation.example_rng` of ``seed``
    (a shape-(2,) int tensor: run seed, example index); the same seed gives the same result. Without
    ``crop_px`` the whole tensor is randomised (:func:`~trainer.augmentation.augment_volume`); with it, a
    ``crop_px`` in-plane training crop placed near the labelled LV
    (:func:`~trainer.augmentation.augment_crop`, which needs ``labels``; ``config=None`` gives a plain crop).
    ``slice_dropout`` blanks one slice's image and labels (ML4H_seg only: it would change ML4H_reg's target).
    """
    if crop_px is None and config is None:
        raise ValueError("augment needs an AugmentConfig unless it only crops (crop_px). Received neither")
    if crop_px is not None and labels is None:
        raise ValueError(f"crop_px needs labels (crops are placed by them). Received crop_px={crop_px!r}, "
                         "labels=None")
    rows, cols, n_slices, channels = image.shape
    out_rows, out_cols = (rows, cols) if crop_px is None else (crop_px, crop_px)
    has_labels = labels is not None

    def apply(image_np: np.ndarray, labels_np: np.ndarray, seed_np: np.ndarray):
        rng = augmentation.example_rng(seed_np)
        if crop_px is None:
            out, out_labels = augmentation.augment_volume(
                image_np[..., 0], labels_np if has_labels else None, rng, config, slice_dropout=slice_dropout
            )
        else:
            out, out_labels = augmentation.augment_crop(
                image_np[..., 0], labels_np, rng, config, crop_px=crop_px, foreground_prob=foreground_prob,
                slice_dropout=slice_dropout,
            )
        return out[..., None], np.zeros(0, np.uint8) if out_labels is None else out_labels

    label_input = tf.cast(labels, tf.uint8) if has_labels else tf.zeros([0], tf.uint8)
    out_image, out_labels = tf.numpy_function(
        apply, [image, label_input, tf.cast(seed, tf.int64)], [tf.float32, tf.uint8], stateful=False
    )
    out_image = tf.ensure_shape(out_image, [out_rows, out_cols, n_slices, channels])
    if not has_labels:
        return out_image, None
    return out_image, tf.cast(tf.ensure_shape(out_labels, [out_rows, out_cols, n_slices]), labels.dtype)


# --- datasets ---------------------------------------------------------------------------------------


def _records(files: Sequence[str], *, shuffle_files: bool, seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(
        record_dataset,
        cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _usable(kind: str):
    def predicate(example: dict[str, tf.Tensor]) -> tf.Tensor:
        is_seg = kind == contracts.MODEL_KIND_SEG
        key = contracts.FEATURE_HAS_LABELS if is_seg else contracts.FEATURE_HAS_MANUAL_MASS
        return tf.equal(example[key], 1)

    return predicate


def _check_kind(kind: str) -> None:
    if kind not in (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG):
        raise ValueError(
            f"kind must be {contracts.MODEL_KIND_SEG!r} or {contracts.MODEL_KIND_REG!r}. Received: {kind!r}"
        )


def examples(files: Sequence[str], *, kind: str, split: str, spec: SplitSpec) -> tf.data.Dataset:
    """Parsed examples of one split that the model can learn from (InlineVF labels / manual mass)."""
    _check_kind(kind)
    ds = _records(files, shuffle_files=False, seed=0).map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda ex: in_split(ex[contracts.FEATURE_EID], split, spec))
    return ds.filter(_usable(kind))


def count_examples(files: Sequence[str], *, kind: str, split: str, spec: SplitSpec) -> int:
    """Number of usable examples in a split (reads the scalar fields only)."""
    return len(eids_in(files, kind=kind, split=split, spec=spec))


def to_model_inputs(kind: str, image: tf.Tensor, spacing: tf.Tensor) -> dict[str, tf.Tensor]:
    """The Keras input dict of each model (the serving signature's names)."""
    if kind == contracts.MODEL_KIND_SEG:
        return {contracts.SIGNATURE_INPUT_IMAGE: image}
    return {contracts.SIGNATURE_INPUT_IMAGE: image, contracts.SIGNATURE_INPUT_SPACING: spacing}


def make_dataset(
    files: Sequence[str],
    *,
    kind: str,
    split: str,
    spec: SplitSpec,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment_config: AugmentConfig | None = None,
    crop_px: int | None = None,
    shuffle_buffer: int = 64,
) -> tf.data.Dataset:
    """Batches of ``(inputs, target)`` for ``model.fit``: seg target int32 labels, reg target mass (g).

    ``training``: shuffle files and records, repeat forever (use ``steps_per_epoch``), augment when
    ``augment_config`` is given and crop (seg) when ``crop_px`` is given. Evaluation datasets are read
    once, in file order, unaugmented and uncropped.
    """
    _check_kind(kind)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: {batch_size!r}")
    if crop_px is not None and not (0 < crop_px <= contracts.TENSOR_ROWS):
        raise ValueError(f"crop_px must be in (0, {contracts.TENSOR_ROWS}]. Received: {crop_px!r}")
    if training:
        ds = _records(files, shuffle_files=True, seed=seed)
    else:
        ds = _records(files, shuffle_files=False, seed=seed)
    ds = ds.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda ex: in_split(ex[contracts.FEATURE_EID], split, spec)).filter(_usable(kind))
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    is_seg = kind == contracts.MODEL_KIND_SEG

    def prepare(index: tf.Tensor, ex: dict[str, tf.Tensor]):
        image = ex[contracts.FEATURE_IMAGE]
        labels = ex[contracts.FEATURE_LABELS] if is_seg else None
        element_seed = tf.stack([tf.constant(seed, tf.int64), index])
        if is_seg and training and crop_px is not None and crop_px < contracts.TENSOR_ROWS:
            image, labels = augment(image, labels, element_seed, augment_config, crop_px=crop_px)
        elif training and augment_config is not None:
            image, labels = augment(image, labels, element_seed, augment_config, slice_dropout=is_seg)
        inputs = to_model_inputs(kind, image, ex[contracts.FEATURE_SPACING])
        target = tf.cast(labels, tf.int32) if is_seg else ex[contracts.FEATURE_MANUAL_MASS]
        return inputs, target

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def eids_in(files: Iterable[str], *, kind: str, split: str, spec: SplitSpec) -> list[int]:
    """The usable eids of a split, in file order (for counts, model cards and evaluation reports)."""
    _check_kind(kind)
    from lvmass.storage.tfrecord import feature_spec

    wanted = (contracts.FEATURE_EID, contracts.FEATURE_HAS_LABELS, contracts.FEATURE_HAS_MANUAL_MASS)
    scalars = {k: v for k, v in feature_spec().items() if k in wanted}
    ds = _records(list(files), shuffle_files=False, seed=0)
    ds = ds.map(lambda s: tf.io.parse_single_example(s, scalars))
    ds = ds.filter(lambda ex: in_split(ex[contracts.FEATURE_EID], split, spec)).filter(_usable(kind))
    return [int(ex[contracts.FEATURE_EID]) for ex in ds.as_numpy_iterator()]

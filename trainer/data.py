"""The trainer's ``tf.data`` input: TFRecords -> split -> (augment) -> batches for ML4H_seg / ML4H_reg.

Records are parsed with :func:`beam_pipeline.tfrecord.parse_example` (the one feature spec). The
train / validation / test split is a deterministic function of the eid (FarmHash of its decimal string,
``tf.strings.to_hash_bucket_fast``), so a participant never moves between splits when files are added,
re-sharded or read in another order; a ``--holdout`` eid list replaces the hash test split.

Augmentation is domain randomisation (seeded, stateless, per example): in-plane rotation, scaling,
translation, per-slice misregistration, intensity curves (gamma, contrast, per-slice gain), a smooth bias
field, blur, Rician noise and slice dropout, then the per-image z-score of the tensor contract again,
so the network learns anatomy rather than one renderer's appearance. Geometric transforms move the
labels with the image (nearest neighbour). Tensors keep the layout of ``beam_pipeline.contracts``:
``(rows, cols, slices, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from beam_pipeline import contracts
from beam_pipeline.tfrecord import parse_example, record_dataset
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


def _uniform(seed: tf.Tensor, low: float, high: float, shape: Sequence[int] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _affine_transforms(seeds: tf.Tensor, config: AugmentConfig, rows: int, cols: int, n: int) -> tf.Tensor:
    """(n, 8) projective transforms (output -> input pixel) for n slices: one in-plane rotation/scale/shift
    per volume plus an optional small per-slice shift (breath-hold misregistration)."""
    theta = _uniform(seeds[0], -1.0, 1.0) * config.rotation_deg * math.pi / 180.0
    scale = _uniform(seeds[1], *config.scale_range)
    shift = _uniform(seeds[2], -config.translation_px, config.translation_px, [2])
    misregister = tf.cast(_uniform(seeds[3], 0.0, 1.0) < config.misregistration_prob, tf.float32)
    per_slice = _uniform(seeds[4], -1.0, 1.0, [n, 2]) * config.misregistration_px * misregister
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    cx, cy = (cols - 1) / 2.0, (rows - 1) / 2.0
    tx = shift[0] + per_slice[:, 0]
    ty = shift[1] + per_slice[:, 1]
    # input = M @ (out - c - t) + c with M = R(-theta) / scale; x = column, y = row
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    ones = tf.ones([n])
    zeros = tf.zeros([n])
    return tf.stack([a0 * ones, a1 * ones, a2, b0 * ones, b1 * ones, b2, zeros, zeros], axis=1)


def _warp(slices: tf.Tensor, transforms: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Warp (n, rows, cols, 1) float slices, filling with 0."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=slices,
        transforms=transforms,
        output_shape=tf.shape(slices)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def _gaussian_kernel(sigma: tf.Tensor, radius: int = 3) -> tf.Tensor:
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, 1e-3)))
    return k / tf.reduce_sum(k)


def _blur(slices: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    k = _gaussian_kernel(sigma)
    size = tf.shape(k)[0]
    row_kernel = tf.reshape(k, [size, 1, 1, 1])
    col_kernel = tf.reshape(k, [1, size, 1, 1])
    out = tf.nn.conv2d(slices, row_kernel, strides=1, padding="SAME")
    return tf.nn.conv2d(out, col_kernel, strides=1, padding="SAME")


def _zscore(volume: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean 0 / sd 1 over the acquired voxels (the tensor contract); padding exactly 0."""
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    mean = tf.reduce_sum(volume * mask) / count
    var = tf.reduce_sum(tf.square(volume - mean) * mask) / count
    return (volume - mean) / tf.sqrt(var + 1e-6) * mask


def augment(
    image: tf.Tensor, labels: tf.Tensor | None, seed: tf.Tensor, config: AugmentConfig, *,
    slice_dropout: bool = True,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Randomise one example: ``image`` (rows, cols, slices, 1) f32, ``labels`` (rows, cols, slices) or None.

    ``seed`` is a shape-(2,) int tensor; the same seed gives the same result. Inputs are not modified
    (tensors are immutable). ``slice_dropout`` blanks one slice's image and labels (ML4H_seg only: it would
    change ML4H_reg's target).
    """
    rows, cols, n_slices = image.shape[0], image.shape[1], image.shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=16)
    slices = tf.transpose(image, [2, 0, 1, 3])  # (n, rows, cols, 1)
    mask = tf.cast(tf.not_equal(slices, 0.0), tf.float32)

    transforms = _affine_transforms(seeds, config, rows, cols, n_slices)
    slices = _warp(slices, transforms, "BILINEAR")
    mask = tf.cast(_warp(mask, transforms, "NEAREST") > 0.5, tf.float32)
    warped_labels = None
    if labels is not None:
        label_slices = tf.cast(tf.transpose(labels, [2, 0, 1])[..., None], tf.float32)
        warped_labels = tf.cast(tf.round(_warp(label_slices, transforms, "NEAREST")), labels.dtype)

    # intensity: to [0, 1] over acquired voxels, then curves, bias field, blur, noise
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    big = tf.constant(1e9)
    low = tf.reduce_min(slices + (1.0 - mask) * big)
    high = tf.reduce_max(slices - (1.0 - mask) * big)
    v = tf.clip_by_value((slices - low) / tf.maximum(high - low, 1e-6), 0.0, 1.0)
    v = tf.pow(v + 1e-6, _uniform(seeds[5], *config.gamma_range))
    mean = tf.reduce_sum(v * mask) / count
    v = tf.clip_by_value(mean + (v - mean) * _uniform(seeds[6], *config.contrast_range), 0.0, 1.5)
    gain = tf.exp(tf.random.stateless_normal([n_slices, 1, 1, 1], seeds[7]) * config.slice_gain_sd)
    coarse = tf.random.stateless_normal([1, 4, 4, 1], seeds[8]) * config.bias_field_sd
    field = tf.exp(tf.image.resize(coarse, [rows, cols], method="bicubic"))
    v = v * gain * field
    blur_sigma = _uniform(seeds[9], *config.blur_sigma_px)
    do_blur = _uniform(seeds[10], 0.0, 1.0) < config.blur_prob
    v = tf.cond(do_blur, lambda: _blur(v, blur_sigma), lambda: v)
    noise_sd = _uniform(seeds[11], *config.noise_sd_range)
    n1 = tf.random.stateless_normal(tf.shape(v), seeds[12]) * noise_sd
    n2 = tf.random.stateless_normal(tf.shape(v), seeds[13]) * noise_sd
    v = tf.sqrt(tf.square(v + n1) + tf.square(n2))  # Rician magnitude noise

    if slice_dropout:
        n_acquired = tf.reduce_sum(tf.cast(tf.reduce_max(mask, axis=[1, 2, 3]) > 0, tf.int32))
        drop_index = tf.random.stateless_uniform([], seeds[14], 0, tf.maximum(n_acquired, 1), dtype=tf.int32)
        do_drop = tf.logical_and(_uniform(seeds[15], 0.0, 1.0) < config.slice_dropout_prob, n_acquired > 2)
        keep = 1.0 - tf.cast(do_drop, tf.float32) * tf.one_hot(drop_index, n_slices)
        keep = tf.reshape(keep, [n_slices, 1, 1, 1])
        mask = mask * keep
        if warped_labels is not None:
            warped_labels = warped_labels * tf.cast(keep, warped_labels.dtype)

    v = _zscore(v, mask)
    image_out = tf.ensure_shape(tf.transpose(v, [1, 2, 0, 3]), image.shape)
    labels_out = None
    if warped_labels is not None:
        labels_out = tf.ensure_shape(tf.transpose(warped_labels[..., 0], [1, 2, 0]), labels.shape)
    return image_out, labels_out


# --- crops (ML4H_seg training on a CPU) -------------------------------------------------------------


def random_crop(
    image: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, crop_px: int, foreground_prob: float = 0.67
) -> tuple[tf.Tensor, tf.Tensor]:
    """An in-plane ``crop_px`` square crop; with ``foreground_prob`` it is centred near the labelled LV.

    A fully convolutional ML4H_seg trains on crops and serves full tensors.
    """
    rows, cols = image.shape[0], image.shape[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    fg = tf.cast(tf.where(tf.reduce_max(labels, axis=2) > 0), tf.float32)
    has_fg = tf.shape(fg)[0] > 0
    centre = tf.cond(has_fg, lambda: tf.reduce_mean(fg, axis=0), lambda: tf.constant([rows / 2, cols / 2]))
    jitter = _uniform(seeds[0], -crop_px / 4, crop_px / 4, [2])
    uniform_centre = _uniform(seeds[1], crop_px / 2, rows - crop_px / 2, [2])
    use_fg = tf.logical_and(has_fg, _uniform(seeds[2], 0.0, 1.0) < foreground_prob)
    c = tf.where(use_fg, centre + jitter, uniform_centre)
    top = tf.clip_by_value(tf.cast(tf.round(c[0] - crop_px / 2), tf.int32), 0, rows - crop_px)
    left = tf.clip_by_value(tf.cast(tf.round(c[1] - crop_px / 2), tf.int32), 0, cols - crop_px)
    image = tf.slice(image, [top, left, 0, 0], [crop_px, crop_px, image.shape[2], image.shape[3]])
    labels = tf.slice(labels, [top, left, 0], [crop_px, crop_px, labels.shape[2]])
    return image, labels


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
        if training and augment_config is not None:
            image, labels = augment(image, labels, element_seed, augment_config, slice_dropout=is_seg)
        if is_seg and training and crop_px is not None and crop_px < contracts.TENSOR_ROWS:
            image, labels = random_crop(image, labels, element_seed + 1, crop_px)
        inputs = to_model_inputs(kind, image, ex[contracts.FEATURE_SPACING])
        target = tf.cast(labels, tf.int32) if is_seg else ex[contracts.FEATURE_MANUAL_MASS]
        return inputs, target

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def eids_in(files: Iterable[str], *, kind: str, split: str, spec: SplitSpec) -> list[int]:
    """The usable eids of a split, in file order (for counts, model cards and evaluation reports)."""
    _check_kind(kind)
    from beam_pipeline.tfrecord import feature_spec

    wanted = (contracts.FEATURE_EID, contracts.FEATURE_HAS_LABELS, contracts.FEATURE_HAS_MANUAL_MASS)
    scalars = {k: v for k, v in feature_spec().items() if k in wanted}
    ds = _records(list(files), shuffle_files=False, seed=0)
    ds = ds.map(lambda s: tf.io.parse_single_example(s, scalars))
    ds = ds.filter(lambda ex: in_split(ex[contracts.FEATURE_EID], split, spec)).filter(_usable(kind))
    return [int(ex[contracts.FEATURE_EID]) for ex in ds.as_numpy_iterator()]

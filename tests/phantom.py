"""Tiny ring phantoms in the tensor contract, for the trainer's tests.

Not a cohort generator (that is ``lvmass.synth``): each example is a stack of concentric disks (LV cavity,
bright) inside rings (myocardium, dark) on a noisy background, centred zero-padded and z-scored exactly as
``lvmass.core.contracts`` prescribes, with the labels and the ring's mass in grams. It lets a test show
that a model learns and that exports agree, in seconds, without DICOMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvmass.core import contracts


@dataclass(frozen=True)
class ToyExample:
    eid: int
    image: np.ndarray  # float32 contracts.TENSOR_SHAPE
    labels: np.ndarray  # uint8 contracts.LABEL_VOLUME_SHAPE
    spacing_mm: tuple[float, float, float]
    sex: str
    mass_g: float
    n_slices: int


def toy_example(eid: int, *, seed: int = 0, acquired_px: tuple[int, int] = (192, 208)) -> ToyExample:
    """One phantom: random centre, cavity radius, wall thickness, slice count and pixel size."""
    rng = np.random.default_rng([seed, eid])
    rows, cols = acquired_px
    n_slices = int(rng.integers(8, contracts.TENSOR_SLICES + 1))
    pixel_mm = float(rng.uniform(1.6, 2.1))
    spacing = (pixel_mm, pixel_mm, contracts.PAPER_SLICE_DEPTH_MM)
    centre = np.array([rows / 2, cols / 2]) + rng.uniform(-15, 15, 2)
    cavity_mm = rng.uniform(18, 28)
    wall_mm = rng.uniform(6, 13)
    yy, xx = np.mgrid[:rows, :cols]
    dist_mm = np.hypot(yy - centre[0], xx - centre[1]) * pixel_mm
    acquired = np.zeros((rows, cols, n_slices), np.float32)
    labels_acq = np.zeros((rows, cols, n_slices), np.uint8)
    for k in range(n_slices):
        taper = 1.0 - 0.6 * k / max(n_slices - 1, 1)  # base to apex: smaller towards the apex
        r_cav, r_epi = cavity_mm * taper, (cavity_mm + wall_mm) * taper
        cavity = dist_mm < r_cav
        ring = (dist_mm >= r_cav) & (dist_mm < r_epi)
        labels_acq[..., k][cavity] = contracts.LV_CAVITY
        labels_acq[..., k][ring] = contracts.MYOCARDIUM
        acquired[..., k] = 0.5 + 1.5 * cavity - 0.3 * ring
    acquired += rng.normal(0, 0.15, acquired.shape).astype(np.float32)
    acquired = (acquired - acquired.mean()) / acquired.std()
    image = np.zeros(contracts.TENSOR_SHAPE, np.float32)
    labels = np.zeros(contracts.LABEL_VOLUME_SHAPE, np.uint8)
    top = (contracts.TENSOR_ROWS - rows) // 2
    left = (contracts.TENSOR_COLS - cols) // 2
    image[top:top + rows, left:left + cols, :n_slices, 0] = acquired
    labels[top:top + rows, left:left + cols, :n_slices] = labels_acq
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    mass_g = float((labels == contracts.MYOCARDIUM).sum() * voxel_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML)
    sex = "male" if eid % 2 else "female"
    return ToyExample(eid, image, labels, spacing, sex, mass_g, n_slices)


def write_toy_tfrecords(path: str, eids: list[int], *, seed: int = 0) -> list[ToyExample]:
    """Write phantoms for ``eids`` to one TFRecord file with ``lvmass.storage.tfrecord.encode_example``."""
    import tensorflow as tf

    from lvmass.storage.tfrecord import encode_example

    made = []
    with tf.io.TFRecordWriter(path) as writer:
        for eid in eids:
            ex = toy_example(eid, seed=seed)
            writer.write(
                encode_example(
                    eid=ex.eid, instance=2, image=ex.image, labels=ex.labels, spacing_mm=ex.spacing_mm,
                    sex=ex.sex, manual_lv_mass_g=ex.mass_g, n_slices=ex.n_slices,
                )
            )
            made.append(ex)
    return made

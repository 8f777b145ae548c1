"""The training stream of the per-slice models: random slices, crops of them, batches in a fixed order.

Why a stream of its own: a run must resume after its process (or machine) is gone with the very batches it
would have seen (``trainer.synthslice``), and drawing a slice (:func:`lvmass.synth.slice_image.draw_sample`,
about 50 ms) costs more than a training step's share of it, so:

* every drawn slice is used ``uses`` times, as different crops with different intensity scalings (what is
  expensive is drawn once, what is cheap is drawn every time);
* sample ``i`` of a run depends on ``(seed, purpose, i)`` alone and crop ``u`` of it on ``(seed, i, u)``;
  the samples of a block of ``batch_size x uses`` slices are shuffled into ``uses**2`` batches by a
  permutation seeded by the block's number; batch ``b`` is therefore a function of ``(seed, b)``, and a run
  resumed at step ``b`` rebuilds the block of ``b`` and goes on from there;
* ``workers`` processes draw the samples (worker ``w`` the indices ``w mod workers``), started with
  ``spawn`` so they never inherit TensorFlow; the consumer puts them back in index order.

This module imports no TensorFlow.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lvmass.synth import slice_image as si
from lvmass.synth import slice_scene as ss

LOG = logging.getLogger("trainer.slice_stream")
PURPOSE_TRAIN, PURPOSE_VALIDATION, PURPOSE_EVALUATION = 0, 1, 2
GRID = si.GRID


@dataclass(frozen=True)
class StreamConfig:
    """How training examples are drawn: the grid, the crops, their reuse and the batches."""

    seed: int = 1
    grid_mm: float = 1.5
    crop_px: int = 128
    batch_size: int = 16
    uses: int = 2  # crops per drawn slice
    heart_crop_prob: float = 0.85  # else a crop anywhere (often no heart: the network learns what is not one)
    max_offset: float = 0.3  # of the crop: how far the LV axis may sit from a heart crop's centre
    intensity_sd: float = 0.15  # log-sd of a random gain and sd of a random offset after normalisation
    scene: ss.SceneRanges = field(default_factory=ss.SceneRanges)
    appearance: si.AppearanceRanges = field(default_factory=si.AppearanceRanges)

    def __post_init__(self) -> None:
        if not self.grid_mm > 0 or not 16 <= self.crop_px <= GRID[0] or self.batch_size < 1 or self.uses < 1:
            raise ValueError(
                f"need grid_mm > 0, 16 <= crop_px <= {GRID[0]}, batch_size >= 1, uses >= 1. "
                f"Received: {self!r}"
            )

    @property
    def samples_per_block(self) -> int:
        return self.batch_size * self.uses

    @property
    def batches_per_block(self) -> int:
        return self.uses * self.uses


@dataclass(frozen=True)
class Example:
    """One training example: a crop of a drawn slice, its labels and the myocardial area inside it."""

    image: np.ndarray  # float32 (crop, crop)
    labels: np.ndarray  # uint8 (crop, crop)
    area_mm2: float  # true myocardial area within the crop


def crop_origin(
    sample: si.SliceSample, rng: np.random.Generator, config: StreamConfig, *, centred: bool = False
) -> tuple[int, int]:
    """Top-left corner of a crop: around the LV (randomly off centre unless ``centred``) or anywhere."""
    c = config.crop_px
    if centred or (math.isfinite(sample.z_fraction) and rng.random() < config.heart_crop_prob):
        shift = (0.0, 0.0) if centred else tuple(rng.uniform(-config.max_offset, config.max_offset, 2) * c)
        row, col = sample.lv_centre_px[0] + shift[0], sample.lv_centre_px[1] + shift[1]
    else:
        row, col = rng.uniform(0, GRID[0]), rng.uniform(0, GRID[1])
    r0 = int(np.clip(round(row - c / 2), 0, GRID[0] - c))
    c0 = int(np.clip(round(col - c / 2), 0, GRID[1] - c))
    return r0, c0


def example_from_sample(
    sample: si.SliceSample, rng: np.random.Generator, config: StreamConfig, *, centred: bool = False
) -> Example:
    """A crop of ``sample`` with a random gain and offset (the slice was z-scored alone; the pipeline z-scores
    the whole stack), unless ``centred`` (validation: the plain crop around the LV)."""
    r0, c0 = crop_origin(sample, rng, config, centred=centred)
    c = config.crop_px
    window = (slice(r0, r0 + c), slice(c0, c0 + c))
    image = sample.image[window].copy()
    if not centred and config.intensity_sd > 0:
        acquired = image != 0.0
        gain = math.exp(rng.normal(0.0, config.intensity_sd))
        offset = rng.normal(0.0, config.intensity_sd)
        image = np.where(acquired, image * gain + offset, 0.0).astype(np.float32)
    area = float(sample.myocardium_fraction[window].sum(dtype=np.float64)) * sample.grid_mm**2
    return Example(image=image, labels=sample.labels[window].copy(), area_mm2=area)


def draw(config: StreamConfig, purpose: int, index: int) -> si.SliceSample:
    """Sample ``index`` of a stream's ``purpose``."""
    return si.draw_sample(
        (config.seed, purpose, index),
        grid_mm=config.grid_mm,
        scene_ranges=config.scene,
        appearance_ranges=config.appearance,
    )


def examples_of(config: StreamConfig, purpose: int, index: int) -> list[Example]:
    """The ``uses`` training examples of sample ``index``."""
    sample = draw(config, purpose, index)
    return [
        example_from_sample(sample, np.random.default_rng((config.seed, purpose, index, u, 7)), config)
        for u in range(config.uses)
    ]


def validation_examples(config: StreamConfig, n: int) -> list[Example]:
    """``n`` held-out examples (their own purpose, never in training): plain crops centred on the LV."""
    return [
        example_from_sample(
            draw(config, PURPOSE_VALIDATION, i), np.random.default_rng(0), config, centred=True
        )
        for i in range(n)
    ]


def _worker(
    config: StreamConfig, worker: int, workers: int, first: int, out: mp.Queue, stop: mp.Event
) -> None:
    import os

    os.nice(5)  # training (the consumer) goes first
    parent = os.getppid()
    index = first + ((worker - first) % workers)
    while not stop.is_set() and os.getppid() == parent:  # a killed trainer leaves no orphan drawing on
        item = (index, examples_of(config, PURPOSE_TRAIN, index))
        while not stop.is_set() and os.getppid() == parent:
            try:
                out.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        index += workers


class ExampleStream:
    """Batches ``(images (B, C, C, 1), labels (B, C, C), areas_mm2 (B,))`` from step ``start_step`` on.

    ``workers = 0`` draws in this process (tests, small runs). Use as a context manager or call
    :meth:`close`."""

    def __init__(self, config: StreamConfig, *, start_step: int = 0, workers: int = 1):
        self.config = config
        self.step = int(start_step)
        self.workers = int(workers)
        self.samples_drawn = 0
        self.wait_seconds = 0.0
        block = self.step // config.batches_per_block
        self._next_index = block * config.samples_per_block
        self._pending: dict[int, list[Example]] = {}
        self._block_batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._block = block
        self._skip = self.step % config.batches_per_block
        self._procs: list[mp.Process] = []
        if self.workers > 0:
            ctx = mp.get_context("spawn")
            self._queue: mp.Queue = ctx.Queue(maxsize=max(4, 2 * config.samples_per_block))
            self._stop = ctx.Event()
            for w in range(self.workers):
                proc = ctx.Process(
                    target=_worker,
                    args=(config, w, self.workers, self._next_index, self._queue, self._stop),
                    daemon=True,
                    name=f"slice_stream_{w}",
                )
                proc.start()
                self._procs.append(proc)

    def _sample(self, index: int) -> list[Example]:
        if self.workers == 0:
            self.samples_drawn += 1
            return examples_of(self.config, PURPOSE_TRAIN, index)
        began = time.perf_counter()
        while index not in self._pending:
            i, examples = self._queue.get(timeout=600)
            self._pending[i] = examples
        self.wait_seconds += time.perf_counter() - began
        self.samples_drawn += 1
        return self._pending.pop(index)

    def _fill_block(self) -> None:
        config = self.config
        first = self._block * config.samples_per_block
        examples = [e for i in range(first, first + config.samples_per_block) for e in self._sample(i)]
        order = np.random.default_rng((config.seed, 11, self._block)).permutation(len(examples))
        batches = []
        for b in range(config.batches_per_block):
            chosen = [examples[k] for k in order[b * config.batch_size : (b + 1) * config.batch_size]]
            batches.append(
                (
                    np.stack([e.image for e in chosen])[..., None],
                    np.stack([e.labels for e in chosen]),
                    np.array([e.area_mm2 for e in chosen], dtype=np.float32),
                )
            )
        self._block_batches = batches[self._skip :]
        self._skip = 0
        self._block += 1

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._block_batches:
            self._fill_block()
        self.step += 1
        return self._block_batches.pop(0)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        while True:
            yield self.next_batch()

    def close(self) -> None:
        if self._procs:
            self._stop.set()
            for proc in self._procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
            self._procs = []

    def __enter__(self) -> ExampleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

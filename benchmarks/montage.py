"""Real and synthetic short-axis slices side by side, as the default models see them.

The top rows are the real studies (``benchmarks/real_studies.py``) through the pipeline's own tensor function
on the default model's grid, with the experts' contours; the bottom rows are samples of the training
generator (``lvmass.synth.slice_image``) on the same grid with their true labels. Every crop is 128 px
around the LV, grey levels from each crop's 1st to 99.5th percentile. This is the picture the generator is
judged by before any training: what real scans show must appear among the synthetic slices.

    python benchmarks/montage.py --out docs/images/real_vs_synthetic.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_studies as rs

from lvmass.core import contracts

HALF_PX = 64


def _crop(
    image: np.ndarray, labels: np.ndarray, centre: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = image.shape
    r0 = int(np.clip(round(centre[0]) - HALF_PX, 0, rows - 2 * HALF_PX))
    c0 = int(np.clip(round(centre[1]) - HALF_PX, 0, cols - 2 * HALF_PX))
    window = (slice(r0, r0 + 2 * HALF_PX), slice(c0, c0 + 2 * HALF_PX))
    return image[window], labels[window]


def real_crops(grid_mm: float, per_study: int = 3) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Basal, mid and apical contoured slices of every real study on the grid, with the experts' labels."""
    from lvmass.core.tensor import build_image_tensor, build_label_volume

    out = []
    for real in rs.find_studies():
        expert = rs.load_expert_study(real)
        tensor = build_image_tensor(expert.study, grid_pixel_mm=grid_mm, n_slots=None)
        rows, cols = expert.study.images[0].shape
        per_slice = [
            expert.slices[k].label_map() if k in expert.slices else np.zeros((rows, cols), np.uint8)
            for k in range(expert.study.n_slices)
        ]
        labels = build_label_volume(
            per_slice,
            slice_start=0,
            acquired_pixel_spacing_mm=expert.study.pixel_spacing_mm,
            grid_pixel_mm=grid_mm,
            n_slots=None,
        )
        chosen = expert.myocardium_slices
        for k in [chosen[round(i)] for i in np.linspace(0, len(chosen) - 1, per_study)]:
            rr, cc = np.nonzero(labels[:, :, k])
            image, lab = _crop(tensor.image[:, :, k, 0], labels[:, :, k], (rr.mean(), cc.mean()))
            out.append((f"{real.study_id} slice {k}", image, lab))
    return out


def synthetic_crops(grid_mm: float, n: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` generator samples that cut the LV, cropped around it."""
    from lvmass.synth.slice_image import draw_sample

    out = []
    index = 0
    while len(out) < n:
        sample = draw_sample(
            (seed, 3, index), grid_mm=grid_mm, z_fraction=float(np.linspace(0.1, 0.9, n)[len(out)])
        )
        index += 1
        if not (sample.labels == contracts.MYOCARDIUM).any():
            continue
        image, lab = _crop(sample.image, sample.labels, sample.lv_centre_px)
        out.append((f"synthetic, {sample.acquired_pixel_mm:.2f} mm acquired", image, lab))
    return out


def draw(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, columns: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, labels) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image, cmap="gray", vmin=np.percentile(image, 1), vmax=np.percentile(image, 99.5))
        if (labels == contracts.LV_CAVITY).any():
            ax.contour(labels == contracts.LV_CAVITY, [0.5], colors="red", linewidths=0.6)
        if (labels != contracts.BACKGROUND).any():
            ax.contour(labels != contracts.BACKGROUND, [0.5], colors="lime", linewidths=0.6)
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        "real (experts' contours) above, synthetic (true labels) below: endocardium red, epicardium green"
    )
    from figures import save_figure

    save_figure(fig, path, dpi=80)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/montage.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="docs/images/real_vs_synthetic.png", help="the PNG to write")
    parser.add_argument("--grid_mm", type=float, default=1.5, help="the model grid's pixel size")
    parser.add_argument("--seed", type=int, default=7, help="the synthetic samples' seed")
    args = parser.parse_args(argv)
    real = real_crops(args.grid_mm)
    synthetic = synthetic_crops(args.grid_mm, len(real), args.seed)
    draw([*real, *synthetic], Path(args.out), columns=5)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

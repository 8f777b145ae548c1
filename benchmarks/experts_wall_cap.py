"""The synthetic truth's endocardium on a thin and a thick wall, before and with the experts' wall cap.

Draws two participants of the synthetic evaluation cohort (``benchmarks/evaluate_synthetic.py``'s seed), a
dilated heart with a 3.5 mm wall and one with a 10 mm wall, at the slice through the LV's equator, and shows
the image with the truth as drawn (the endocardium red, the epicardium green), the experts' endocardium at its
fixed reach (``lvmass.synth.slice_image.experts_cavity`` without the cap, dashed orange) and with the cap of
``EXPERTS_MAX_WALL_FRACTION`` (yellow). It prints each slice's myocardial area under the three conventions.
Why: without the cap the thin wall's truth was one fine pixel wide, thinner than its dark band on the image.

    python benchmarks/experts_wall_cap.py --out docs/images/experts_wall_cap.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lvmass.synth import slice_image as si

SEED = 2026  # benchmarks/evaluate_synthetic.py's cohort
PARTICIPANTS = (17, 11)  # a 3.5 mm wall around a 41 mm cavity; a 10.4 mm wall around a 37 mm cavity
NO_CAP = 1.0  # a cap of the whole wall never binds
ZOOM_HALF_PX = 10  # acquired pixels
SLAB_MM = 8.0  # the slice's thickness


def equator_slice(index: int) -> dict[str, object]:
    """One evaluation participant's slice through the LV's equator: the image, the fine fractions as drawn,
    and the experts' fractions without and with the cap."""
    from lvmass.synth.slice_stack import draw_participant, render_slice
    from trainer.slice_stream import PURPOSE_EVALUATION

    ranges = si.AppearanceRanges()
    participant = draw_participant((SEED, PURPOSE_EVALUATION, index), appearance_ranges=ranges)
    scene, app = participant.scene, participant.appearance
    assert scene.heart is not None
    image, drawn, origin = render_slice(
        participant, scene.heart.equator_z_mm, SLAB_MM, ranges, experts_endocardium=0.0
    )
    blur_px = si.EXPERTS_BLUR_MM / app.pixel_mm * ranges.supersample
    threshold = ranges.experts_endocardium
    return {
        "image": image,
        "origin": origin,
        "supersample": ranges.supersample,
        "fine_mm2": (app.pixel_mm / ranges.supersample) ** 2,
        "wall_mm": scene.heart.wall_mm,
        "cavity_radius_mm": scene.heart.cavity_radius_mm,
        "drawn": drawn,
        "no_cap": si.experts_cavity(drawn, blur_px, threshold, max_wall_fraction=NO_CAP),
        "cap": si.experts_cavity(drawn, blur_px, threshold),
    }


def draw(slices: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(slices), figsize=(6 * len(slices), 12), squeeze=False)
    for column, s in enumerate(slices):
        image, k = s["image"], s["supersample"]
        r0, c0 = s["origin"]
        h, w = s["drawn"].shape[1:]
        rows = r0 + (np.arange(h) + 0.5) / k - 0.5
        cols = c0 + (np.arange(w) + 0.5) / k - 0.5
        lv = s["drawn"].sum(axis=0) >= 0.5
        lv_rows, lv_cols = np.nonzero(lv)
        lateral = int(np.argmax(lv_cols))  # the LV's rightmost fine pixel: the zoom's centre
        zoom = (rows[lv_rows[lateral]], cols[lv_cols[lateral]])
        for row, (half, title) in enumerate(((None, "the slice"), (ZOOM_HALF_PX, "its lateral wall"))):
            ax = axes[row, column]
            ax.imshow(image, cmap="gray", vmin=np.percentile(image, 1), vmax=np.percentile(image, 99.5))
            ax.contour(cols, rows, s["drawn"][0], [0.5], colors="red", linewidths=1.0)
            ax.contour(cols, rows, lv.astype(np.float32), [0.5], colors="lime", linewidths=1.0)
            ax.contour(cols, rows, s["no_cap"][0], [0.5], colors="orange", linewidths=1.5, linestyles="--")
            ax.contour(cols, rows, s["cap"][0], [0.5], colors="yellow", linewidths=1.0)
            if half is None:
                ax.set_xlim(cols[0], cols[-1])
                ax.set_ylim(rows[-1], rows[0])
            else:
                ax.set_xlim(zoom[1] - 1.5 * half, zoom[1] + 0.5 * half)
                ax.set_ylim(zoom[0] + half, zoom[0] - half)
            ax.set_title(
                f"wall {s['wall_mm']:.1f} mm, cavity radius {s['cavity_radius_mm']:.0f} mm: {title}",
                fontsize=11,
            )
            ax.axis("off")
    fig.suptitle(
        "drawn: endocardium red, epicardium green; experts' endocardium: fixed reach orange (dashed), "
        f"capped at {si.EXPERTS_MAX_WALL_FRACTION:g} of the wall yellow",
        fontsize=10,
    )
    from figures import save_figure

    save_figure(fig, path, dpi=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/experts_wall_cap.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="docs/images/experts_wall_cap.png", help="the PNG to write")
    args = parser.parse_args(argv)
    slices = [equator_slice(i) for i in PARTICIPANTS]
    for i, s in zip(PARTICIPANTS, slices, strict=True):
        areas = {k: float(s[k][1].sum(dtype=np.float64)) * s["fine_mm2"] for k in ("drawn", "no_cap", "cap")}
        print(
            f"participant {i}: wall {s['wall_mm']:.1f} mm; myocardium {areas['drawn']:.0f} mm2 as drawn, "
            f"{areas['no_cap']:.0f} at the fixed reach, {areas['cap']:.0f} with the cap"
        )
    draw(slices, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

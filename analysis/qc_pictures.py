"""One picture per participant for the QC gallery: the ED slices, base to apex, with the LV outlined.

The pipeline's ``--save_labels`` writes the ED image and each method's labels as NIfTI on the acquisition
grid, slices in the standard view (seen from the apex, anterior up, the right ventricle on the left) and
base to apex along the third axis (``lvmass.core.label_files``). :func:`slice_mosaic` draws them as a
mosaic of square tiles, left to right then top to bottom, slice 1 the base:

* every tile shows the same patch of the patient: the labels' bounding box over all slices plus
  :data:`MARGIN_MM`, made square in millimetres (so anisotropic pixels are shown to scale), or the whole
  slice when nothing is labelled;
* one grey-level window for all tiles (the patch's 1st to 99.5th percentile), so slices compare;
* the endocardial border (the LV cavity's outline) in gold and the epicardial border (the outline of
  cavity and myocardium together) in cyan, one display pixel wide on the upsampled tile; the myocardium
  is the ring between them. Colours a red-green colour-blind reader tells apart;
* a plane on which no slice was acquired (a gap in the stack) is a dark tile marked ``gap``.

Pure numpy and Pillow; returns PNG bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lvmass.core.contracts import LV_CAVITY, MYOCARDIUM

TILE_PX = 120
COLUMNS = 10  # 10 tiles fill a 1250 px page unscaled, so every participant is shown at one scale
MARGIN_MM = 25.0  # around the LV: enough of the RV and the chest wall to judge the borders
GAP_PX = 2
ENDOCARDIUM_RGB = (255, 200, 0)
EPICARDIUM_RGB = (0, 220, 255)
BACKGROUND_RGB = (24, 24, 24)
WINDOW_PERCENTILES = (1.0, 99.5)


def border(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a 4-neighbour outside it (a 1-pixel outline, inside the region)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~interior


def lv_patch(labels: np.ndarray | None, shape: tuple[int, int], pixel_mm: tuple[float, float],
             margin_mm: float = MARGIN_MM) -> tuple[slice, slice]:
    """(rows, cols) of the square patch (in mm) shown in every tile: the labelled region of all slices
    plus ``margin_mm``, clipped to the image; the whole image when nothing is labelled."""
    rows, cols = shape
    row_mm, col_mm = pixel_mm
    if labels is None or not np.any(labels):
        return slice(0, rows), slice(0, cols)
    found = np.nonzero(np.any(np.asarray(labels) > 0, axis=2))
    centre_r = (found[0].min() + found[0].max()) / 2.0
    centre_c = (found[1].min() + found[1].max()) / 2.0
    extent_mm = max((found[0].max() - found[0].min() + 1) * row_mm,
                    (found[1].max() - found[1].min() + 1) * col_mm)
    side_mm = extent_mm + 2 * margin_mm
    half_r, half_c = side_mm / row_mm / 2.0, side_mm / col_mm / 2.0
    r0, r1 = max(0, round(centre_r - half_r)), min(rows, round(centre_r + half_r) + 1)
    c0, c1 = max(0, round(centre_c - half_c)), min(cols, round(centre_c + half_c) + 1)
    return slice(r0, r1), slice(c0, c1)


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, WINDOW_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


def _tile(image: np.ndarray, labels: np.ndarray | None, window: tuple[float, float],
          size: int) -> Image.Image:
    low, high = window
    grey = np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0) * 255.0
    tile = Image.fromarray(grey.astype(np.uint8), mode="L").resize((size, size), Image.Resampling.BILINEAR)
    rgb = np.array(tile.convert("RGB"))
    if labels is not None:
        big = np.array(Image.fromarray(labels.astype(np.uint8), mode="L").resize((size, size),
                                                                                  Image.Resampling.NEAREST))
        rgb[border(big > 0)] = EPICARDIUM_RGB
        rgb[border(big == LV_CAVITY)] = ENDOCARDIUM_RGB
    return Image.fromarray(rgb, mode="RGB")


def slice_mosaic(image: np.ndarray, labels: np.ndarray | None, pixel_mm: tuple[float, float], *,
                 tile_px: int = TILE_PX, columns: int = COLUMNS) -> bytes:
    """The PNG mosaic of one participant (module docstring): ``image`` and ``labels`` (rows, cols,
    planes), the labels' codes those of ``contracts.LABEL_MAP``; ``pixel_mm`` (row, col) spacing."""
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be 3-D (rows, cols, planes). Received shape {img.shape}")
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and lab.shape != img.shape:
        raise ValueError(f"labels {lab.shape} and image {img.shape} are not on one grid")
    if lab is not None and not np.isin(lab, (0, LV_CAVITY, MYOCARDIUM)).all():
        raise ValueError(f"labels hold codes outside 0, {LV_CAVITY}, {MYOCARDIUM}: {np.unique(lab).tolist()}")
    rows, cols = lv_patch(lab, img.shape[:2], pixel_mm)
    planes = img.shape[2]
    acquired = [bool(np.any(img[:, :, k]) or (lab is not None and np.any(lab[:, :, k])))
                for k in range(planes)]
    patch = img[rows, cols, :]
    window = _window(patch[:, :, [k for k in range(planes) if acquired[k]]] if any(acquired) else patch)
    n_cols = max(1, min(columns, planes))
    n_rows = -(-planes // n_cols)
    canvas = Image.new("RGB", (n_cols * (tile_px + GAP_PX) - GAP_PX, n_rows * (tile_px + GAP_PX) - GAP_PX),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k in range(planes):
        x, y = (k % n_cols) * (tile_px + GAP_PX), (k // n_cols) * (tile_px + GAP_PX)
        if acquired[k]:
            tile_labels = None if lab is None else lab[rows, cols, k]
            canvas.paste(_tile(patch[:, :, k], tile_labels, window, tile_px), (x, y))
        else:
            draw.rectangle([x, y, x + tile_px - 1, y + tile_px - 1], fill=BACKGROUND_RGB)
            draw.text((x + tile_px // 2 - 10, y + tile_px // 2 - 6), "gap", fill=(200, 200, 200), font=font)
        label = str(k + 1)
        draw.text((x + 4, y + 3), label, fill=(0, 0, 0), font=font)
        draw.text((x + 3, y + 2), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def pixel_spacing_of(affine: np.ndarray) -> tuple[float, float]:
    """(row, col) pixel spacing (mm) of a volume's affine: the lengths of its first two columns."""
    a = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))


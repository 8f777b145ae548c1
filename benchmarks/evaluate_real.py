"""Score an ML4H_seg SavedModel on the one real study we have, against its expert's end-diastolic contours.

The study (``tests/data/real_cmr/SCD0000501.zip``: Sunnybrook SC-HF-I-6, GE Signa HDx 1.5 T, 11 slices x
20 phases, 1.3672 mm pixels, 8 mm slices) goes through the pipeline's own decode (``beam_pipeline.decode``),
tensor (``beam_pipeline.tensor.build_image_tensor`` on the model card's grid) and model handler
(``beam_pipeline.inference.SavedModelHandler``); the predicted labels are mapped back to the acquisition grid
with ``beam_pipeline.tensor.unplace_label_volume`` and compared, slice by slice, with the expert's endocardial
contours (``SCD0000501_endocardial_contours.zip``), rasterised at the acquired pixel centres.

Which frame. The expert contoured two frames per slice (image numbers 20k+9 and 20k+19); end diastole is the
phase with the larger cavities: phase 19 of 20, TriggerTime 623 ms, late in the cycle just before the next R
wave. The pipeline's ED rule (``--ed_rule first_trigger_time``) takes the first trigger time instead, 10 ms
after the R wave: the same cardiac phase one beat later, but another image. The Dice is therefore computed
on the expert's own frame, decoded by the pipeline's decoder from those images alone (one frame per slice,
so the rule has nothing else to pick), and the same measures are also reported on the pipeline's default frame
against the same contours (``pipeline_frame``), for what a run of ``lvmass run`` measures.

Measures, per model:

* LV cavity Dice per contoured slice (predicted label 1 against the contour's interior; papillary muscles and
  trabeculae are inside the expert's endocardial contour and the model's cavity alike) and its mean;
* a myocardial ring on every contoured slice (the expert contoured base to apex): myocardium present and at
  least ``qc.RING_ENCLOSED_CAVITY_MIN`` of the predicted cavity enclosed by it (``qc.label_qc_flags``' test);
* the raw mass (voxels x grid voxel x 1.05 g/mL, ``beam_pipeline.mass``) against the pipeline's plausible
  range ``contracts.PLAUSIBLE_LV_MASS_RANGE_G`` and adult reference limits; the cavity volumes of the
  prediction and of the contours.

``python benchmarks/evaluate_real.py [--model_seg DIR] [--name NAME] --record`` adds the model's entry to
``benchmarks/results/real_study_evaluation.json`` and rewrites ``real_study_evaluation.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from matplotlib.path import Path as Polygon
from scipy.ndimage import binary_fill_holes

from beam_pipeline import contracts
from beam_pipeline.geometry import ViewTransform
from beam_pipeline.study import DecodedStudy

REPO = Path(__file__).resolve().parent.parent
REAL_ZIP = REPO / "tests" / "data" / "real_cmr" / "SCD0000501.zip"
CONTOURS_ZIP = REPO / "tests" / "data" / "real_cmr" / "SCD0000501_endocardial_contours.zip"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_NAME = "real_study_evaluation"
PHASES_PER_SLICE = 20  # images N = 20 k + phase, phase 1..20, of slice k
# Adult LV mass reference limits (CMR, SSFP, papillary muscles in the cavity; Kawel-Boehm et al. 2020):
# women 58-150 g, men 80-200 g; a failing, dilated heart may sit above them.
ADULT_LV_MASS_REFERENCE_G = (58.0, 200.0)
TARGETS = {"cavity_dice_mean_min": 0.85}


@dataclass(frozen=True)
class ExpertContour:
    """One expert endocardial contour: its image number and (x = column, y = row) points in pixels."""

    image_number: int
    points_px: np.ndarray

    @property
    def slice_index(self) -> int:
        """The slice of the acquisition (0-based, in image-number order)."""
        return (self.image_number - 1) // PHASES_PER_SLICE

    @property
    def phase(self) -> int:
        """The cine phase (0-based) of the contoured image."""
        return (self.image_number - 1) % PHASES_PER_SLICE

    @property
    def area_px(self) -> float:
        x, y = self.points_px[:, 0], self.points_px[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def read_contours(path: Path = CONTOURS_ZIP) -> list[ExpertContour]:
    """Every contour in the zip (``IM-0001-NNNN-icontour-manual.txt``: one ``x y`` per line)."""
    contours = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if not name.endswith(".txt"):
                continue
            number = int(name.rsplit("/", 1)[-1].split("-")[2])
            contours.append(ExpertContour(number, np.loadtxt(io.BytesIO(archive.read(name)), ndmin=2)))
    return contours


def end_diastolic_contours(contours: Sequence[ExpertContour]) -> dict[int, ExpertContour]:
    """Slice index -> the expert's end-diastolic contour. End diastole is one phase of the cycle for every
    slice: of the contoured phases, the one whose contours hold the larger cavity in total (phase 19 here).
    Slice by slice the larger contour is not always it: on slice 9, near the apex, the end-systolic contour
    is the larger one (the base descends into the slice in systole)."""
    totals: dict[int, float] = {}
    for contour in contours:
        totals[contour.phase] = totals.get(contour.phase, 0.0) + contour.area_px
    phase = max(totals, key=lambda p: totals[p])
    return {c.slice_index: c for c in sorted(contours, key=lambda c: c.slice_index) if c.phase == phase}


def rasterise_contour(points_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool mask of the pixels whose centres lie inside the contour (x = column, y = row)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    return Polygon(points_px).contains_points(centres).reshape(shape)


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|) of two masks; 1.0 when both are empty."""
    a, b = np.asarray(predicted, dtype=bool), np.asarray(reference, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def is_ring(labels_slice: np.ndarray) -> bool:
    """A myocardial ring: myocardium present and enclosing at least ``qc.RING_ENCLOSED_CAVITY_MIN`` of the
    slice's predicted cavity (the test of ``qc.label_qc_flags``), and some cavity at all."""
    from beam_pipeline.qc import RING_ENCLOSED_CAVITY_MIN

    myo = labels_slice == contracts.MYOCARDIUM
    cavity = labels_slice == contracts.LV_CAVITY
    n_cavity = int(cavity.sum())
    if not myo.any() or n_cavity == 0:
        return False
    return int((binary_fill_holes(myo) & cavity).sum()) >= RING_ENCLOSED_CAVITY_MIN * n_cavity


def view_transform(description: str) -> ViewTransform:
    """The :class:`ViewTransform` a decoded study records as ``in_plane_view`` (``"none"`` or steps)."""
    steps = set() if description == "none" else set(description.split("+"))
    unknown = steps - {"transpose", "flip_rows", "flip_cols"}
    if unknown:
        raise ValueError(f"unknown in-plane view steps {sorted(unknown)} in {description!r}")
    return ViewTransform("transpose" in steps, "flip_rows" in steps, "flip_cols" in steps)


def _openers(members: Mapping[str, bytes]) -> dict[str, Callable[[], BinaryIO]]:
    return {name: (lambda data=data: io.BytesIO(data)) for name, data in members.items()}


def decode_frames(members: Mapping[str, bytes], image_numbers: Sequence[int], source: str) -> DecodedStudy:
    """The pipeline's decode of the given images only (one frame per slice: the ED rule has no choice)."""
    from beam_pipeline.decode import decode_dicom_members

    chosen = {f"{n}.dcm": members[f"{n}.dcm"] for n in image_numbers}
    return decode_dicom_members(_openers(chosen), source)


def decode_pipeline_frame(source: Path) -> DecodedStudy:
    """The pipeline's decode of the whole zip, its default ED rule (first trigger time)."""
    from beam_pipeline.decode import decode_participant_zip

    with open(source, "rb") as handle:
        return decode_participant_zip(handle, str(source))


def contour_masks(
    members: Mapping[str, bytes], study: DecodedStudy, contours: Mapping[int, ExpertContour]
) -> dict[int, np.ndarray]:
    """Decoded slice index -> the expert's cavity mask in the decoded (standard) view. Each contour's
    image is found among the decoded slices by its pixels (as the decoder turned them to the standard view),
    so neither slice order nor orientation is assumed."""
    transform = view_transform(study.in_plane_view)
    out: dict[int, np.ndarray] = {}
    for contour in contours.values():
        ds = pydicom.dcmread(io.BytesIO(members[f"{contour.image_number}.dcm"]))
        pixels = transform.apply(ds.pixel_array.astype(np.float32))
        mask = transform.apply(rasterise_contour(contour.points_px, ds.pixel_array.shape))
        matches = [
            k
            for k, image in enumerate(study.images)
            if image.shape == pixels.shape
            and np.allclose(
                (image - image.mean()) / (image.std() + 1e-9),
                (pixels - pixels.mean()) / (pixels.std() + 1e-9),
                atol=1e-4,
            )
        ]
        if len(matches) == 1:
            out[matches[0]] = mask
    return out


def contour_masks_by_position(
    study: DecodedStudy, reference: DecodedStudy, masks: Mapping[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """The same masks on another decode of the study (another frame of each slice): slices matched by
    their position along the normal (the same acquisition, so the same positions and view)."""
    if study.in_plane_view != reference.in_plane_view:
        raise ValueError(
            f"two decodes of one study in different views: {study.in_plane_view!r}, "
            f"{reference.in_plane_view!r}"
        )
    out = {}
    for k, mask in masks.items():
        gaps = np.abs(np.asarray(study.slice_positions_mm) - reference.slice_positions_mm[k])
        if gaps.min() < 0.5:
            out[int(np.argmin(gaps))] = mask
    return out


def evaluate_frame(
    study: DecodedStudy,
    masks: Mapping[int, np.ndarray],
    predict: Callable[[Any], np.ndarray],
    grid_mm: float | None,
) -> dict[str, Any]:
    """Run the model on a decoded study through the pipeline's tensor path and score it against ``masks``."""
    from beam_pipeline.mass import measure_label_volume
    from beam_pipeline.measure import participant_from_study
    from beam_pipeline.tensor import unplace_label_volume

    participant = participant_from_study(study, with_inlinevf=False, grid_pixel_mm=grid_mm)
    began = time.perf_counter()
    labels = predict(participant)
    seconds = time.perf_counter() - began
    rows, cols = study.images[0].shape
    acquired = unplace_label_volume(
        labels,
        (rows, cols, study.n_slices),
        slice_start=participant.slice_start,
        acquired_pixel_spacing_mm=study.pixel_spacing_mm,
        grid_pixel_mm=grid_mm,
    )
    measured = measure_label_volume(labels, participant.spacing_mm)
    per_slice = []
    pixel_ml = study.pixel_spacing_mm[0] * study.pixel_spacing_mm[1] * study.slice_spacing_mm / 1000.0
    for k in sorted(masks):
        predicted = acquired[:, :, k]
        per_slice.append(
            {
                "slice": k,
                "cavity_dice": dice(predicted == contracts.LV_CAVITY, masks[k]),
                "myocardial_ring": is_ring(predicted),
                "expert_cavity_px": int(masks[k].sum()),
                "predicted_cavity_px": int((predicted == contracts.LV_CAVITY).sum()),
                "predicted_myocardium_px": int((predicted == contracts.MYOCARDIUM).sum()),
            }
        )
    mass = float(measured.lv_mass_raw_g)
    low, high = contracts.PLAUSIBLE_LV_MASS_RANGE_G
    return {
        "n_contoured_slices": len(per_slice),
        "cavity_dice_mean": float(np.mean([s["cavity_dice"] for s in per_slice]))
        if per_slice
        else float("nan"),
        "cavity_dice_min": float(np.min([s["cavity_dice"] for s in per_slice]))
        if per_slice
        else float("nan"),
        "rings": sum(s["myocardial_ring"] for s in per_slice),
        "ring_on_every_contoured_slice": bool(per_slice) and all(s["myocardial_ring"] for s in per_slice),
        "raw_mass_g": mass,
        "raw_mass_in_pipeline_range": low <= mass <= high,
        "raw_mass_in_adult_reference": ADULT_LV_MASS_REFERENCE_G[0] <= mass <= ADULT_LV_MASS_REFERENCE_G[1],
        "predicted_cavity_volume_ml": float(measured.lv_cavity_volume_ml),
        "expert_cavity_volume_ml": float(sum(int(m.sum()) for m in masks.values())) * pixel_ml,
        "inference_seconds": round(seconds, 3),
        "slices": per_slice,
        "trigger_times_ms": list(study.end_diastolic_trigger_times_ms),
    }


def handler_predictor(model_dir: str) -> tuple[Callable[[Any], np.ndarray], Any]:
    """The pipeline's own handler on one participant tensor; the model's card."""
    from beam_pipeline.inference import SavedModelHandler

    handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG)
    loaded = handler.load_model()

    def predict(participant: Any) -> np.ndarray:
        [result] = handler.run_inference([participant], loaded)
        return np.asarray(result.inference, dtype=np.uint8)

    return predict, loaded.card


def evaluate(
    model_dir: str, *, study_zip: Path = REAL_ZIP, contours_zip: Path = CONTOURS_ZIP
) -> dict[str, Any]:
    """Every measure of the module docstring for one model, on the expert's frame and the pipeline's."""
    predict, card = handler_predictor(model_dir)
    grid = card.pixel_spacing_mm
    with zipfile.ZipFile(study_zip) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name.endswith(".dcm")}
    ed = end_diastolic_contours(read_contours(contours_zip))
    phase = next(iter(ed.values())).phase
    n_slices = len(members) // PHASES_PER_SLICE
    numbers = [ed[k].image_number if k in ed else k * PHASES_PER_SLICE + phase + 1 for k in range(n_slices)]
    expert_study = decode_frames(members, numbers, f"{study_zip.name}#expert_ed")
    masks = contour_masks(members, expert_study, ed)
    if len(masks) != len(ed):
        raise ValueError(f"matched {len(masks)} of {len(ed)} expert contours to decoded slices")
    pipeline_study = decode_pipeline_frame(study_zip)
    return {
        "model_seg": model_dir,
        "model_version": card.version,
        "label_source": card.label_source,
        "grid_pixel_mm": grid,
        "trained_on_synthetic_data": card.trained_on_synthetic_data,
        "expert_frame": {"image_numbers": numbers, **evaluate_frame(expert_study, masks, predict, grid)},
        "pipeline_frame": evaluate_frame(
            pipeline_study, contour_masks_by_position(pipeline_study, expert_study, masks), predict, grid
        ),
    }


def markdown(results: Mapping[str, Any]) -> str:
    """The recorded results as a readable table per model."""
    lines = [
        "# ML4H_seg on a real study (Sunnybrook SC-HF-I-6, GE 1.5 T) against the expert's ED contours",
        "",
        "Written by `benchmarks/evaluate_real.py` (its docstring says what each number is). Dice: LV",
        "cavity, per contoured slice, on the acquisition grid. Expert frame: phase 19 of 20 (623 ms), the",
        "expert's end diastole; pipeline frame: the first trigger time (10 ms), what `lvmass run` decodes.",
        "Ring: a myocardial ring on every contoured slice (base to apex). Target of the synthetic-anatomy",
        "model: Dice >= 0.85 on the expert frame, a ring on every slice, a physiological raw mass.",
        "",
    ]
    for name, entry in sorted(results["models"].items()):
        lines += [
            f"## {name}",
            "",
            f"- model: `{entry['model_seg']}` (version {entry['model_version']}, "
            f"label_source `{entry['label_source']}`, grid {entry['grid_pixel_mm']} mm)",
            f"- command: `{entry['command']}`",
            f"- machine: {entry['machine']}",
            f"- date: {entry['date']}",
            "",
            "| frame | mean cavity Dice | min | rings / slices | raw mass (g) "
            "| predicted / expert cavity (mL) |",
            "|---|---|---|---|---|---|",
        ]
        for frame in ("expert_frame", "pipeline_frame"):
            f = entry[frame]
            lines.append(
                f"| {frame.replace('_', ' ')} | {f['cavity_dice_mean']:.3f} | {f['cavity_dice_min']:.3f} | "
                f"{f['rings']} / {f['n_contoured_slices']} | {f['raw_mass_g']:.1f} | "
                f"{f['predicted_cavity_volume_ml']:.0f} / {f['expert_cavity_volume_ml']:.0f} |"
            )
        per = entry["expert_frame"]["slices"]
        lines += [
            "",
            "Per slice, expert frame (base to apex): Dice "
            + ", ".join(f"{s['cavity_dice']:.2f}" for s in per)
            + "; ring "
            + ", ".join("yes" if s["myocardial_ring"] else "no" for s in per),
            "",
        ]
    return "\n".join(lines) + "\n"


def record(name: str, entry: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    """Add (or replace) ``name``'s entry in the JSON and rewrite the markdown."""
    path = results_dir / f"{RESULT_NAME}.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    results["models"][name] = entry
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (results_dir / f"{RESULT_NAME}.md").write_text(markdown(results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/evaluate_real.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model_seg", default=None, help="SavedModel folder (default: the bundled ML4H_seg)")
    parser.add_argument(
        "--name", default=None, help="the entry's name in the results (default: the folder's)"
    )
    parser.add_argument("--record", action="store_true", help=f"write benchmarks/results/{RESULT_NAME}.*")
    args = parser.parse_args(argv)
    from beam_pipeline.inference import bundled_model_dir

    model_dir = args.model_seg or bundled_model_dir(contracts.MODEL_KIND_SEG)
    if model_dir is None:
        print("error: no --model_seg and no bundled ML4H_seg", file=sys.stderr)
        return 2
    began = time.perf_counter()
    entry = evaluate(model_dir)
    entry.update(
        {
            "command": " ".join(
                ["python benchmarks/evaluate_real.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - began, 1),
        }
    )
    name = args.name or ("bundled_ml4h_seg" if args.model_seg is None else Path(model_dir.rstrip("/")).name)
    if args.record:
        record(name, entry)
    summary = {
        frame: {k: entry[frame][k] for k in ("cavity_dice_mean", "rings", "n_contoured_slices", "raw_mass_g")}
        for frame in ("expert_frame", "pipeline_frame")
    }
    print(json.dumps({"model": name, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

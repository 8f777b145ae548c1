"""Score an ML4H_seg model on the real studies against the experts' end-diastolic contours.

The studies (``benchmarks/real_studies.py``: five Sunnybrook heart-failure studies, GE 1.5 T, beside the
repository in ``../shared/data/real_cmr/``, one of them in ``tests/data/real_cmr/``) go through the
pipeline's own decode, tensor (the model card's grid, every slice) and model handler
(``beam_pipeline.inference.SavedModelHandler``, crop policy included); the labels are mapped back to the
acquisition grid with ``lvmass.core.tensor.unplace_label_volume`` and compared slice by slice with the
experts' contours, rasterised by the convention of ``real_studies`` (pixel centres inside the polygon).

Which frame. The experts contoured end diastole (the phase with the larger cavities, late in the cycle);
the pipeline's ED rule (``--ed_rule first_trigger_time``) takes the first trigger time, the same cardiac
phase one beat on but another image. The scores are computed on the experts' own frame, decoded by the
pipeline from those images alone (``expert_frame``), and also on the pipeline's frame against the same
contours (``pipeline_frame``: what ``lvmass run`` measures).

Per study:

* myocardium Dice on every slice with both contours and LV cavity Dice on every slice with an
  endocardial contour (papillary muscles and trabeculae are cavity for the experts and the model), their
  means;
* the mass on the slices with both contours (the model's myocardium voxels on those slices x the grid's
  voxel x 1.05 g/mL, as the pipeline measures it) against the experts' reference mass on the same slices,
  and its error in percent;
* a myocardial ring on every slice with both contours (``lvmass.core.qc.RING_ENCLOSED_CAVITY_MIN`` of
  the cavity enclosed), and the pipeline's QC flags of the whole prediction
  (``lvmass.core.measure.measure_labels`` with the card's pixel-spacing range): ``qc_pass``.

Targets (issue 24): mean myocardium Dice >= 0.75 and mean cavity Dice >= 0.90 over the studies, mass within
15% on every study, a ring on every contoured slice, QC passes.

    python benchmarks/evaluate_real.py --model_seg DIR --name NAME --record   # an export (the pipeline's way)
    python benchmarks/evaluate_real.py --checkpoint RUN_DIR                   # a training run, full field
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import binary_fill_holes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_studies as rs

from lvmass.core import contracts
from lvmass.core.metrics import mask_dice
from lvmass.core.study import DecodedStudy

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_NAME = "real_study_evaluation"
TARGETS = {"myocardium_dice_mean_min": 0.75, "cavity_dice_mean_min": 0.90, "mass_error_max_percent": 15.0}
Predictor = Callable[[Any], np.ndarray]


dice = mask_dice  # 2|A and B| / (|A| + |B|); NaN when both are empty (lvmass.core.metrics' convention)


def is_ring(labels_slice: np.ndarray) -> bool:
    """A myocardial ring: myocardium present and enclosing at least ``qc.RING_ENCLOSED_CAVITY_MIN`` of the
    slice's predicted cavity (the test of ``qc.label_qc_flags``), and some cavity at all."""
    from lvmass.core.qc import RING_ENCLOSED_CAVITY_MIN

    myo = labels_slice == contracts.MYOCARDIUM
    cavity = labels_slice == contracts.LV_CAVITY
    n_cavity = int(cavity.sum())
    if not myo.any() or n_cavity == 0:
        return False
    return int((binary_fill_holes(myo) & cavity).sum()) >= RING_ENCLOSED_CAVITY_MIN * n_cavity


def evaluate_frame(
    study: DecodedStudy,
    expert: Mapping[int, rs.ExpertSlice],
    reference_mass_g: float,
    predict: Predictor,
    grid_mm: float | None,
    training_range: Sequence[float] | None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the model on a decoded study through the pipeline's tensor path and score it."""
    from lvmass.core.measure import measure_labels, participant_from_study
    from lvmass.core.qc import pixel_spacing_qc_flags, qc_pass
    from lvmass.core.tensor import unplace_label_volume

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
    if keep is not None:  # for the figure
        keep.update(images=study.images, predicted=acquired, expert=expert)
    measured = measure_labels(
        participant,
        labels,
        method=contracts.METHOD_ML4H_SEG,
        model_version=None,
        extra_flags=pixel_spacing_qc_flags(participant.acquired_pixel_spacing_mm, training_range),
    )
    voxel_ml = float(np.prod(participant.spacing_mm)) / 1000.0
    per_slice = []
    mass_g = 0.0
    for k in sorted(expert):
        predicted = acquired[:, :, k]
        entry: dict[str, Any] = {
            "slice": k,
            "cavity_dice": dice(predicted == contracts.LV_CAVITY, expert[k].cavity),
            "myocardial_ring": is_ring(predicted),
            "expert_cavity_px": int(expert[k].cavity.sum()),
            "predicted_cavity_px": int((predicted == contracts.LV_CAVITY).sum()),
            "predicted_myocardium_px": int((predicted == contracts.MYOCARDIUM).sum()),
        }
        if expert[k].myocardium is not None:
            entry["myocardium_dice"] = dice(predicted == contracts.MYOCARDIUM, expert[k].myocardium)
            entry["expert_myocardium_px"] = int(expert[k].myocardium.sum())
            grid_k = k - participant.slice_start
            if 0 <= grid_k < labels.shape[2]:
                mass_g += int((labels[:, :, grid_k] == contracts.MYOCARDIUM).sum()) * voxel_ml
        per_slice.append(entry)
    mass_g *= contracts.MYOCARDIAL_DENSITY_G_PER_ML
    myo = [s["myocardium_dice"] for s in per_slice if "myocardium_dice" in s]
    cav = [s["cavity_dice"] for s in per_slice]
    return {
        "n_contoured_slices": len(per_slice),
        "n_myocardium_slices": len(myo),
        "myocardium_dice_mean": float(np.nanmean(myo)) if myo else float("nan"),
        "cavity_dice_mean": float(np.nanmean(cav)) if cav else float("nan"),
        "myocardium_dice_min": float(np.nanmin(myo)) if myo else float("nan"),
        # a ring where the experts drew one (both contours): a basal slice with only an endocardial contour
        # has none to find
        "rings": sum(s["myocardial_ring"] for s in per_slice if "myocardium_dice" in s),
        "ring_on_every_contoured_slice": bool(myo)
        and all(s["myocardial_ring"] for s in per_slice if "myocardium_dice" in s),
        "mass_on_contoured_slices_g": mass_g,
        "reference_mass_g": reference_mass_g,
        "mass_error_percent": 100.0 * (mass_g - reference_mass_g) / reference_mass_g,
        "raw_mass_g": float(measured.lv_mass_raw_g),
        "qc_flags": list(measured.qc_flags),
        "qc_pass": bool(qc_pass(measured.qc_flags)),
        "inference_seconds": round(seconds, 3),
        "slices": per_slice,
    }


def evaluate_study(
    real: rs.RealStudy,
    predict: Predictor,
    grid_mm: float | None,
    training_range: Sequence[float] | None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Both frames of one study."""
    expert = rs.load_expert_study(real)
    reference = expert.reference_mass_g()
    pipeline_study = rs.decode_pipeline_frame(real.zip_path)
    mapping = rs.slices_by_position(pipeline_study, expert.study)
    at_pipeline = {mapping[k]: s for k, s in expert.slices.items() if k in mapping}
    return {
        "study": real.study_id,
        "n_slices": expert.study.n_slices,
        "pixel_spacing_mm": list(expert.study.pixel_spacing_mm),
        "slice_spacing_mm": expert.study.slice_spacing_mm,
        "expert_frame": {
            "image_numbers": list(expert.image_numbers),
            **evaluate_frame(expert.study, expert.slices, reference, predict, grid_mm, training_range, keep),
        },
        "pipeline_frame": evaluate_frame(
            pipeline_study, at_pipeline, reference, predict, grid_mm, training_range
        ),
    }


def summarise(studies: Sequence[Mapping[str, Any]], frame: str = "expert_frame") -> dict[str, Any]:
    """Means over the studies and whether each target holds."""
    rows = [s[frame] for s in studies]
    myo = float(np.mean([r["myocardium_dice_mean"] for r in rows]))
    cav = float(np.mean([r["cavity_dice_mean"] for r in rows]))
    errors = [r["mass_error_percent"] for r in rows]
    within = sum(abs(e) <= TARGETS["mass_error_max_percent"] for e in errors)
    return {
        "n_studies": len(rows),
        "myocardium_dice_mean": myo,
        "cavity_dice_mean": cav,
        "mass_error_percent": errors,
        "mass_abs_error_mean_g": float(
            np.mean([abs(r["mass_on_contoured_slices_g"] - r["reference_mass_g"]) for r in rows])
        ),
        "mass_within_15_percent": within,
        "rings_everywhere": sum(r["ring_on_every_contoured_slice"] for r in rows),
        "qc_pass": sum(r["qc_pass"] for r in rows),
        # a QC pass must mean a trustworthy mass: the studies QC passed whose mass is more than 15% off
        "qc_pass_mass_off_15_percent": sum(
            r["qc_pass"] and abs(r["mass_error_percent"]) > TARGETS["mass_error_max_percent"] for r in rows),
        "targets_met": {
            "myocardium_dice": myo >= TARGETS["myocardium_dice_mean_min"],
            "cavity_dice": cav >= TARGETS["cavity_dice_mean_min"],
            "mass_within_15_percent_every_study": within == len(rows),
            "ring_on_every_contoured_slice": all(r["ring_on_every_contoured_slice"] for r in rows),
            "qc_pass": all(r["qc_pass"] for r in rows),
        },
    }


def qc_passed_wrong(entry: Mapping[str, Any]) -> int:
    """The studies of a recorded entry whose expert frame QC passed with a mass more than 15% off."""
    frames = [study["expert_frame"] for study in entry["studies"]]
    return sum(bool(f["qc_pass"]) and abs(f["mass_error_percent"]) > TARGETS["mass_error_max_percent"]
               for f in frames)


def handler_predictor(model_dir: str) -> tuple[Predictor, Any]:
    """The pipeline's own handler on one participant; the model's card."""
    from beam_pipeline.inference import SavedModelHandler

    handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG)
    loaded = handler.load_model()

    def predict(participant: Any) -> np.ndarray:
        [result] = handler.run_inference([participant], loaded)
        return np.asarray(result.inference, dtype=np.uint8)

    return predict, loaded.card


def checkpoint_predictor(run_dir: str, *, flips: bool | None = None) -> tuple[Predictor, float]:
    """A training run's per-slice network on every slice's whole field of view (no export needed), then the
    post-processing and test-time flips its export's card names (``flips`` None: the card's); the run's
    grid."""
    from lvmass.core.postprocess import POSTPROCESSING
    from trainer.synthslice import SEG, SEG_POSTPROCESS, SEG_TEST_TIME_FLIPS, trained_model

    flips = SEG_TEST_TIME_FLIPS if flips is None else flips
    model, config = trained_model(run_dir, SEG)

    def predict(participant: Any) -> np.ndarray:
        image = np.moveaxis(np.asarray(participant.image)[..., 0], 2, 0)[..., None]
        probabilities = model.predict(image, batch_size=4, verbose=0)
        if flips:  # the card's test_time_flips: the mirrored image's probabilities, mirrored back
            mirrored = model.predict(image[:, :, ::-1], batch_size=4, verbose=0)[:, :, ::-1]
            probabilities = (probabilities + mirrored) / 2
        labels = np.argmax(probabilities, axis=-1).astype(np.uint8)
        labels[participant.n_slices_used :] = 0
        return POSTPROCESSING[SEG_POSTPROCESS](np.moveaxis(labels, 0, 2), spacing_mm=participant.spacing_mm)

    return predict, config.stream.grid_mm


MassPredictor = Callable[[Any], float]


def evaluate_regression(
    real: rs.RealStudy, predict_mass: MassPredictor, grid_mm: float | None
) -> dict[str, Any]:
    """ML4H_reg on one study's expert frame: its mass of the slices with both contours (a per-slice model
    takes any slices, so it is given just those) against the reference, and of the whole stack."""
    from lvmass.core.measure import participant_from_study
    from lvmass.core.model_input import ModelInput

    expert = rs.load_expert_study(real)
    participant = participant_from_study(
        expert.study, with_inlinevf=False, grid_pixel_mm=grid_mm, n_slots=None
    )
    slots = [k - participant.slice_start for k in expert.myocardium_slices]
    spacing = np.asarray(participant.spacing_mm, dtype=np.float32)
    contoured = ModelInput(image=np.ascontiguousarray(participant.image[:, :, slots]), spacing_mm=spacing)
    whole = ModelInput(image=participant.image, spacing_mm=spacing)
    mass = float(predict_mass(contoured))
    reference = expert.reference_mass_g()
    return {
        "study": real.study_id,
        "mass_on_contoured_slices_g": mass,
        "reference_mass_g": reference,
        "mass_error_g": mass - reference,
        "mass_error_percent": 100.0 * (mass - reference) / reference,
        "mass_whole_stack_g": float(predict_mass(whole)),
    }


def reg_handler_predictor(model_dir: str) -> tuple[MassPredictor, Any]:
    """The pipeline's handler for an ML4H_reg export; its card."""
    from beam_pipeline.inference import SavedModelHandler

    handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_REG)
    loaded = handler.load_model()

    slots = loaded.card.tensor_slices

    def predict(example: Any) -> float:
        image = np.asarray(example.image)
        if slots is not None and image.shape[2] != slots:  # a 13-slot model: the rest is padding, as built
            padded = np.zeros((*image.shape[:2], slots, image.shape[3]), dtype=np.float32)
            padded[:, :, : min(slots, image.shape[2])] = image[:, :, :slots]
            example = type(example)(image=padded, spacing_mm=example.spacing_mm)
        [result] = handler.run_inference([example], loaded)
        return float(result.inference)

    return predict, loaded.card


def reg_checkpoint_predictor(run_dir: str) -> tuple[MassPredictor, float]:
    """A ``reg`` training run's counting network as its export would compute the mass (its window
    included, ``trainer.slice_models.mass_model``), without writing the export."""
    from trainer.slice_models import mass_model, model_levels, volume_twin
    from trainer.synthslice import REG, trained_model

    model, config = trained_model(run_dir, REG)
    network = mass_model(
        volume_twin(model, levels=model_levels(model)),
        window_px=config.stream.crop_px // config.reg_input_pool,
    )

    def predict(example: Any) -> float:
        image = np.asarray(example.image, dtype=np.float32)[None]
        spacing = np.asarray(example.spacing_mm, dtype=np.float32)[None]
        return float(np.asarray(network({"image": image, "spacing_mm": spacing})).ravel()[0])

    return predict, config.stream.grid_mm


def summarise_regression(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    errors = np.array([r["mass_error_g"] for r in rows])
    return {
        "n_studies": len(rows),
        "mae_g": float(np.mean(np.abs(errors))),
        "mean_error_g": float(errors.mean()),
        "within_15_percent": int(sum(abs(r["mass_error_percent"]) <= 15.0 for r in rows)),
    }


def evaluate(
    predict: Predictor,
    grid_mm: float | None,
    training_range: Sequence[float] | None,
    data_dir: Path | None = None,
    figure: Path | None = None,
) -> dict[str, Any]:
    kept: list[dict[str, Any]] = []
    studies = []
    for real in rs.find_studies(data_dir):
        keep: dict[str, Any] = {"study": real.study_id}
        studies.append(evaluate_study(real, predict, grid_mm, training_range, keep))
        kept.append(keep)
    if figure is not None:
        draw_figure(kept, studies, figure)
    return {
        "studies": studies,
        "summary": summarise(studies),
        "summary_pipeline_frame": summarise(studies, "pipeline_frame"),
    }


def draw_figure(
    kept: Sequence[Mapping[str, Any]], studies: Sequence[Mapping[str, Any]], path: Path, columns: int = 5
) -> None:
    """One row per study, ``columns`` contoured slices from base to apex: the image around the LV, the
    experts' contours (endocardium red, epicardium green) and the model's (cavity yellow, myocardium outer
    edge cyan), with the slice's myocardium Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kept), columns, figsize=(3.2 * columns, 3.4 * len(kept)), squeeze=False)
    for row, (keep, study) in enumerate(zip(kept, studies, strict=True)):
        per_slice = {s["slice"]: s for s in study["expert_frame"]["slices"]}
        chosen = sorted(keep["expert"])
        picks = [chosen[round(i)] for i in np.linspace(0, len(chosen) - 1, columns)]
        for col, k in enumerate(picks):
            ax = axes[row, col]
            image = keep["images"][k]
            expert = keep["expert"][k]
            predicted = keep["predicted"][:, :, k]
            rr, cc = np.nonzero(expert.label_map())
            centre = (rr.mean(), cc.mean()) if rr.size else (image.shape[0] / 2, image.shape[1] / 2)
            half = 55
            ax.imshow(image, cmap="gray", vmin=np.percentile(image, 1), vmax=np.percentile(image, 99.5))
            ax.contour(expert.cavity, [0.5], colors="red", linewidths=0.8)
            if expert.myocardium is not None:
                ax.contour(expert.myocardium | expert.cavity, [0.5], colors="lime", linewidths=0.8)
            if (predicted == contracts.LV_CAVITY).any():
                ax.contour(
                    predicted == contracts.LV_CAVITY, [0.5], colors="yellow", linewidths=0.8, linestyles="--"
                )
            if (predicted != contracts.BACKGROUND).any():
                ax.contour(
                    predicted != contracts.BACKGROUND, [0.5], colors="cyan", linewidths=0.8, linestyles="--"
                )
            ax.set_xlim(centre[1] - half, centre[1] + half)
            ax.set_ylim(centre[0] + half, centre[0] - half)
            dice_k = per_slice[k].get("myocardium_dice", float("nan"))
            ax.set_title(f"{keep['study']} slice {k}: myo {dice_k:.2f}", fontsize=9)
            ax.axis("off")
    fig.suptitle("experts: endocardium red, epicardium green; model: cavity yellow, epicardium cyan (dashed)")
    from figures import save_figure

    save_figure(fig, path, dpi=55)


def markdown(results: Mapping[str, Any]) -> str:
    """The recorded results as readable tables, one section per model."""
    lines = [
        "# ML4H_seg and ML4H_reg on real studies against the experts' end-diastolic contours",
        "",
        "Written by `benchmarks/evaluate_real.py` (its docstring says what each number is): five Sunnybrook",
        "heart-failure studies (GE 1.5 T, CC0), never used in training. Dice on the acquisition grid, pixel",
        "centres inside the contour; mass on the slices with both contours (x 1.05 g/mL) against the",
        "experts' mass on the same slices. Expert frame: the experts' end diastole; pipeline frame: what",
        "`lvmass run` decodes (first trigger time).",
        f"Targets: {TARGETS}.",
        "",
    ]
    for name, entry in sorted(results["models"].items()):
        s = entry["summary"]
        if entry.get("kind") == contracts.MODEL_KIND_REG:
            lines += [
                f"## {name} (ML4H_reg)",
                "",
                f"- model: `{entry['model']}`, grid {entry['grid_pixel_mm']} mm",
                f"- command: `{entry['command']}`",
                f"- machine: {entry['machine']}; date: {entry['date']}",
                f"- MAE **{s['mae_g']:.1f} g**, mean error {s['mean_error_g']:+.1f} g, within 15% on "
                f"{s['within_15_percent']} / {s['n_studies']}",
                "",
                "| study | mass on contoured slices (g) | reference (g) | error | whole stack (g) |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['study']} | {r['mass_on_contoured_slices_g']:.1f} | {r['reference_mass_g']:.1f} | "
                f"{r['mass_error_percent']:+.1f}% | {r['mass_whole_stack_g']:.1f} |"
                for r in entry["studies"]
            ]
            lines.append("")
            continue
        lines += [
            f"## {name}",
            "",
            f"- model: `{entry['model']}` (version {entry.get('model_version')}, label_source "
            f"`{entry.get('label_source')}`, grid {entry['grid_pixel_mm']} mm)",
            f"- command: `{entry['command']}`",
            f"- machine: {entry['machine']}; date: {entry['date']}",
            f"- expert frame: mean myocardium Dice **{s['myocardium_dice_mean']:.3f}**, mean cavity Dice "
            f"**{s['cavity_dice_mean']:.3f}**, mass within 15% on {s['mass_within_15_percent']} / "
            f"{s['n_studies']}, rings on every contoured slice {s['rings_everywhere']} / {s['n_studies']}, "
            f"QC pass {s['qc_pass']} / {s['n_studies']} (of which more than 15% off: "
            f"{qc_passed_wrong(entry)})",
            "",
            "| study | frame | myocardium Dice | cavity Dice | rings | mass (g) | reference (g) | error "
            "| QC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for study in entry["studies"]:
            for frame in ("expert_frame", "pipeline_frame"):
                f = study[frame]
                lines.append(
                    f"| {study['study']} | {frame.split('_')[0]} | {f['myocardium_dice_mean']:.3f} | "
                    f"{f['cavity_dice_mean']:.3f} | {f['rings']} / {f['n_myocardium_slices']} | "
                    f"{f['mass_on_contoured_slices_g']:.1f} | {f['reference_mass_g']:.1f} | "
                    f"{f['mass_error_percent']:+.1f}% | "
                    f"{'pass' if f['qc_pass'] else ', '.join(f['qc_flags'])} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def record(name: str, entry: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    """Add (or replace) ``name``'s entry in the JSON and rewrite the markdown."""
    from named_results import record_entry

    record_entry(results_dir, RESULT_NAME, name, entry, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/evaluate_real.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model_seg", default=None, help="SavedModel folder (default: the bundled ML4H_seg)")
    parser.add_argument("--checkpoint", default=None, help="a trainer.synthslice run folder or checkpoint")
    parser.add_argument(
        "--data_dir", default=None, help="folder of the studies (default: ../shared/data/real_cmr)"
    )
    parser.add_argument("--name", default=None, help="the entry's name in the results")
    parser.add_argument("--record", action="store_true", help=f"write benchmarks/results/{RESULT_NAME}.*")
    parser.add_argument(
        "--figure", default=None, help="draw the experts' and the model's contours into this PNG"
    )
    parser.add_argument("--model_reg", default=None, help="score this ML4H_reg export instead of a segmenter")
    parser.add_argument("--reg_checkpoint", default=None, help="score this reg training run instead")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.model_reg or args.reg_checkpoint:
        return _main_regression(args, argv, began)
    if args.checkpoint:
        predict, grid = checkpoint_predictor(args.checkpoint)
        meta: dict[str, Any] = {"model": args.checkpoint, "grid_pixel_mm": grid}
        training_range = None
    else:
        from lvmass.storage.models import bundled_model_dir

        model_dir = args.model_seg or bundled_model_dir(contracts.MODEL_KIND_SEG)
        if model_dir is None:
            print("error: no --model_seg and no bundled ML4H_seg", file=sys.stderr)
            return 2
        predict, card = handler_predictor(model_dir)
        grid = card.pixel_spacing_mm
        training_range = card.training_pixel_spacing_mm
        meta = {
            "model": model_dir,
            "model_version": card.version,
            "label_source": card.label_source,
            "grid_pixel_mm": grid,
            "trained_on_synthetic_data": card.trained_on_synthetic_data,
        }
    entry = {
        **meta,
        **evaluate(
            predict,
            grid,
            training_range,
            Path(args.data_dir) if args.data_dir else None,
            Path(args.figure) if args.figure else None,
        ),
    }
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
    if args.record:
        record(args.name or Path(str(entry["model"]).rstrip("/")).name, entry)
    s = entry["summary"]
    print(
        json.dumps(
            {
                "model": entry["model"],
                "summary": s,
                "per_study": {
                    st["study"]: {
                        k: round(st["expert_frame"][k], 3)
                        for k in ("myocardium_dice_mean", "cavity_dice_mean", "mass_error_percent")
                    }
                    for st in entry["studies"]
                },
            },
            indent=2,
        )
    )
    return 0


def _main_regression(args: argparse.Namespace, argv: Sequence[str] | None, began: float) -> int:
    if args.reg_checkpoint:
        predict_mass, grid = reg_checkpoint_predictor(args.reg_checkpoint)
        meta: dict[str, Any] = {"model": args.reg_checkpoint, "grid_pixel_mm": grid}
    else:
        predict_mass, card = reg_handler_predictor(args.model_reg)
        grid = card.pixel_spacing_mm
        meta = {
            "model": args.model_reg,
            "model_version": card.version,
            "label_source": card.label_source,
            "grid_pixel_mm": grid,
        }
    rows = [
        evaluate_regression(real, predict_mass, grid)
        for real in rs.find_studies(Path(args.data_dir) if args.data_dir else None)
    ]
    entry = {
        **meta,
        "kind": contracts.MODEL_KIND_REG,
        "studies": rows,
        "summary": summarise_regression(rows),
        "command": " ".join(
            ["python benchmarks/evaluate_real.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.perf_counter() - began, 1),
    }
    if args.record:
        record(args.name or Path(str(entry["model"]).rstrip("/")).name, entry)
    print(
        json.dumps(
            {
                "model": entry["model"],
                "summary": entry["summary"],
                "per_study": {r["study"]: round(r["mass_error_g"], 1) for r in rows},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A cohort on disk: participant zips, phenotypes, truth tables, truth label volumes.

Layout of ``out_dir`` (the folder names are in ``lvmass.synth.layout``, the truth files' in the truth-file
contract ``lvmass.core.truth``)::

    zips/{eid}_20209_{instance}_0.zip      participant zips (docs/ukbb_format.md)
    phenotypes.csv                          lvmass.core.schema.PHENOTYPE_COLUMNS
    truth.csv                               one row per participant (see participant.render_participant)
    truth.json                              parameters, seed, versions, disease model, InlineVF bias
    truth_labels/{eid}_20209_{instance}_0.npz   ``labels``: uint8 (rows, cols, n_slices) ED truth labels

Workers render and write participants independently (each from ``(seed, eid)``), so the output is the same
for any ``workers``. ``generate_population`` writes the same phenotypes, truth.csv (the columns known
without images) and truth.json without rendering anything: population-level checks at scale.

A non-empty ``out_dir`` is refused unless ``overwrite=True``, which first removes a previous cohort's
entries (and only those): files from two runs are never mixed.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import platform
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvmass.core.contracts import MYOCARDIAL_DENSITY_G_PER_ML, SAX_FIELD_ID
from lvmass.core.schema import DISEASE_COLUMNS, PHENOTYPE_COLUMNS
from lvmass.core.truth import (
    COHORT_KEY,
    DISEASE_MODEL_KEY,
    TRUE_OR_PER_SAMPLE_SD_KEY,
    TRUTH_CSV,
    TRUTH_JSON,
)
from lvmass.core.truth import TRUTH_LABELS_DIRNAME as LABELS_DIRNAME
from lvmass.synth.anatomy import SLICE_SPACING_MM, SLICE_THICKNESS_MM, THETA_SAMPLES, TRUTH_SUBPLANES
from lvmass.synth.config import SynthConfig
from lvmass.synth.inlinevf import FAILURE_KINDS
from lvmass.synth.layout import COHORT_ENTRIES, PHENOTYPES_CSV, ZIPS_DIRNAME
from lvmass.synth.participant import ParticipantData, participant_truth, render_participant
from lvmass.synth.population import fit_disease_model

FIRST_EID_RANGE = (1_000_000, 5_000_000)


@dataclass(frozen=True)
class CohortPaths:
    """Where a generated cohort lives."""

    root: Path
    zips_dir: Path
    phenotypes_csv: Path
    truth_csv: Path
    truth_json: Path
    labels_dir: Path


def cohort_paths(out_dir: str | Path) -> CohortPaths:
    root = Path(out_dir)
    return CohortPaths(
        root=root,
        zips_dir=root / ZIPS_DIRNAME,
        phenotypes_csv=root / PHENOTYPES_CSV,
        truth_csv=root / TRUTH_CSV,
        truth_json=root / TRUTH_JSON,
        labels_dir=root / LABELS_DIRNAME,
    )


def draw_eids(seed: int, participants: int, first_eid: int | None = None) -> list[int]:
    """Unique 7-digit eids: consecutive from ``first_eid`` when given, else a seeded random sample."""
    if participants < 1:
        raise ValueError(f"participants must be >= 1. Received {participants}")
    if first_eid is not None:
        if first_eid < 0:
            raise ValueError(f"first_eid must be non-negative. Received {first_eid}")
        return list(range(first_eid, first_eid + participants))
    rng = np.random.default_rng([seed, 0xE1D])
    lo, hi = FIRST_EID_RANGE
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < participants:
        for e in rng.integers(lo, hi, size=participants - len(out) + 8).tolist():
            if e not in seen:
                seen.add(e)
                out.append(int(e))
                if len(out) == participants:
                    break
    return out


def _write_participant(job: tuple[int, int, SynthConfig, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker: render one participant and write its zip and label volume; return its table rows."""
    eid, seed, config, root = job
    data: ParticipantData = render_participant(eid, seed, config)
    paths = cohort_paths(root)
    (paths.zips_dir / data.zip_name).write_bytes(data.zip_bytes)
    np.savez_compressed(paths.labels_dir / data.zip_name.replace(".zip", ".npz"), labels=data.labels)
    return data.phenotype, data.truth


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _population_summary(
    truth: list[dict[str, Any]], phenotypes: list[dict[str, Any]], config: SynthConfig
) -> dict[str, Any]:
    """Cohort-level truth: true mass and LVMI, realised prevalences and the odds ratios per realised SD of
    true LVMI (``layout.TRUE_OR_PER_SAMPLE_SD_KEY``)."""
    model = fit_disease_model(config.diseases)
    lvmi = np.array([t["true_lvmi_g_m2"] for t in truth], float)
    sd = float(lvmi.std(ddof=1)) if len(lvmi) > 1 else float("nan")
    per_sample_sd = {
        spec.name: math.exp(math.log(spec.or_per_sd_lvmi) * sd / model.lvmi_ref_sd_g_m2)
        if len(lvmi) > 1
        else None
        for spec in config.diseases
    }
    true_mass = np.array([t["true_lv_mass_g"] for t in truth], float)
    return {
        "n_participants": len(truth),
        "true_lv_mass_g": {
            "mean": float(true_mass.mean()),
            "sd": float(true_mass.std(ddof=1)) if len(truth) > 1 else None,
        },
        "true_lvmi_g_m2": {"mean": float(lvmi.mean()), "sd": sd if len(truth) > 1 else None},
        "observed_prevalence": {d: float(np.mean([p[d] for p in phenotypes])) for d in DISEASE_COLUMNS},
        TRUE_OR_PER_SAMPLE_SD_KEY: per_sample_sd,
        "manual_mass_fraction_observed": float(np.mean([p["manual_lv_mass_g"] != "" for p in phenotypes])),
    }


def _cohort_summary(
    truth: list[dict[str, Any]], phenotypes: list[dict[str, Any]], config: SynthConfig
) -> dict[str, Any]:
    """The population summary plus the InlineVF bias the generator built in."""
    true_mass = np.array([t["true_lv_mass_g"] for t in truth], float)
    vf = np.array([t["expected_inlinevf_raw_mass_g"] for t in truth], float)
    ok = np.array([not t["inlinevf_failure"] for t in truth]) & np.isfinite(vf)
    failures = {kind: sum(t["inlinevf_failure"] == kind for t in truth) for kind in FAILURE_KINDS}

    def ratio(mask: np.ndarray) -> float | None:
        return float(vf[mask].mean() / true_mass[mask].mean()) if mask.any() else None

    return {
        **_population_summary(truth, phenotypes, config),
        "inlinevf": {
            "expected_bias_factor": ratio(ok),
            "expected_bias_factor_all": ratio(np.isfinite(vf)),
            "expected_raw_mass_g_mean": float(vf[ok].mean()) if ok.any() else None,
            "true_mass_g_mean_same_participants": float(true_mass[ok].mean()) if ok.any() else None,
            "expected_bias_g_mean": float((vf[ok] - true_mass[ok]).mean()) if ok.any() else None,
            "failures": failures,
        },
    }


def _truth_json(
    seed: int, config: SynthConfig, eids: list[int], summary: dict[str, Any], *, images: bool = True
) -> dict[str, Any]:
    import pydicom
    import scipy

    from lvmass import __version__

    return {
        "generator": "lvmass.synth" if images else "lvmass.synth (population only: no images)",
        "seed": seed,
        "first_eid": eids[0],
        "versions": {
            "lvmass": __version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pydicom": pydicom.__version__,
            "python": platform.python_version(),
        },
        "config": config.to_json(),
        "definitions": {
            "true_myocardium_volume_ml": (
                "sum over slices of the myocardial area (mm^2, averaged over the slice's "
                f"{SLICE_THICKNESS_MM:g} mm slab on {TRUTH_SUBPLANES} planes, integrated "
                f"over {THETA_SAMPLES} angles) x {SLICE_SPACING_MM:g} mm / 1000"
            ),
            "true_lv_mass_g": f"true_myocardium_volume_ml x {MYOCARDIAL_DENSITY_G_PER_ML} g/mL",
            "true_lv_cavity_volume_ml": (
                "the same sum over the endocardial areas (papillary muscles and trabeculae count as cavity)"
            ),
            "truth_labels": (
                "ED labels on the acquisition grid (rows, cols, slices base to apex): the class with the "
                "largest slab-averaged partial-volume fraction; 0 background, 1 LV cavity, 2 myocardium"
            ),
            "expected_inlinevf_raw_mass_g": (
                "the paper's rule on the written ED InlineVF outlines filled as ml4h's "
                "morphology does (both outlines count as myocardium)"
            ),
            "end_diastole": "phase 0 = InstanceNumber 1 in bK series; TriggerTime = phase x RR / 50",
            "image_orientation": (
                "the usual short-axis display, seen from the apex: anterior wall at the top, RV on the "
                "viewer's left; the ImageOrientationPatient normal (row x column cosines) points from the "
                "apex to the base, b1 is the most basal slice"
            ),
            "body": (
                "the LV lies inside the thorax, deeper than the subcutaneous fat and chest-wall muscle; "
                "anterior skin 90-110 mm in front of the mid-LV (render.Body, render.draw_body)"
            ),
        },
        DISEASE_MODEL_KEY: fit_disease_model(config.diseases).to_json(),
        "inlinevf_design": {
            "epi_offset_mm": config.inlinevf_epi_offset_mm,
            "endo_offset_mm": config.inlinevf_endo_offset_mm,
            "offset_sd_mm": config.inlinevf_offset_sd_mm,
            "jitter_mm": config.inlinevf_jitter_mm,
            "failure_rate": config.inlinevf_failure_rate,
            "failure_kinds": list(FAILURE_KINDS),
        },
        COHORT_KEY: summary,
    }


def _progress(iterator: Iterator, total: int, enabled: bool) -> Iterator:
    if not enabled:
        return iterator
    from tqdm import tqdm

    return iter(tqdm(iterator, total=total, unit="participant", desc="lvmass synth"))


def _prepare_out_dir(paths: CohortPaths, overwrite: bool) -> None:
    """Refuse a non-empty folder, or with ``overwrite`` first remove a previous cohort's entries (only
    ``layout.COHORT_ENTRIES``; anything else in the folder is refused too, never deleted)."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise ValueError(f"output folder {root} is a file")
    existing = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if existing and not overwrite:
        raise ValueError(
            f"output folder {root} is not empty ({', '.join(existing[:5])}"
            f"{', ...' if len(existing) > 5 else ''}); choose an empty folder or pass overwrite=True "
            "(--overwrite) to replace the cohort in it"
        )
    foreign = [name for name in existing if name not in COHORT_ENTRIES]
    if foreign:
        raise ValueError(
            f"output folder {root} holds files that are not a cohort's ({', '.join(foreign[:5])}); "
            "overwrite only replaces a previous cohort: choose another folder"
        )
    for name in existing:
        entry = root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _resolve_config(
    config: SynthConfig | None, fidelity: str | None, appearance_scale: float | None
) -> SynthConfig:
    """``config`` (default SynthConfig()) with ``fidelity`` / ``appearance_scale`` applied when given."""
    cfg = config or SynthConfig()
    changes: dict[str, Any] = {}
    if fidelity is not None:
        changes["fidelity"] = fidelity
    if appearance_scale is not None:
        changes["appearance_scale"] = appearance_scale
    return cfg.with_(**changes) if changes else cfg


def _check_run(workers: int, seed: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1. Received {workers}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative. Received {seed}")


def generate_cohort(
    out_dir: str | Path,
    *,
    participants: int,
    seed: int = 0,
    fidelity: str | None = None,
    workers: int = 1,
    appearance_scale: float | None = None,
    progress: bool = False,
    first_eid: int | None = None,
    config: SynthConfig | None = None,
    overwrite: bool = False,
) -> CohortPaths:
    """Write a synthetic cohort to ``out_dir`` (see the module docstring) and return its paths.

    ``fidelity`` and ``appearance_scale``, when given, override the ``config``'s (default SynthConfig():
    lite, 1.0). ``out_dir`` must be empty or absent; ``overwrite=True`` replaces a previous cohort there.
    """
    _check_run(workers, seed)
    cfg = _resolve_config(config, fidelity, appearance_scale)
    eids = draw_eids(seed, participants, first_eid)
    paths = cohort_paths(out_dir)
    fit_disease_model(cfg.diseases)  # fail early on a bad disease model
    _prepare_out_dir(paths, overwrite)
    paths.zips_dir.mkdir()
    paths.labels_dir.mkdir()
    jobs = [(eid, seed, cfg, str(paths.root)) for eid in eids]
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if workers == 1:
        results = list(_progress(map(_write_participant, jobs), len(jobs), progress))
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(_progress(pool.map(_write_participant, jobs, chunksize=1), len(jobs), progress))
    phenotypes = [r[0] for r in results]
    truth = [r[1] for r in results]
    _write_csv(paths.phenotypes_csv, phenotypes, list(PHENOTYPE_COLUMNS))
    _write_csv(paths.truth_csv, truth, list(truth[0].keys()))
    summary = _cohort_summary(truth, phenotypes, cfg)
    paths.truth_json.write_text(
        json.dumps(_truth_json(seed, cfg, eids, summary), indent=2, default=str) + "\n"
    )
    return paths


def generate_population(
    out_dir: str | Path,
    *,
    participants: int,
    seed: int = 0,
    first_eid: int | None = None,
    config: SynthConfig | None = None,
    overwrite: bool = False,
) -> CohortPaths:
    """Write phenotypes.csv, truth.csv and truth.json for a cohort without rendering any image.

    Every participant's population, anatomy, true mass and disease status are those ``generate_cohort``
    writes for the same seed and eids (``participant_truth``); truth.csv has the columns known without
    images and truth.json the same keys (``lvmass.core.truth``) apart from the InlineVF summary.
    About 2 ms per participant: for checking population statistics (e.g. odds ratio recovery) at scale.
    """
    _check_run(1, seed)
    cfg = config or SynthConfig()
    eids = draw_eids(seed, participants, first_eid)
    paths = cohort_paths(out_dir)
    fit_disease_model(cfg.diseases)
    _prepare_out_dir(paths, overwrite)
    people = [participant_truth(eid, seed, cfg) for eid in eids]
    phenotypes = [p.phenotype_row() for p in people]
    truth = [p.truth_row(cfg.instance) for p in people]
    _write_csv(paths.phenotypes_csv, phenotypes, list(PHENOTYPE_COLUMNS))
    _write_csv(paths.truth_csv, truth, list(truth[0].keys()))
    summary = _population_summary(truth, phenotypes, cfg)
    paths.truth_json.write_text(
        json.dumps(_truth_json(seed, cfg, eids, summary, images=False), indent=2, default=str) + "\n"
    )
    return paths


def zip_name(eid: int, instance: int = 2) -> str:
    return f"{eid}_{SAX_FIELD_ID}_{instance}_0.zip"

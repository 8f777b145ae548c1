"""A cohort on disk: participant zips, phenotypes, truth tables, truth label volumes.

Layout of ``out_dir``::

    zips/{eid}_20209_{instance}_0.zip      participant zips (UKBB_FORMAT.md layout)
    phenotypes.csv                          beam_pipeline.schema.PHENOTYPE_COLUMNS
    truth.csv                               one row per participant (see participant.render_participant)
    truth.json                              parameters, seed, versions, disease model, InlineVF bias
    truth_labels/{eid}_20209_{instance}_0.npz   ``labels``: uint8 (rows, cols, n_slices) ED truth labels

Workers render and write participants independently (each from ``(seed, eid)``), so the output is the same
for any ``workers``.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import platform
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beam_pipeline.contracts import MYOCARDIAL_DENSITY_G_PER_ML, SAX_FIELD_ID
from beam_pipeline.schema import DISEASE_COLUMNS, PHENOTYPE_COLUMNS
from lvmass.synth.anatomy import SLICE_SPACING_MM, SLICE_THICKNESS_MM, THETA_SAMPLES, TRUTH_SUBPLANES
from lvmass.synth.config import SynthConfig
from lvmass.synth.inlinevf import FAILURE_KINDS
from lvmass.synth.participant import ParticipantData, render_participant
from lvmass.synth.population import fit_disease_model

ZIPS_DIRNAME = "zips"
LABELS_DIRNAME = "truth_labels"
PHENOTYPES_CSV = "phenotypes.csv"
TRUTH_CSV = "truth.csv"
TRUTH_JSON = "truth.json"
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


def _cohort_summary(
    truth: list[dict[str, Any]], phenotypes: list[dict[str, Any]], config: SynthConfig
) -> dict[str, Any]:
    """Cohort-level truth: realised prevalences, the odds ratios per realised SD of true LVMI, and the
    InlineVF bias the generator built in."""
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
    vf = np.array([t["expected_inlinevf_raw_mass_g"] for t in truth], float)
    ok = np.array([not t["inlinevf_failure"] for t in truth]) & np.isfinite(vf)
    failures = {kind: sum(t["inlinevf_failure"] == kind for t in truth) for kind in FAILURE_KINDS}

    def ratio(mask: np.ndarray) -> float | None:
        return float(vf[mask].mean() / true_mass[mask].mean()) if mask.any() else None

    return {
        "n_participants": len(truth),
        "true_lv_mass_g": {
            "mean": float(true_mass.mean()),
            "sd": float(true_mass.std(ddof=1)) if len(truth) > 1 else None,
        },
        "true_lvmi_g_m2": {"mean": float(lvmi.mean()), "sd": sd if len(truth) > 1 else None},
        "observed_prevalence": {d: float(np.mean([p[d] for p in phenotypes])) for d in DISEASE_COLUMNS},
        "true_odds_ratio_per_sample_sd_lvmi": per_sample_sd,
        "manual_mass_fraction_observed": float(np.mean([p["manual_lv_mass_g"] != "" for p in phenotypes])),
        "inlinevf": {
            "expected_bias_factor": ratio(ok),
            "expected_bias_factor_all": ratio(np.isfinite(vf)),
            "expected_raw_mass_g_mean": float(vf[ok].mean()) if ok.any() else None,
            "true_mass_g_mean_same_participants": float(true_mass[ok].mean()) if ok.any() else None,
            "expected_bias_g_mean": float((vf[ok] - true_mass[ok]).mean()) if ok.any() else None,
            "failures": failures,
        },
    }


def _truth_json(seed: int, config: SynthConfig, eids: list[int], summary: dict[str, Any]) -> dict[str, Any]:
    import pydicom
    import scipy

    from lvmass import __version__

    return {
        "generator": "lvmass.synth",
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
        },
        "disease_model": fit_disease_model(config.diseases).to_json(),
        "inlinevf_design": {
            "epi_offset_mm": config.inlinevf_epi_offset_mm,
            "endo_offset_mm": config.inlinevf_endo_offset_mm,
            "offset_sd_mm": config.inlinevf_offset_sd_mm,
            "jitter_mm": config.inlinevf_jitter_mm,
            "failure_rate": config.inlinevf_failure_rate,
            "failure_kinds": list(FAILURE_KINDS),
        },
        "cohort": summary,
    }


def _progress(iterator: Iterator, total: int, enabled: bool) -> Iterator:
    if not enabled:
        return iterator
    from tqdm import tqdm

    return iter(tqdm(iterator, total=total, unit="participant", desc="lvmass synth"))


def generate_cohort(
    out_dir: str | Path,
    *,
    participants: int,
    seed: int = 0,
    fidelity: str = "lite",
    workers: int = 1,
    appearance_scale: float = 1.0,
    progress: bool = False,
    first_eid: int | None = None,
    config: SynthConfig | None = None,
) -> CohortPaths:
    """Write a synthetic cohort to ``out_dir`` (see the module docstring) and return its paths.

    ``config`` overrides everything but ``fidelity``/``appearance_scale``, which are applied on top of it.
    Existing participant files in ``out_dir`` are overwritten.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1. Received {workers}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative. Received {seed}")
    cfg = (config or SynthConfig()).with_(fidelity=fidelity, appearance_scale=appearance_scale)
    eids = draw_eids(seed, participants, first_eid)
    paths = cohort_paths(out_dir)
    paths.zips_dir.mkdir(parents=True, exist_ok=True)
    paths.labels_dir.mkdir(parents=True, exist_ok=True)
    fit_disease_model(cfg.diseases)  # fail early on a bad disease model
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


def zip_name(eid: int, instance: int = 2) -> str:
    return f"{eid}_{SAX_FIELD_ID}_{instance}_0.zip"

"""Join the pipeline's long results with phenotypes (and truth) into one row per participant.

The analysis frame has the phenotype columns, ``holdout`` (bool), optional truth columns, and for each
method the columns ``{method}__{field}`` for ``METHOD_FIELDS``. Which rows count is decided here, once,
and every exclusion is counted in ``Cohort.exclusions`` (nothing disappears without a trace):

* only the requested imaging ``instance`` (2 = first imaging visit) is analysed;
* phenotypes join the results as the pipeline joins them (``lvmass.core.phenotypes.PhenotypeTable``):
  a table with an ``instance`` column on (eid, instance), its rows of the analysed visit; a table
  without one on eid, its manual LV mass only when the analysed visit is ``MANUAL_MASS_INSTANCE`` (2);
* rows failing QC (``qc_pass`` false) are excluded by default (their values become missing);
* results without an ``eid`` (inputs from outside UK Biobank, known only by ``participant_id``) cannot
  be joined to phenotypes, which are keyed by eid: they are left out, counted (``no_eid``) and logged;
* results for eids absent from the phenotype file cannot be adjusted for age and sex and are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lvmass.core.contracts import ALL_METHODS
from lvmass.core.phenotypes import INSTANCE_COLUMN, MANUAL_MASS_INSTANCE
from lvmass.core.schema import PHENOTYPE_COLUMNS
from lvmass.core.truth import TRUTH_LV_MASS_G, TRUTH_LVMI_G_M2

logger = logging.getLogger(__name__)

METHOD_FIELDS: tuple[str, ...] = ("lv_mass_g", "lv_mass_raw_g", "lvmi_g_m2", "lvh", "lvh_p90", "bsa_m2")
MANUAL_MASS = "manual_lv_mass_g"
TRUE_MASS = TRUTH_LV_MASS_G  # truth.csv columns (lvmass.core.truth)
TRUE_LVMI = TRUTH_LVMI_G_M2
FIRST_IMAGING_INSTANCE = 2

METHOD_LABELS: dict[str, str] = {
    "ml4h_seg": "ML4H_seg",
    "ml4h_reg": "ML4H_reg",
    "inlinevf": "InlineVF (centred)",
    "inlinevf_recalibrated": "InlineVF (recalibrated)",
}


def method_label(method: str) -> str:
    """Display name of a method (the paper's names)."""
    return METHOD_LABELS.get(method, method)


def mcol(method: str, field: str) -> str:
    """Column name of one method's field in the analysis frame."""
    return f"{method}__{field}"


@dataclass(frozen=True)
class Cohort:
    """One row per participant with phenotypes, the holdout flag and each method's values."""

    frame: pd.DataFrame
    methods: tuple[str, ...]
    exclusions: pd.DataFrame  # one row per method: what was read and what was left out, and why
    instance: int
    holdout_source: str  # "file" or "manual mass available"


def _ordered_methods(present: Iterable[str]) -> tuple[str, ...]:
    present = set(present)
    known = [m for m in ALL_METHODS if m in present]
    return tuple(known + sorted(present - set(known)))


def phenotypes_at_visit(phenotypes: pd.DataFrame, instance: int) -> pd.DataFrame:
    """One phenotype row per eid for the scans of visit ``instance``, as
    ``lvmass.core.phenotypes.PhenotypeTable.lookup`` attaches them in the pipeline: a table with an
    ``instance`` column gives its rows of that visit (without the column); a table without one gives
    every row, with ``manual_lv_mass_g`` blanked unless ``instance`` is ``MANUAL_MASS_INSTANCE``.
    Raises ValueError when an eid has two rows for the visit. The input is not modified."""
    if INSTANCE_COLUMN in phenotypes.columns:
        at_visit = phenotypes[phenotypes[INSTANCE_COLUMN] == instance].drop(columns=INSTANCE_COLUMN)
        if at_visit["eid"].duplicated().any():
            first = int(at_visit.loc[at_visit["eid"].duplicated(), "eid"].iloc[0])
            raise ValueError(f"phenotypes have more than one row for eid {first} at instance {instance}")
        return at_visit
    if instance == MANUAL_MASS_INSTANCE:
        return phenotypes
    return phenotypes.assign(**{MANUAL_MASS: np.nan})


def build_cohort(
    results: pd.DataFrame,
    phenotypes: pd.DataFrame,
    *,
    holdout_eids: Iterable[int] | None = None,
    truth: pd.DataFrame | None = None,
    instance: int = FIRST_IMAGING_INSTANCE,
    qc_pass_only: bool = True,
) -> Cohort:
    """The analysis frame (see the module docstring). Inputs are not modified.

    ``holdout_eids`` None means the evaluation set is every participant with a manual mass (the
    issue's default); participants not in it form the training set of Table 1. ``phenotypes`` may hold
    one row per eid or, with an ``instance`` column, one per eid and visit (:func:`phenotypes_at_visit`).
    """
    phenotypes = phenotypes_at_visit(phenotypes, instance)
    methods = _ordered_methods(results["method"].unique())
    pheno_eids = set(phenotypes["eid"].astype(np.int64))
    rows = []
    kept = []
    for method in methods:
        part = results[results["method"] == method]
        at_instance = part[part["instance"] == instance]
        no_eid = at_instance["eid"].isna().to_numpy()
        no_pheno = ~no_eid & ~at_instance["eid"].isin(pheno_eids).to_numpy(dtype=bool, na_value=False)
        qc_fail = ~at_instance["qc_pass"].astype(bool).to_numpy()
        joined = ~no_eid & ~no_pheno
        usable = at_instance[joined].copy()
        usable["eid"] = usable["eid"].astype(np.int64)  # nullable Int64 when some rows had no eid
        for flag in ("lvh", "lvh_p90"):  # nullable bools arrive as object: make them 1.0 / 0.0 / NaN
            usable[flag] = usable[flag].astype(float)
        failing = ~usable["qc_pass"].astype(bool)
        missing_mass = usable["lv_mass_g"].isna() & ~(failing & qc_pass_only)
        if qc_pass_only:
            usable.loc[failing, list(METHOD_FIELDS)] = np.nan
        rows.append(
            {
                "method": method,
                "rows_read": len(part),
                "other_instance": int(len(part) - len(at_instance)),
                "no_eid": int(no_eid.sum()),
                "no_phenotype": int(no_pheno.sum()),
                "qc_fail": int((qc_fail & joined).sum()),
                "qc_fail_excluded": int((qc_fail & joined).sum()) if qc_pass_only else 0,
                "missing_mass": int(missing_mass.sum()),
                "analysed": int(usable["lv_mass_g"].notna().sum()),
            }
        )
        wide = usable[["eid", *METHOD_FIELDS]].rename(columns={f: mcol(method, f) for f in METHOD_FIELDS})
        kept.append(wide.set_index("eid"))
    exclusions = pd.DataFrame(rows)
    if len(exclusions) and exclusions["no_eid"].any():
        logger.warning(
            "result rows at instance %d without a UK Biobank eid (known only by participant_id; per method: "
            "%s) cannot be joined to the phenotypes by eid and are left out of the analysis",
            instance,
            ", ".join(f"{m} {n}" for m, n in zip(exclusions["method"], exclusions["no_eid"], strict=True)),
        )
    imaged = sorted(set().union(*(set(k.index) for k in kept))) if kept else []
    frame = phenotypes[list(PHENOTYPE_COLUMNS)].copy()
    frame = frame[frame["eid"].isin(imaged)].set_index("eid")
    for wide in kept:
        frame = frame.join(wide, how="left")
    frame = frame.reset_index()
    if holdout_eids is None:
        frame["holdout"] = frame[MANUAL_MASS].notna()
        holdout_source = "manual mass available"
    else:
        frame["holdout"] = frame["eid"].isin(set(holdout_eids))
        holdout_source = "file"
    if truth is not None:
        if "instance" in truth.columns:  # a truth row per imaging visit: keep the analysed one
            truth = truth[truth["instance"] == instance]
        if truth["eid"].duplicated().any():
            first = int(truth.loc[truth["eid"].duplicated(), "eid"].iloc[0])
            raise ValueError(f"truth has more than one row for eid {first} at instance {instance}")
        extra = [c for c in truth.columns if c not in ("eid", "instance") and c not in frame.columns]
        frame = frame.merge(truth[["eid", *extra]], on="eid", how="left")
    return Cohort(
        frame=frame,
        methods=methods,
        exclusions=exclusions,
        instance=instance,
        holdout_source=holdout_source,
    )

"""The paper's Table 1 (baseline characteristics) and Table 2 (odds ratios), as display DataFrames.

Continuous rows are "mean ± SD" over participants with a value; count rows are "n (%)" with the
percentage of participants with a known value. Cells that have no data read "-".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.associations import EXPOSURE_LABELS, EXPOSURES, STATUS_OK, OddsRatioResult
from analysis.cohort import MANUAL_MASS, mcol
from lvmass.core.contracts import METHOD_INLINEVF
from lvmass.core.schema import DISEASE_COLUMNS

DISEASE_LABELS: dict[str, str] = {
    "hypertension": "Hypertension",
    "atrial_fibrillation": "Atrial fibrillation",
    "heart_failure": "Heart failure",
}
MISSING = "-"


def format_mean_sd(values: pd.Series, decimals: int = 1) -> str:
    """'mean ± SD' (SD with ddof=1) of the finite values, '-' when there are none."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MISSING
    sd = v.std(ddof=1) if v.size > 1 else float("nan")
    sd_text = f"{sd:.{decimals}f}" if np.isfinite(sd) else MISSING
    return f"{v.mean():.{decimals}f} ± {sd_text}"


def format_count(flags: pd.Series) -> str:
    """'n (%)' of true values among the known (non-missing) ones, '-' when none is known."""
    v = pd.to_numeric(flags, errors="coerce").to_numpy(dtype=float)
    known = v[np.isfinite(v)]
    if known.size == 0:
        return MISSING
    count = int(np.sum(known != 0))
    return f"{count:,} ({100.0 * count / known.size:.1f}%)"


def table1(
    frame: pd.DataFrame, methods: Sequence[str], labels: Mapping[str, str], *, set_column: str = "holdout"
) -> pd.DataFrame:
    """Baseline characteristics of the training (``set_column`` false) and holdout (true) sets."""
    groups = {
        f"Training set (N = {int((~frame[set_column]).sum()):,})": frame[~frame[set_column]],
        f"Holdout set (N = {int(frame[set_column].sum()):,})": frame[frame[set_column]],
    }
    bsa_columns = [mcol(m, "bsa_m2") for m in methods if mcol(m, "bsa_m2") in frame.columns]

    def bsa(group: pd.DataFrame) -> pd.Series:
        return group[bsa_columns].bfill(axis=1).iloc[:, 0] if bsa_columns else pd.Series(dtype=float)

    rows: list[tuple[str, object]] = [
        ("Age (years)", lambda g: format_mean_sd(g["age"])),
        ("Female", lambda g: format_count((g["sex"] == "female").where(g["sex"].notna()))),
        ("Height (cm)", lambda g: format_mean_sd(g["height_cm"])),
        ("Weight (kg)", lambda g: format_mean_sd(g["weight_kg"])),
        ("Body surface area (m², DuBois)", lambda g: format_mean_sd(bsa(g), 2)),
    ]
    rows += [(DISEASE_LABELS.get(d, d), lambda g, d=d: format_count(g[d])) for d in DISEASE_COLUMNS]
    rows.append(("Manual LV mass available", lambda g: format_count(g[MANUAL_MASS].notna())))
    rows.append(("Manual LV mass (g)", lambda g: format_mean_sd(g[MANUAL_MASS])))
    if METHOD_INLINEVF in methods:
        rows.append(
            (
                "CMR-derived LV mass (InlineVF raw, g)",
                lambda g: format_mean_sd(g[mcol(METHOD_INLINEVF, "lv_mass_raw_g")]),
            )
        )
    for method in methods:
        name = labels.get(method, method)
        rows.append(
            (f"CMR-derived LV mass ({name}, g)", lambda g, m=method: format_mean_sd(g[mcol(m, "lv_mass_g")]))
        )
    for method in methods:
        name = labels.get(method, method)
        rows.append((f"LVMI ({name}, g/m²)", lambda g, m=method: format_mean_sd(g[mcol(m, "lvmi_g_m2")])))
    for method in methods:
        name = labels.get(method, method)
        rows.append((f"LVH ({name})", lambda g, m=method: format_count(g[mcol(m, "lvh")])))
    table = pd.DataFrame(
        {title: [fn(group) for _, fn in rows] for title, group in groups.items()},  # type: ignore[operator]
        index=pd.Index([name for name, _ in rows], name="Characteristic"),
    )
    return table


def format_or(result: OddsRatioResult, alpha: float = 0.05) -> str:
    """'OR (lower–upper)' with two decimals, or the status when the model was not fitted."""
    if result.status != STATUS_OK:
        return result.status.replace("_", " ")
    lower, upper = result.conf_int(alpha)
    return f"{result.estimate:.2f} ({lower:.2f}–{upper:.2f})"


def table2(results: Sequence[OddsRatioResult], alpha: float = 0.05) -> pd.DataFrame:
    """Rows disease x method; columns N events (of N) and the OR (CI) for each exposure, as in the
    paper's Table 2. Models that were not fitted show their status."""
    by_key = {(r.outcome, r.label, r.exposure): r for r in results}
    outcomes = list(dict.fromkeys(r.outcome for r in results))
    methods = list(dict.fromkeys(r.label for r in results))
    exposures = [e for e in EXPOSURES if any(r.exposure == e for r in results)]
    rows = []
    for outcome in outcomes:
        for method in methods:
            models = [by_key[(outcome, method, e)] for e in exposures if (outcome, method, e) in by_key]
            if not models:
                continue
            first = models[0]
            row = {
                "Disease": DISEASE_LABELS.get(outcome, outcome),
                "Method": method,
                "N events / N": f"{first.n_events:,} / {first.n:,}",
            }
            for exposure in exposures:
                model = by_key.get((outcome, method, exposure))
                row[EXPOSURE_LABELS.get(exposure, exposure)] = format_or(model, alpha) if model else MISSING
            rows.append(row)
    return pd.DataFrame(rows)

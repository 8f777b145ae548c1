"""``python -m analysis`` / ``lvmass analyze``: the paper's statistics, tables, figures and report.

Reads the pipeline's results Parquet and the phenotype file, and writes to ``--out``:

* ``report.html``: self-contained (tables as HTML, figures as base64 PNG), every method side by side;
* ``report.md``: the same content, figures linked from ``figures/``;
* ``tables/*.csv``: every table; ``figures/*.png``: every figure.

The evaluation (holdout) set is ``--holdout`` (a file of eids) or, by default, everyone with a manual
LV mass. ``--truth`` (a synthetic cohort's folder or its truth.csv) adds agreement with the true mass
and checks that the ORs fitted on the true LVMI recover the generator's true ORs; ``--labels`` adds
Dice against reference label volumes (``--reference_labels``, default: the truth's ``truth_labels/``).
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import agreement as agr
from analysis import associations as assoc
from analysis import figures as figs
from analysis import io as aio
from analysis import labels as lab
from analysis import stats, tables
from analysis.cohort import MANUAL_MASS, TRUE_LVMI, TRUE_MASS, build_cohort, mcol, method_label
from analysis.qc_gallery import GALLERY_DIRNAME
from analysis.qc_gallery import INDEX_HTML as GALLERY_INDEX
from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core.contracts import METHOD_INLINEVF
from lvmass.storage import filesystems

logger = logging.getLogger("analysis.report")
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
TABLES_DIRNAME = "tables"
FIGURES_DIRNAME = "figures"


# --- The report's content, independent of its format --------------------------------------------------
@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)  # (name, caption, frame)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (name, caption, png)
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href), after the paragraphs


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]


def _add_agreement_tables(section: Section, out_tables: dict[str, pd.DataFrame], report: agr.AgreementReport,
                          reference: str, agreement_title: str, comparison_title: str) -> None:
    """Record an agreement report's two tables (per-method agreement, Dunn & Clark comparisons) under
    ``agreement_<reference>`` / ``correlation_comparisons_<reference>`` and show them in ``section``."""
    out_tables[f"agreement_{reference}"] = report.table()
    out_tables[f"correlation_comparisons_{reference}"] = report.comparison_table()
    section.tables.append((f"agreement_{reference}", agreement_title, out_tables[f"agreement_{reference}"]))
    section.tables.append(
        (f"comparisons_{reference}", comparison_title, out_tables[f"correlation_comparisons_{reference}"])
    )


# --- Display formatting -------------------------------------------------------------------------------

def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _column_decimals(name: str) -> int:
    lowered = name.lower()
    if lowered in {"r", "r_a", "r_b", "r_ab", "r_after", "difference"} or lowered.startswith(
        ("r_ci", "difference_")
    ):
        return 3
    if lowered in {
        "odds_ratio",
        "ci_lower",
        "ci_upper",
        "true_odds_ratio",
        "slope",
        "slope_ci_lower",
        "slope_ci_upper",
        "z",
        "mean_dice",
        "sd",
    }:
        return 3
    return 2


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with numbers as short strings for reading (the CSVs keep full precision)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if series.dtype == bool or series.dtype == object:
            out[column] = series.map(
                lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            )
            continue
        if not pd.api.types.is_numeric_dtype(series):
            continue
        if column == "p_value":
            out[column] = series.map(_format_p)
        elif column.startswith("share"):
            out[column] = series.map(lambda v: f"{100 * v:.1f}%" if np.isfinite(v) else "")
        elif pd.api.types.is_integer_dtype(series):
            out[column] = series.map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
        else:
            decimals = _column_decimals(str(column))
            out[column] = series.map(lambda v, d=decimals: f"{v:.{d}f}" if np.isfinite(v) else "")
    return out


def _markdown_table(frame: pd.DataFrame, index: bool) -> str:
    data = frame.reset_index() if index else frame
    header = [str(c) for c in data.columns]

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(header_label(h)) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data.itertuples(index=False)]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1250px;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;border-bottom:2px solid #444;padding-bottom:.3rem}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.83rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;white-space:nowrap}td.num{text-align:right}
th{background:#f3f3f3}caption{caption-side:top;text-align:left;
font-weight:600;padding:.3rem 0}figure{margin:1rem 0 2rem}figure img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{font-size:.85rem;color:#444;margin-top:.3rem}
.note{color:#555;font-size:.9rem}.tablewrap{overflow-x:auto}
"""


def header_label(name: str) -> str:
    """A readable column header: 'mae_ci_lower_g' -> 'MAE CI lower (g)'."""
    text = str(name)
    unit = ""
    for suffix, shown in (("_g_m2", " (g/m²)"), ("_g", " (g)"), ("_ml", " (mL)"), ("_m2", " (m²)")):
        if text.endswith(suffix):
            text, unit = text[: -len(suffix)], shown
            break
    words = [_HEADER_WORDS.get(w, w) for w in text.split("_")]
    return " ".join(words) + unit


_HEADER_WORDS = {
    "ci": "95% CI",
    "mae": "MAE",
    "loa": "LoA",
    "sd": "SD",
    "n": "n",
    "r": "r",
    "p": "P",
    "lvmi": "LVMI",
    "lvh": "LVH",
    "or": "OR",
}


def _html_table(name: str, caption: str, frame: pd.DataFrame) -> str:
    """A table with a caption; the index (when meaningful) becomes the first column; numbers right-aligned."""
    data = frame.reset_index() if not isinstance(frame.index, pd.RangeIndex) else frame
    numeric = [pd.api.types.is_numeric_dtype(data[c]) and data[c].dtype != bool for c in data.columns]
    shown = display_frame(data)
    head = "".join(f"<th>{html.escape(header_label(c))}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{html.escape(str(v))}</td>' if is_num else f"<td>{html.escape(str(v))}</td>"
            for v, is_num in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="tablewrap"><table id="table-{html.escape(name)}">'
        f"<caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def render_html(report: Report) -> str:
    """One self-contained HTML page: styles inline, figures as data: URIs, no external requests."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f'<p class="note">{html.escape(p)}</p>' for p in section.paragraphs]
        parts += [f'<p class="note"><a href="{html.escape(href)}">{html.escape(text)}</a></p>'
                  for text, href in section.links]
        for name, caption, frame in section.tables:
            parts.append(_html_table(name, caption, frame))
        for name, caption, png in section.figures:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure id="figure-{html.escape(name)}"><img alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(report: Report) -> str:
    """The same content as Markdown; figures link to ``figures/<name>.png``."""
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for text, href in section.links:
            lines += [f"[{text}]({href})", ""]
        for _, caption, frame in section.tables:
            lines += [
                f"**{caption}**",
                "",
                _markdown_table(display_frame(frame), not isinstance(frame.index, pd.RangeIndex)),
                "",
            ]
        for name, caption, _ in section.figures:
            lines += [f"![{caption}]({FIGURES_DIRNAME}/{name}.png)", "", f"*{caption}*", ""]
    return "\n".join(lines)


# --- Building the analysis ------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    """The ``lvmass analyze`` options."""
    parser = ArgumentParser(
        prog="lvmass analyze",
        description="Agreement, disease associations, tables, figures and report. Also `python -m analysis`.",
    )
    parser.add_argument("--results", required=True, help="the pipeline's output folder (local or gs://)")
    parser.add_argument("--phenotypes", required=True, help="phenotype CSV/Parquet (PHENOTYPE_COLUMNS)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--holdout", help="eids of the evaluation set (default: all with manual mass)")
    parser.add_argument("--bootstrap", type=int, default=stats.DEFAULT_N_BOOT, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed")
    parser.add_argument("--truth", help="synthetic cohort folder or its truth.csv (adds 'vs truth')")
    parser.add_argument("--labels", help="predicted label volumes (.npz, per-method sub-folders) for Dice")
    parser.add_argument("--reference_labels", help="reference label volumes (default: the truth's labels)")
    parser.add_argument("--instance", type=int, default=2, help="imaging visit to analyse (2 = first)")
    parser.add_argument("--include_qc_fail", action="store_true", help="keep rows that failed QC")
    parser.add_argument("--qc_gallery", default=None,
                        help="the QC gallery to link to (lvmass qc; default RESULTS/qc/index.html when it "
                        "exists)")
    parser.add_argument(
        "--min_events",
        type=int,
        default=assoc.DEFAULT_MIN_EVENTS,
        help="fewest events (and non-events) for a logistic model",
    )
    return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be >= 1, got {args.bootstrap}")
    return args


def _overview(
    args: argparse.Namespace, cohort_frame: pd.DataFrame, methods: Sequence[str], holdout_source: str
) -> pd.DataFrame:
    n_holdout = int(cohort_frame["holdout"].sum())
    with_manual = int((cohort_frame["holdout"] & cohort_frame[MANUAL_MASS].notna()).sum())
    items = [
        ("Results", args.results),
        ("Phenotypes", args.phenotypes),
        ("Participants analysed (with results and phenotypes)", f"{len(cohort_frame):,}"),
        ("Methods", ", ".join(method_label(m) for m in methods)),
        (
            "Holdout set",
            f"{n_holdout:,} participants ({holdout_source}); {with_manual:,} with manual LV mass",
        ),
        ("Imaging instance", str(args.instance)),
        ("QC", "rows failing QC included" if args.include_qc_fail else "rows failing QC excluded"),
        ("Bootstrap", f"{args.bootstrap} replicates, seed {args.seed}"),
    ]
    if args.truth:
        items.append(("Truth", args.truth))
    return pd.DataFrame(items, columns=["Item", "Value"]).set_index("Item")


def _provenance(results: pd.DataFrame) -> pd.DataFrame:
    grouped = results.groupby("method", sort=False)
    return pd.DataFrame(
        {
            "method": [method_label(m) for m in grouped.groups],
            "model_version": [
                ", ".join(sorted({str(v) for v in g["model_version"].dropna()})) for _, g in grouped
            ],
            "pipeline_version": [
                ", ".join(sorted({str(v) for v in g["pipeline_version"]})) for _, g in grouped
            ],
            "calibration": [", ".join(sorted({str(v) for v in g["calibration"]})) for _, g in grouped],
        }
    )


@dataclass
class _Analysis:
    """What every section of the report draws on: the options, the cohort (all rows and the holdout set),
    the methods with their labels and mass columns, and the tables and figures written so far."""

    args: argparse.Namespace
    frame: pd.DataFrame
    methods: list[str]
    labels: dict[str, str]
    mass_columns: dict[str, str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)

    @property
    def holdout(self) -> pd.DataFrame:
        return self.frame[self.frame["holdout"]]


def build_report(args: argparse.Namespace) -> tuple[Report, dict[str, pd.DataFrame], dict[str, Figure]]:
    """Run every analysis; return the report and the tables and figures to write."""
    results = aio.read_results(args.results)
    phenotypes = aio.read_phenotypes(args.phenotypes)
    holdout = aio.read_holdout(args.holdout) if args.holdout else None
    truth = aio.read_truth(args.truth) if args.truth else None
    cohort = build_cohort(
        results,
        phenotypes,
        holdout_eids=holdout,
        truth=truth.table if truth else None,
        instance=args.instance,
        qc_pass_only=not args.include_qc_fail,
    )
    frame, methods = cohort.frame, cohort.methods
    if frame.empty:
        raise aio.InputError(args.results, "no result rows match the phenotype file's eids at this instance")
    labels = {m: method_label(m) for m in methods}
    analysis = _Analysis(args, frame, methods, labels, agr.method_columns(methods, labels))
    report = Report("lvmass: left-ventricular mass, agreement and disease associations")
    _overview_section(report, analysis, cohort, results, holdout)
    _table1_section(report, analysis)
    _agreement_section(report, analysis)
    if METHOD_INLINEVF in methods:
        _recalibration_section(report, analysis)
    _figures_section(report, analysis)
    _associations_section(report, analysis)
    if truth is not None:
        _truth_section(report, truth, frame, methods, labels, args, analysis.tables, analysis.figures)
    _dice_section(report, truth, args, analysis.tables)
    return report, analysis.tables, analysis.figures


def _overview_section(report: Report, analysis: _Analysis, cohort: Any, results: pd.DataFrame,
                      holdout: set[int] | None) -> None:
    """Inputs and settings, the rows read and excluded per method, versions, and the QC gallery."""
    args, frame = analysis.args, analysis.frame
    overview = report.section("Overview")
    overview.paragraphs.append(
        "Reproduces the analyses of Khurshid et al. 2021 on the pipeline's output: "
        "agreement of each method with manually labelled LV mass in the holdout set, baseline "
        "characteristics, and associations of LVMI and LVH with prevalent disease. "
        "All methods are shown side by side."
    )
    overview.tables.append(
        ("overview", "Inputs and settings", _overview(args, frame, analysis.methods, cohort.holdout_source))
    )
    exclusions = cohort.exclusions.assign(method=lambda d: d["method"].map(method_label))
    overview.tables.append(("exclusions", "Rows read and excluded, per method", exclusions))
    overview.tables.append(("provenance", "Model and pipeline versions", _provenance(results)))
    if holdout is not None:
        missing = len(holdout - set(frame["eid"]))
        if missing:
            overview.paragraphs.append(
                f"{missing:,} holdout eid(s) have no analysable results or phenotypes."
            )
    no_eid = int(cohort.exclusions["no_eid"].max()) if len(cohort.exclusions) else 0
    if no_eid:
        overview.paragraphs.append(
            f"{no_eid:,} participant(s) imaged at instance {args.instance} have no UK Biobank eid (inputs "
            "known only by participant_id): they cannot be joined to the phenotypes and are left out "
            "(column 'no eid' of the exclusions)."
        )
    analysis.tables["exclusions"] = exclusions
    _link_gallery(overview, args)


def _table1_section(report: Report, analysis: _Analysis) -> None:
    t1 = tables.table1(analysis.frame, analysis.methods, analysis.labels)
    analysis.tables["table1_baseline"] = t1
    report.section("Table 1. Baseline characteristics").tables.append(
        ("table1", "Training and holdout sets: mean ± SD, or n (% of those with a known value)", t1)
    )


def _agreement_section(report: Report, analysis: _Analysis) -> None:
    """Agreement of each method with manual LV mass in the holdout set."""
    args = analysis.args
    sec = report.section("Agreement with manually labelled LV mass (holdout set)")
    sec.paragraphs.append(
        "Pearson r with Fisher-z 95% CI; MAE with a percentile bootstrap 95% CI "
        f"({args.bootstrap} resamples of participants, seed {args.seed}); Bland-Altman bias and limits of "
        "agreement (bias ± 1.96 SD, SD with ddof=1), differences are method − manual. Each method uses the "
        "holdout participants with both values. Dunn & Clark's z compares two methods' correlations with the "
        "same manual values (participants with all three values); the CI is Zou's (2007) for r_a − r_b."
    )
    manual = agr.agree(analysis.holdout, MANUAL_MASS, analysis.mass_columns, n_boot=args.bootstrap,
                       seed=args.seed)
    _add_agreement_tables(sec, analysis.tables, manual, "manual", "Agreement with manual LV mass",
                          "Dunn & Clark comparisons of correlations with manual LV mass")


def _recalibration_section(report: Report, analysis: _Analysis) -> None:
    """InlineVF's linear recalibration on manual mass: fitted on the training set where it has manual
    masses (else in-sample on the holdout set), evaluated on the holdout set."""
    args, frame = analysis.args, analysis.frame
    training_manual = (~frame["holdout"]) & frame[MANUAL_MASS].notna()
    raw_col = mcol(METHOD_INLINEVF, "lv_mass_raw_g")
    n_fit = int((training_manual & frame[raw_col].notna()).sum())
    if n_fit >= 4:
        fit_mask, fit_set = training_manual, "training set"
    else:
        fit_mask, fit_set = frame["holdout"], "holdout set (in-sample: no training manual masses)"
    recal, _ = agr.recalibration_table(
        frame,
        fit_mask=fit_mask,
        evaluate_mask=frame["holdout"],
        fit_set=fit_set,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    analysis.tables["recalibration_inlinevf"] = recal
    rsec = report.section("InlineVF linear recalibration")
    rsec.paragraphs.append(
        "Manual LV mass regressed on raw InlineVF mass (OLS; slope and intercept with t 95% CIs), "
        f"fitted on the {fit_set}, and evaluated on the holdout set beside the paper's published "
        "equation (0.543487 × raw + 5.808005) and the sex-centred InlineVF mass."
    )
    rsec.tables.append(("recalibration", "Recalibration of InlineVF against manual LV mass", recal))


def _figures_section(report: Report, analysis: _Analysis) -> None:
    """Figures 2-4: mass distributions by sex, and the holdout set against manual mass."""
    frame, mass_columns, holdout = analysis.frame, analysis.mass_columns, analysis.holdout
    dist_columns = dict(mass_columns)
    if METHOD_INLINEVF in analysis.methods:
        dist_columns = {"InlineVF (raw)": mcol(METHOD_INLINEVF, "lv_mass_raw_g"), **dist_columns}
    fsec = report.section("Figures")
    for name, figure, caption in (
        ("fig2_mass_distributions", lambda: figs.figure_mass_distributions(frame, dist_columns),
         f"Figure 2. LV mass by sex for each method, all {len(frame):,} participants."),
        ("fig3_scatter_manual", lambda: figs.figure_agreement_scatter(holdout, MANUAL_MASS, mass_columns),
         "Figure 3. Manual LV mass against each method in the holdout set; dashed: identity."),
        ("fig4_bland_altman", lambda: figs.figure_bland_altman(holdout, MANUAL_MASS, mass_columns),
         "Figure 4. Bland-Altman plots against manual LV mass (holdout set): bias (solid) and "
         "limits of agreement (dashed)."),
    ):
        analysis.figures[name] = figure()
        fsec.figures.append((name, caption, figs.png_bytes(analysis.figures[name])))


def _associations_section(report: Report, analysis: _Analysis) -> None:
    """Table 2 and Figure 5: odds ratios of prevalent disease per method and exposure."""
    args = analysis.args
    models = assoc.association_results(analysis.frame, analysis.methods, labels=analysis.labels,
                                       min_events=args.min_events)
    associations = assoc.results_frame(models)
    analysis.tables["associations"] = associations
    analysis.tables["table2_associations"] = tables.table2(models)
    asec = report.section("Table 2. Associations with prevalent disease")
    asec.paragraphs.append(
        "Logistic regression (statsmodels Logit) of each disease on LVMI per 1 SD, LVH (LVMI > 72 g/m² men, "
        "> 55 g/m² women) and LVH by the sex-specific 90th percentile, each adjusted for age and sex, in all "
        f"participants with the values. Models with fewer than {args.min_events} events or non-events, "
        "separation, or no convergence are shown with that status instead of an odds ratio."
    )
    asec.tables.append(
        ("table2", "Odds ratio (95% CI) per method and exposure", analysis.tables["table2_associations"])
    )
    analysis.figures["fig5_forest"] = figs.plot_forest(associations, title="Odds ratios (95% CI)")
    asec.figures.append(
        (
            "fig5_forest",
            "Figure 5. Odds ratios for prevalent disease, every method side by side.",
            figs.png_bytes(analysis.figures["fig5_forest"]),
        )
    )


def _link_gallery(section: Section, args: argparse.Namespace) -> None:
    """A link to the QC gallery (``lvmass qc``: the slices with the LV outlined, worst first), relative to
    the report's folder when both are local; a sentence on how to write one when there is none."""
    gallery = args.qc_gallery or f"{str(args.results).rstrip('/')}/{GALLERY_DIRNAME}/{GALLERY_INDEX}"
    if not filesystems.exists(gallery):
        section.paragraphs.append(
            f"No QC gallery at {gallery}: `lvmass qc --results {args.results}` writes one (the slices with "
            "the LV outlined, worst first; pictures need the pipeline's --save_labels).")
        return
    local = filesystems.is_local(gallery) and filesystems.is_local(str(args.out))
    href = os.path.relpath(os.path.abspath(gallery), os.path.abspath(args.out)) if local else gallery
    text = "QC gallery: every participant's ED slices with the LV outlined, worst first"
    section.links.append((text, href))


def _truth_section(
    report: Report,
    truth: aio.Truth,
    frame: pd.DataFrame,
    methods: Sequence[str],
    labels: dict[str, str],
    args: argparse.Namespace,
    out_tables: dict[str, pd.DataFrame],
    out_figures: dict[str, Figure],
) -> None:
    tsec = report.section("Synthetic truth")
    tsec.paragraphs.append(
        "The synthetic cohort's generator knows each participant's true LV mass and the true odds ratios of "
        "its disease model. Agreement with the true mass uses all participants; the manual mass is included "
        "as a method (its own measurement error)."
    )
    columns = agr.method_columns(tuple(methods), labels)
    if frame[MANUAL_MASS].notna().any():
        columns = {"Manual": MANUAL_MASS, **columns}
    vs_truth = agr.agree(frame, TRUE_MASS, columns, n_boot=args.bootstrap, seed=args.seed)
    _add_agreement_tables(tsec, out_tables, vs_truth, "truth", "Agreement with the true LV mass",
                          "Dunn & Clark comparisons against the true LV mass")
    true_ors: dict[str, float] = {}
    if truth.parameters_source is not None:
        try:
            true_ors = assoc.true_odds_ratios(truth.parameters)
        except ValueError as exc:
            raise aio.InputError(truth.parameters_source, str(exc)) from exc
    if true_ors and TRUE_LVMI in frame.columns:
        recovery = assoc.truth_recovery(frame, true_ors, min_events=args.min_events)
        out_tables["truth_or_recovery"] = recovery
        tsec.tables.append(
            (
                "truth_recovery",
                "ORs per 1 SD of true LVMI (adjusted for age and sex) against the "
                "generator's true ORs: recovered = true OR inside the 95% CI",
                recovery,
            )
        )
    else:
        tsec.paragraphs.append(
            "No truth.json beside truth.csv (or truth.csv has no true LVMI): "
            "the OR recovery check was not run."
        )
    out_figures["fig6_scatter_truth"] = figs.figure_agreement_scatter(
        frame, TRUE_MASS, columns, ylabel="True LV mass (g)"
    )
    tsec.figures.append(
        (
            "fig6_scatter_truth",
            "Figure 6. True LV mass against each method (all participants).",
            figs.png_bytes(out_figures["fig6_scatter_truth"]),
        )
    )


def _dice_section(
    report: Report, truth: aio.Truth | None, args: argparse.Namespace, out_tables: dict[str, pd.DataFrame]
) -> None:
    if not args.labels:
        return
    reference = args.reference_labels or (truth.labels_dir if truth else None)
    dsec = report.section("Pixel-wise agreement (Dice)")
    if reference is None:
        dsec.paragraphs.append(
            "No reference label volumes (--reference-labels or the truth's truth_labels/): "
            "Dice was not computed."
        )
        return
    per_study = lab.dice_per_study(args.labels, reference, instance=args.instance)
    out_tables["dice_per_study"] = per_study
    summary = agr.dice_table(per_study) if not per_study.empty else pd.DataFrame()
    out_tables["dice"] = summary
    dsec.paragraphs.append(
        "Dice = 2|A∩B| / (|A| + |B|) per study for myocardium and LV cavity, averaged over "
        f"studies (t 95% CI); label files of imaging instance {args.instance}, matched by eid and instance."
    )
    dsec.tables.append(("dice", "Mean Dice per method and structure", summary))


def write_outputs(
    out_dir: Path, report: Report, out_tables: dict[str, pd.DataFrame], out_figures: dict[str, Figure]
) -> Path:
    """Write the CSVs, PNGs, report.md and report.html; return the report.html path.

    ``tables/`` and ``figures/`` are emptied first, so no table or figure of an earlier run is left
    beside this report's."""
    for name in (TABLES_DIRNAME, FIGURES_DIRNAME):
        folder = out_dir / name
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        elif folder.exists() or folder.is_symlink():
            folder.unlink()
        folder.mkdir(parents=True)
    for name, frame in out_tables.items():
        frame.to_csv(
            out_dir / TABLES_DIRNAME / f"{name}.csv", index=not isinstance(frame.index, pd.RangeIndex)
        )
    pngs = {name: png for section in report.sections for name, _, png in section.figures}
    for name, png in pngs.items():
        (out_dir / FIGURES_DIRNAME / f"{name}.png").write_bytes(png)
    for name in out_figures.keys() - pngs.keys():
        (out_dir / FIGURES_DIRNAME / f"{name}.png").write_bytes(figs.png_bytes(out_figures[name]))
    (out_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    html_path = out_dir / REPORT_HTML
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: returns 0 on success, 2 when an input is unusable (the message names it)."""
    args = _parse_args(argv)
    configure_logging(args.log_level)
    started = time.monotonic()
    try:
        report, out_tables, out_figures = build_report(args)
    except aio.InputError as exc:
        print(f"lvmass analyze: error: {exc}", file=sys.stderr)
        return 2
    html_path = write_outputs(Path(args.out), report, out_tables, out_figures)
    print(
        f"analysis report: {html_path.resolve()} ({time.monotonic() - started:.1f} s; "
        f"{len(out_tables)} tables, {len(out_figures)} figures)"
    )
    return 0

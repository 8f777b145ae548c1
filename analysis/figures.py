"""The paper's figures with matplotlib's object API (Agg canvas, no pyplot, no global state).

Each ``plot_*`` draws one panel on ``ax`` (or on a new figure when ``ax`` is None) and returns the
figure; each ``figure_*`` lays out one panel per method. ``png_bytes`` renders a figure for the report.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy import stats as sps

from analysis import stats
from analysis.associations import EXPOSURE_LABELS, STATUS_OK

SEX_COLOURS: dict[str, str] = {"female": "#c2185b", "male": "#1565c0"}
METHOD_COLOURS = ("#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#455a64")
# The same method keeps the same colour in every figure (labels from analysis.cohort.METHOD_LABELS).
LABEL_COLOURS: dict[str, str] = {
    "ML4H_seg": "#2e7d32",
    "ML4H_reg": "#6a1b9a",
    "InlineVF (centred)": "#ef6c00",
    "InlineVF (recalibrated)": "#00838f",
    "InlineVF (raw)": "#5d4037",
    "Manual": "#455a64",
}


def colour_for(label: str, position: int = 0) -> str:
    """A method's colour: its fixed one when known, else one from the cycle by position."""
    return LABEL_COLOURS.get(label, METHOD_COLOURS[position % len(METHOD_COLOURS)])


PANEL_SIZE_IN = (4.2, 3.6)
DPI = 110
_TEXT_BOX = {"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2.0}


def new_figure(
    n_panels: int = 1, *, ncols: int | None = None, panel_size_in: tuple[float, float] = PANEL_SIZE_IN
) -> tuple[Figure, list[Axes]]:
    """A figure on its own Agg canvas with ``n_panels`` axes in a grid (row-major)."""
    n_panels = max(1, n_panels)
    ncols = min(n_panels, ncols or 4)
    nrows = int(np.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel_size_in[0] * ncols, panel_size_in[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is None:
        fig, (ax,) = new_figure(1)
        return fig, ax
    return ax.get_figure(root=True), ax  # type: ignore[return-value]


def _finite(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def _no_data(ax: Axes, title: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- Figure 2: mass distributions by sex -------------------------------------------------------------
def plot_mass_distribution(
    values_by_sex: Mapping[str, ArrayLike],
    *,
    title: str = "",
    xlabel: str = "LV mass (g)",
    ax: Axes | None = None,
) -> Figure:
    """Density of LV mass for each sex (Gaussian KDE, Scott's bandwidth; a histogram when a sex has
    fewer than 3 distinct values)."""
    fig, ax = _axes(ax)
    drawn = False
    for sex, values in values_by_sex.items():
        v = _finite(values)
        if v.size == 0:
            continue
        colour = SEX_COLOURS.get(sex)
        label = f"{sex} (n={v.size}, mean {v.mean():.0f} g)"
        if np.unique(v).size >= 3:
            span = v.max() - v.min()
            grid = np.linspace(v.min() - 0.15 * span, v.max() + 0.15 * span, 256)
            density = sps.gaussian_kde(v)(grid)
            ax.plot(grid, density, color=colour, label=label)
            ax.fill_between(grid, density, color=colour, alpha=0.2)
        else:
            ax.hist(v, bins=5, density=True, color=colour, alpha=0.4, label=label)
        drawn = True
    if not drawn:
        _no_data(ax, title)
        return fig
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize="small", frameon=False)
    return fig


def figure_mass_distributions(
    frame: pd.DataFrame, columns: Mapping[str, str], *, sex_column: str = "sex"
) -> Figure:
    """Figure 2: one density panel per method (``{label: column}``), split by sex."""
    fig, axes = new_figure(len(columns))
    for ax, (label, column) in zip(axes, columns.items(), strict=True):
        by_sex = {sex: frame.loc[frame[sex_column] == sex, column] for sex in SEX_COLOURS}
        plot_mass_distribution(by_sex, title=label, ax=ax)
    return fig


# --- Figure 3: scatter against the reference -----------------------------------------------------------
def plot_agreement_scatter(
    estimate_g: ArrayLike,
    reference_g: ArrayLike,
    *,
    title: str = "",
    xlabel: str = "CMR-derived LV mass (g)",
    ylabel: str = "Manual LV mass (g)",
    colour: str = METHOD_COLOURS[0],
    ax: Axes | None = None,
) -> Figure:
    """Reference (y) against the method (x) with the identity line and Pearson's r (95% CI)."""
    fig, ax = _axes(ax)
    x, y = np.asarray(estimate_g, dtype=float), np.asarray(reference_g, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        _no_data(ax, title)
        return fig
    ax.scatter(x, y, s=10, alpha=0.6, color=colour, edgecolors="none")
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=1, ls="--", label="identity")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal", adjustable="box")
    text = f"n = {x.size}"
    if x.size >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = stats.pearson(x, y)
        lo, hi = r.conf_int()
        text = f"r = {r.estimate:.3f} ({lo:.3f}–{hi:.3f})\n{text}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize="small", bbox=_TEXT_BOX)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def figure_agreement_scatter(
    frame: pd.DataFrame, reference: str, columns: Mapping[str, str], *, ylabel: str = "Manual LV mass (g)"
) -> Figure:
    """Figure 3: one scatter panel per method against the reference column."""
    fig, axes = new_figure(len(columns))
    for i, (ax, (label, column)) in enumerate(zip(axes, columns.items(), strict=True)):
        plot_agreement_scatter(
            frame[column],
            frame[reference],
            title=label,
            xlabel=f"{label} LV mass (g)",
            ylabel=ylabel,
            colour=colour_for(label, i),
            ax=ax,
        )
    return fig


# --- Figure 4: Bland-Altman ------------------------------------------------------------------------------
def plot_bland_altman(
    method_g: ArrayLike,
    reference_g: ArrayLike,
    *,
    title: str = "",
    colour: str = METHOD_COLOURS[0],
    ax: Axes | None = None,
) -> Figure:
    """Difference (method - reference) against the pair mean, with the bias (solid) and the limits of
    agreement bias ± 1.96 SD (dashed), and the share of points inside them."""
    fig, ax = _axes(ax)
    m, r = np.asarray(method_g, dtype=float), np.asarray(reference_g, dtype=float)
    keep = np.isfinite(m) & np.isfinite(r)
    m, r = m[keep], r[keep]
    if m.size < 2:
        _no_data(ax, title)
        return fig
    result = stats.bland_altman(m, r)
    lower, upper = result.limits_of_agreement()
    ax.scatter((m + r) / 2.0, m - r, s=10, alpha=0.6, color=colour, edgecolors="none")
    ax.axhline(result.bias, color=colour, lw=1.5)
    for limit in (lower, upper):
        ax.axhline(limit, color="black", lw=1, ls="--")
    ax.text(
        0.03,
        0.97,
        f"bias {result.bias:+.1f} g; LoA {lower:.1f} to {upper:.1f} g\n"
        f"{100 * result.share_inside_loa:.1f}% inside; n = {result.n}",
        transform=ax.transAxes,
        va="top",
        fontsize="small",
        bbox=_TEXT_BOX,
    )
    ax.set_title(title)
    ax.set_xlabel("Mean of method and reference (g)")
    ax.set_ylabel("Method − reference (g)")
    return fig


def figure_bland_altman(frame: pd.DataFrame, reference: str, columns: Mapping[str, str]) -> Figure:
    """Figure 4: one Bland-Altman panel per method."""
    fig, axes = new_figure(len(columns))
    for i, (ax, (label, column)) in enumerate(zip(axes, columns.items(), strict=True)):
        plot_bland_altman(
            frame[column],
            frame[reference],
            title=label,
            colour=colour_for(label, i),
            ax=ax,
        )
    return fig


# --- Forest plot of odds ratios ---------------------------------------------------------------------------
def plot_forest(
    results: pd.DataFrame, *, outcomes: Sequence[str] | None = None, title: str = "", ax: Axes | None = None
) -> Figure:
    """Odds ratios with 95% CIs on a log axis, one row per outcome x exposure x method (``results`` as
    from ``associations.results_frame``); models that were not fitted are listed with their status."""
    rows = results if outcomes is None else results[results["outcome"].isin(outcomes)]
    if ax is None:
        fig, (ax,) = new_figure(1, panel_size_in=(8.0, max(2.5, 0.24 * len(rows) + 1.0)))
    else:
        fig = ax.get_figure(root=True)  # type: ignore[assignment]
    if rows.empty:
        _no_data(ax, title)
        return fig
    labels = list(dict.fromkeys(rows["label"]))
    colours = {label: colour_for(label, i) for i, label in enumerate(labels)}
    ys = np.arange(len(rows))[::-1]
    ok = rows["status"] == STATUS_OK
    finite = rows.loc[ok, ["ci_lower", "ci_upper"]].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite).all(axis=1)]
    x_lo = float(np.min(finite)) if finite.size else 0.5
    x_hi = float(np.max(finite)) if finite.size else 2.0
    x_lo, x_hi = min(x_lo, 0.8) / 1.2, max(x_hi, 1.25) * 1.2
    tick_labels = []
    for y, (_, row) in zip(ys, rows.iterrows(), strict=True):
        tick_labels.append(
            f"{row['outcome'].replace('_', ' ')} · {EXPOSURE_LABELS.get(row['exposure'], row['exposure'])}"
            f" · {row['label']}"
        )
        if row["status"] == STATUS_OK:
            colour = colours[row["label"]]
            ax.plot([row["ci_lower"], row["ci_upper"]], [y, y], color=colour, lw=1.5)
            ax.plot([row["odds_ratio"]], [y], marker="s", color=colour, ms=5)
        else:
            ax.text(
                x_lo * 1.05,
                y,
                str(row["status"]).replace("_", " "),
                va="center",
                fontsize="x-small",
                color="grey",
                style="italic",
            )
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_yticks(ys, tick_labels, fontsize="x-small")
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("Odds ratio (95% CI), adjusted for age and sex")
    ax.set_title(title)
    return fig

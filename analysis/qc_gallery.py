"""``lvmass qc --results OUT``: a gallery of pictures a reviewer can check the pipeline's work on.

Per participant and visit: the ED slices base to apex with the LV cavity and myocardium outlined
(``analysis.qc_pictures``), the mass, LVMI and QC flags of every method, and why it sits where it does;
ordered worst first (``analysis.qc_order``: QC failures, then the largest disagreements between methods,
then mass outliers). Written to ``--out`` (default ``OUT/qc/``), every file self-contained (styles,
scripts and pictures inline, nothing fetched), so the folder can be copied or mailed as it is:

* ``index.html``: what the gallery holds, how it is ordered, the dead letters, and page 1 of the cards;
* ``page-0002.html``, ...: :data:`PER_PAGE` cards each, with links to the neighbouring pages;
* ``participants.html``: every participant in one table (paged and searchable in the browser), each row
  linking to its card. 40,000 participants make about 800 pages of cards and a 7 MB table.

Pictures need the pipeline's ``--save_labels`` (the ED image and the labels as NIfTI). Drawing them is the
slow part (about 20 ms a participant), so only the :data:`DEFAULT_PICTURES` worst get cards by default
(``--pictures``); everyone is in the table.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from analysis import io as aio
from analysis.cohort import method_label
from analysis.qc_order import (
    DISAGREEMENT_FRACTION,
    OUTLIER_ROBUST_Z,
    TIER_LABELS,
    TIERS,
    primary_method,
    review_order,
)
from analysis.qc_pictures import pixel_spacing_of, slice_mosaic
from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core import label_files
from lvmass.core.contracts import METHOD_INLINEVF, METHOD_ML4H_SEG
from lvmass.core.identity import ANY_VENDOR_INSTANCE
from lvmass.core.nifti import read_nifti_volume
from lvmass.storage import filesystems

logger = logging.getLogger(__name__)

GALLERY_DIRNAME = "qc"
INDEX_HTML = "index.html"
PARTICIPANTS_HTML = "participants.html"
PER_PAGE = 50
DEFAULT_PICTURES = 2000
OUTLINED_METHODS = (METHOD_ML4H_SEG, METHOD_INLINEVF)  # whose labels are drawn, the first found
OUTLINE_LABELS = {METHOD_ML4H_SEG: "ML4H_seg", METHOD_INLINEVF: "InlineVF"}  # one set of labels each
MAX_DEAD_LETTERS_SHOWN = 200


def page_name(page: int) -> str:
    """``index.html`` for page 1, ``page-0002.html`` after it."""
    return INDEX_HTML if page == 1 else f"page-{page:04d}.html"


def card_id(participant_id: str, instance: int) -> str:
    """The HTML id of a participant's card (``p-<participant_id>_<instance>``)."""
    return f"p-{participant_id}_{int(instance)}"


# --- inputs ---------------------------------------------------------------------------------------------
def read_dead_letters(results_dir: str) -> pd.DataFrame:
    """The folder's error rows (``OUT/errors/*.parquet``, those its ledger commit names); empty when there
    are none."""
    files = aio.errors_files(results_dir)
    frames = []
    for path in files:
        try:
            frames.append(pq.read_table(path, filesystem=filesystems.arrow_filesystem(path)).to_pandas())
        except (OSError, ValueError) as exc:
            raise aio.InputError(path, f"unreadable errors Parquet ({exc})") from exc
    columns = ["source_uri", "participant_id", "instance", "stage", "error_type", "message"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["stage", "source_uri"], kind="stable")


@dataclass(frozen=True)
class Picture:
    """A participant's mosaic (PNG) and which method's labels it outlines (None: the image alone)."""

    png: bytes
    method: str | None


def participant_picture(results_dir: str, participant_id: str, instance: int,
                        methods: Sequence[str]) -> Picture | str:
    """The mosaic of one participant from its saved NIfTI files, or a sentence saying why there is none."""
    image_path = label_files.ed_image_path(results_dir, participant_id, instance)
    if not filesystems.exists(image_path):
        return "no saved ED image (run the pipeline with --save_labels to see the slices)"
    image, affine = read_nifti_volume(aio.read_bytes(image_path), image_path)
    for method in methods:
        path = label_files.label_path(results_dir, method, participant_id, instance,
                                      suffix=label_files.NIFTI_SUFFIX)
        if filesystems.exists(path):
            labels, _ = read_nifti_volume(aio.read_bytes(path), path)
            return Picture(slice_mosaic(image, labels, pixel_spacing_of(affine)), method)
    return Picture(slice_mosaic(image, None, pixel_spacing_of(affine)), None)


# --- HTML -----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1280px;
color:#222;line-height:1.4;padding:0 1rem 2rem}h1{font-size:1.5rem;margin:1rem 0 .4rem}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.45rem 0;z-index:2;
font-size:.9rem}nav a{margin-right:.9rem}.note{color:#555;font-size:.88rem;max-width:70rem}
.card{border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;margin:1rem 0;padding:.5rem .8rem}
.card h3{margin:.1rem 0 .2rem;font-size:1.02rem}.why{margin:.1rem 0 .5rem;font-size:.9rem}
.tier-qc_failed{border-left-color:#c62828}.tier-methods_disagree{border-left-color:#ef6c00}
.tier-mass_outlier{border-left-color:#6a1b9a}.tier-no_concern{border-left-color:#9e9e9e}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;color:#fff;font-size:.78rem;
margin-right:.4rem}.b-qc_failed{background:#c62828}.b-methods_disagree{background:#ef6c00}
.b-mass_outlier{background:#6a1b9a}.b-no_concern{background:#757575}
.mosaic{max-width:100%;height:auto;display:block}table{border-collapse:collapse;font-size:.82rem;
margin:.5rem 0}th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;white-space:nowrap}
td.num{text-align:right}th{background:#f3f3f3}.fail{color:#c62828;font-weight:600}
.legend span{display:inline-block;width:1.6rem;height:.35rem;vertical-align:middle;margin:0 .3rem 0 .8rem}
.missing{color:#777;font-style:italic;font-size:.88rem}details{margin:.5rem 0}.wrap{overflow-x:auto}
"""


def _page(title: str, nav: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{nav}{body}{script}</body></html>\n")


def _nav(page: int, n_pages: int) -> str:
    links = [f'<a href="{INDEX_HTML}">overview</a>', f'<a href="{PARTICIPANTS_HTML}">all participants</a>']
    if n_pages:
        links.append(f"cards: page {page} of {n_pages}" if page else f"cards: {_plural(n_pages, 'page')}")
    if page > 1:
        links.append(f'<a href="{page_name(page - 1)}" rel="prev">&lsaquo; previous</a>')
    if page and page < n_pages:
        links.append(f'<a href="{page_name(page + 1)}" rel="next">next &rsaquo;</a>')
    return f"<nav>{' '.join(links)}</nav>"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{float(value):.{digits}f}"


def _methods_table(methods: dict[str, dict[str, Any]]) -> str:
    head = ("<tr><th>method</th><th>mass (g)</th><th>raw mass (g)</th><th>LVMI (g/m²)</th><th>LVH</th>"
            "<th>QC</th><th>flags</th></tr>")
    rows = []
    for method, f in methods.items():
        passed = bool(f["qc_pass"])
        flags = ", ".join(str(x) for x in (f["qc_flags"] if f["qc_flags"] is not None else []))
        lvh = f["lvh"]
        rows.append(
            f"<tr><td>{html.escape(method_label(method))}</td><td class=\"num\">{_fmt(f['lv_mass_g'])}</td>"
            f"<td class=\"num\">{_fmt(f['lv_mass_raw_g'])}</td><td class=\"num\">{_fmt(f['lvmi_g_m2'])}</td>"
            f"<td>{_fmt(None if lvh is None or lvh is pd.NA else bool(lvh))}</td>"
            f"<td class=\"{'' if passed else 'fail'}\">{'pass' if passed else 'fail'}</td>"
            f"<td>{html.escape(flags) or '–'}</td></tr>")
    return f'<div class="wrap"><table>{head}{"".join(rows)}</table></div>'


def _visit(instance: int) -> str:
    """UK Biobank's imaging visits are instances 2 and 3; 0 is what the pipeline records when the input's
    name states none (``identity.ANY_VENDOR_INSTANCE``)."""
    return "visit not stated" if instance == ANY_VENDOR_INSTANCE else f"visit {instance}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _card(row: pd.Series, picture: Picture | str, n_total: int) -> str:
    tier = str(row["tier"])
    visit = int(row["instance"])
    pid = html.escape(str(row["participant_id"]))
    sex = f" · {html.escape(str(row['sex']))}" if isinstance(row["sex"], str) else ""
    title = f"#{int(row['rank']):,} of {n_total:,} · {pid} · {_visit(visit)}{sex}"
    if isinstance(picture, Picture):
        outlined = (f"outlines: {OUTLINE_LABELS[picture.method]}" if picture.method
                    else "no saved labels: image only")
        data = base64.b64encode(picture.png).decode("ascii")
        figure = (f'<img class="mosaic" loading="lazy" alt="ED slices of {pid}, base (1) to apex" '
                  f'src="data:image/png;base64,{data}">'
                  f'<div class="note">slices base (1) to apex; {outlined}</div>')
    else:
        figure = f'<p class="missing">{html.escape(picture)}</p>'
    anchor = html.escape(card_id(row["participant_id"], visit))
    return (f'<section class="card tier-{tier}" id="{anchor}">'
            f'<h3><span class="badge b-{tier}">{TIER_LABELS[tier]}</span>{title}</h3>'
            f'<p class="why">{html.escape(str(row["reason"]))}</p>{figure}{_methods_table(row["methods"])}'
            "</section>")


def _overview(results_dir: str, order: pd.DataFrame, dead: pd.DataFrame, pictured: int, per_page: int,
              outlined: Sequence[str]) -> str:
    counts = order["tier"].value_counts()
    threshold = float(order.attrs.get("disagreement_threshold", DISAGREEMENT_FRACTION))
    tier_items = "".join(
        f'<li><span class="badge b-{t}">{TIER_LABELS[t]}</span>{int(counts.get(t, 0)):,}</li>' for t in TIERS)
    dead_text = f"{_plural(len(dead), 'input')} not measured (dead letters, below)" if len(dead) else (
        "no dead letters")
    parts = [
        "<h1>lvmass QC gallery</h1>",
        f'<p class="note">Results: <code>{html.escape(results_dir)}</code>: '
        f"{_plural(len(order), 'participant-visit')} measured, {dead_text}. Cards for the {pictured:,} "
        f'worst, {per_page} a page; <a href="{PARTICIPANTS_HTML}">all participants</a> in one table.</p>',
        f"<ul>{tier_items}</ul>",
        '<p class="note">Order: QC failures first (a method\'s row with qc_pass false), then participants '
        f"whose methods' calibrated masses lie {100 * threshold:.0f}% or more of their mean apart (at least "
        f"{100 * DISAGREEMENT_FRACTION:.0f}%; more where this cohort's methods usually differ more), then "
        f"masses {OUTLIER_ROBUST_Z:g} or more robust SD from the median of the participant's sex; "
        "within each, the largest disagreement first. Where a model's mass has no calibration (no "
        "phenotype row) its raw mass is compared.</p>",
        '<p class="note legend">Slices in the standard short-axis view: seen from the apex, anterior wall '
        "up, right ventricle on the left; base (1) to apex, one patch around the LV on every slice, one grey "
        f"window. <span style=\"background:#ffc800\"></span>LV cavity border (endocardium)"
        f"<span style=\"background:#00dcff\"></span>outer border of the myocardium (epicardium). Outlines "
        f"are {' or '.join(OUTLINE_LABELS[m] for m in outlined)}'s labels, the first saved. "
        "In the tables, – is a value not computed (a calibrated mass, LVMI or LVH needs the participant's "
        "phenotype row).</p>",
    ]
    if len(dead):
        rows = "".join(
            f"<tr><td>{html.escape(str(r.source_uri))}</td><td>{html.escape(str(r.stage))}</td>"
            f"<td>{html.escape(str(r.error_type))}</td><td>{html.escape(str(r.message))}</td></tr>"
            for r in dead.head(MAX_DEAD_LETTERS_SHOWN).itertuples())
        more = (f" (the first {MAX_DEAD_LETTERS_SHOWN}; all are in <code>errors/</code>)"
                if len(dead) > MAX_DEAD_LETTERS_SHOWN else "")
        parts.append(f"<details><summary>{_plural(len(dead), 'dead letter')}{more}</summary>"
                     '<div class="wrap"><table><tr><th>input</th><th>stage</th><th>error</th>'
                     "<th>message</th></tr>"
                     f"{rows}</table></div></details>")
    return "".join(parts)


_TABLE_SCRIPT = """<script>
const ROWS=%s;const PER=100;let shown=ROWS,page=0;
const body=document.getElementById('rows'),info=document.getElementById('info');
function cell(t,num){const td=document.createElement('td');td.textContent=t;
  if(num)td.className='num';return td}
function draw(){body.replaceChildren();const n=Math.max(1,Math.ceil(shown.length/PER));
  page=Math.min(page,n-1);
  for(const r of shown.slice(page*PER,(page+1)*PER)){const tr=document.createElement('tr');
    tr.appendChild(cell(r.rank,1));const id=document.createElement('td');
    if(r.href){const a=document.createElement('a');a.href=r.href;a.textContent=r.id;id.appendChild(a)}
    else{id.textContent=r.id}
    tr.appendChild(id);tr.appendChild(cell(r.visit,1));tr.appendChild(cell(r.tier));
    tr.appendChild(cell(r.mass,1));tr.appendChild(cell(r.lvmi,1));tr.appendChild(cell(r.reason));
    body.appendChild(tr)}
  info.textContent=`${shown.length.toLocaleString()} participants · page ${page+1} of ${n}`}
function filter(){const q=document.getElementById('q').value.trim().toLowerCase();
  const t=document.getElementById('tier').value;
  shown=ROWS.filter(r=>(!q||String(r.id).toLowerCase().includes(q))&&(!t||r.tier===t));page=0;draw()}
document.getElementById('q').addEventListener('input',filter);
document.getElementById('tier').addEventListener('change',filter);
document.getElementById('prev').addEventListener('click',()=>{page=Math.max(0,page-1);draw()});
document.getElementById('next').addEventListener('click',()=>{page+=1;draw()});draw();
</script>"""


def _participants_page(order: pd.DataFrame, pages: dict[tuple[str, int], int], n_pages: int,
                       primary: str | None) -> str:
    rows = []
    for r in order.itertuples():
        fields = r.methods.get(primary, {}) if primary else {}
        page = pages.get((r.participant_id, int(r.instance)))
        rows.append({
            "rank": int(r.rank), "id": str(r.participant_id), "visit": int(r.instance),
            "tier": TIER_LABELS[r.tier], "reason": str(r.reason),
            "mass": _fmt(fields.get("lv_mass_g")), "lvmi": _fmt(fields.get("lvmi_g_m2")),
            "href": f"{page_name(page)}#{card_id(r.participant_id, int(r.instance))}" if page else "",
        })
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    options = "".join(f'<option value="{TIER_LABELS[t]}">{TIER_LABELS[t]}</option>' for t in TIERS)
    label = html.escape(method_label(primary)) if primary else "primary method"
    body = ("<h1>All participants, worst first</h1>"
            '<p><input id="q" placeholder="participant id" size="18"> <select id="tier"><option value="">'
            f'every tier</option>{options}</select> <button id="prev">&lsaquo;</button> <button id="next">'
            '&rsaquo;</button> <span id="info"></span></p>'
            f'<div class="wrap"><table><thead><tr><th>#</th><th>participant</th><th>visit</th><th>tier</th>'
            f"<th>{label} mass (g)</th><th>{label} LVMI (g/m²)</th><th>why</th></tr></thead>"
            '<tbody id="rows"></tbody></table></div>'
            '<p class="note">A participant without a link has no card (beyond --pictures).</p>')
    return _page("lvmass QC: all participants", _nav(0, n_pages), body, _TABLE_SCRIPT % data)


@dataclass(frozen=True)
class Gallery:
    """What :func:`write_gallery` wrote: the index, the pages of cards, how many participants and
    dead letters it holds and how many have pictures."""

    index: str
    pages: tuple[str, ...]
    participants: int
    pictured: int
    dead_letters: int


def write_gallery(results_dir: str, out_dir: str | None = None, *, per_page: int = PER_PAGE,
                  pictures: int = DEFAULT_PICTURES, methods: Sequence[str] = OUTLINED_METHODS) -> Gallery:
    """Read the pipeline's output ``results_dir`` and write the gallery to ``out_dir`` (default
    ``results_dir/qc``); module docstring. Raises ``analysis.io.InputError`` naming an unusable input."""
    if per_page < 1 or pictures < 0:
        raise ValueError(f"per_page must be >= 1 and pictures >= 0. Received {per_page}, {pictures}")
    results_dir = results_dir.rstrip("/")
    out = (out_dir or f"{results_dir}/{GALLERY_DIRNAME}").rstrip("/")
    order = review_order(aio.read_results(results_dir))
    dead = read_dead_letters(results_dir)
    carded = order.head(pictures)
    n_pages = max(1, math.ceil(len(carded) / per_page)) if len(carded) else 1
    page_of = {(r.participant_id, int(r.instance)): 1 + k // per_page
               for k, r in enumerate(carded.itertuples())}
    written = []
    for page in range(1, n_pages + 1):
        chunk = carded.iloc[(page - 1) * per_page: page * per_page]
        cards = [_card(row, participant_picture(results_dir, row["participant_id"], int(row["instance"]),
                                                methods), len(order))
                 for _, row in chunk.iterrows()]
        head = _overview(results_dir, order, dead, len(carded), per_page, methods) if page == 1 else (
            f"<h1>lvmass QC gallery · page {page} of {n_pages}</h1>")
        path = f"{out}/{page_name(page)}"
        filesystems.write_text(path, _page(f"lvmass QC gallery · page {page}", _nav(page, n_pages),
                                           head + "".join(cards)), mime_type="text/html")
        written.append(path)
    filesystems.write_text(f"{out}/{PARTICIPANTS_HTML}",
                           _participants_page(order, page_of, n_pages, primary_method(
                               [m for ms in order["methods"] for m in ms])), mime_type="text/html")
    return Gallery(index=written[0], pages=tuple(written), participants=len(order), pictured=len(carded),
                   dead_letters=len(dead))


def build_parser() -> ArgumentParser:
    """The ``lvmass qc`` options."""
    parser = ArgumentParser(prog="lvmass qc", description="A QC gallery of the pipeline's results: ED slices "
                            "with the LV outlined, masses and flags, worst first (self-contained HTML).")
    parser.add_argument("--results", required=True, help="the pipeline's output folder (local or gs://)")
    parser.add_argument("--out", default=None, help="folder to write the gallery to (default RESULTS/qc)")
    parser.add_argument("--per_page", type=int, default=PER_PAGE, help=f"cards a page (default {PER_PAGE})")
    parser.add_argument("--pictures", type=int, default=DEFAULT_PICTURES,
                        help=f"cards with pictures for this many of the worst (default {DEFAULT_PICTURES}); "
                        "everyone is listed in participants.html")
    parser.add_argument("--method", choices=OUTLINED_METHODS, default=None,
                        help="whose labels to outline (default: ML4H_seg's, else InlineVF's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when written, 2 when an input is unusable (the message names it)."""
    parser = build_parser()
    args: argparse.Namespace = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.per_page < 1 or args.pictures < 0:
        parser.error(f"--per_page must be >= 1 and --pictures >= 0. Received {args.per_page}, "
                     f"{args.pictures}")
    started = time.monotonic()
    methods = (args.method,) if args.method else OUTLINED_METHODS
    try:
        gallery = write_gallery(args.results, args.out, per_page=args.per_page, pictures=args.pictures,
                                methods=methods)
    except aio.InputError as exc:
        print(f"lvmass qc: error: {exc}", file=sys.stderr)
        return 2
    print(f"QC gallery: {gallery.index} ({gallery.participants:,} participants, {gallery.pictured:,} with "
          f"cards on {len(gallery.pages)} pages, {gallery.dead_letters:,} dead letters; "
          f"{time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

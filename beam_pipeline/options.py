"""The options of ``lvmass run`` (ours: argparse; everything else goes to Beam's ``PipelineOptions``),
checked before any work (:func:`parse_args` -> :class:`RunConfig`), and what follows from them and the
model cards: the tensor grid (:func:`model_grid`), the fallback centering, the facts a run's measurements
depend on (:func:`fact_options`) and how the finalise derives the folder (:func:`finalise_settings`)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from beam_pipeline.progress import DEFAULT_EVERY_S as DEFAULT_PROGRESS_EVERY_S
from beam_pipeline.transforms import INPUT_KIND_AUTO, INPUT_KIND_FOLDER, INPUT_KINDS
from lvmass.cli_args import ArgumentParser
from lvmass.core import contracts
from lvmass.core.derive import DerivationSettings
from lvmass.core.mass import SexCentering
from lvmass.core.measure import DEFAULT_MIN_CALIBRATION_N
from lvmass.core.model_card import LABEL_SOURCE_TRUE_ANATOMY, PROCESS_MEMORY_BUDGET_MB, batch_size_for_memory
from lvmass.core.slices import ED_RULES
from lvmass.storage import filesystems, ledger
from lvmass.storage.models import bundled_model_dir, read_model_card

logger = logging.getLogger(__name__)

# --seg_field_of_view: the heart-centred crop (default: lvmass.core.crop) or the whole tensor, as the paper
# segmented it
SEG_FIELDS_OF_VIEW = ("crop", "whole")

MODE_INFER = "infer"
MODE_TENSORIZE = "tensorize"
MODES = (MODE_INFER, MODE_TENSORIZE)
SOURCE_MODEL_CARD = "model_card"
SOURCE_CALIBRATION_FILE = "calibration_file"


class ConfigError(ValueError):
    """The run's options cannot work (a missing model, an unknown method): said before any work starts."""



class NoInputsError(ConfigError):
    """``--input`` matches no participant zip or folder (exit code 3)."""


class OutputError(ConfigError):
    """The output folder cannot be used: not writable, or holding another run (exit code 4)."""


@dataclass(frozen=True)
class RunConfig:
    """Our own options, checked; the Beam ones travel separately as ``PipelineOptions``."""

    input: str
    output: str
    phenotypes: str | None
    methods: tuple[str, ...]
    mode: str
    model_seg: str | None
    model_reg: str | None
    calibration: str | None
    ed_rule: str
    batch_size: int
    large_model: bool
    num_shards: int
    seg_field_of_view: str = SEG_FIELDS_OF_VIEW[0]  # ML4H_seg on a heart-centred crop, or the whole tensor
    save_labels: bool = False
    input_kind: str = INPUT_KIND_AUTO
    min_calibration_n: int = DEFAULT_MIN_CALIBRATION_N
    grid_pixel_mm: float | None = None  # --pixel_spacing_mm: the tensor grid when no model says it
    overwrite: bool = False
    skip_existing: bool = False
    run_id: str = ""  # names this run's files (results-<run_id>-*.parquet) and its summary
    progress_every_s: float = DEFAULT_PROGRESS_EVERY_S  # a progress line this often on local runners; 0: none

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def build_parser() -> ArgumentParser:
    """The ``lvmass run`` options (ours); everything else goes to Beam."""
    parser = ArgumentParser(
        prog="lvmass run",
        description="Participant zips -> LV mass, LVMI, LVH -> Parquet (or TFRecords with --mode tensorize). "
        "Also `python -m beam_pipeline`. Unknown options are passed to Beam as PipelineOptions "
        "(e.g. --runner, --direct_num_workers).",
    )
    parser.add_argument("--input", required=True,
                        help="glob of participant zips, local or gs:// (e.g. gs://b/20209/*_20209_*.zip), "
                        "of participant folders of DICOMs (e.g. 'dicoms/*', one folder per participant, "
                        "eid from the folder name), or of NIfTI short-axis cines (e.g. "
                        "'subjects/*/sa.nii.gz', eid from the folder of a file named sa.nii.gz or "
                        "sa_ED.nii.gz)")
    parser.add_argument("--input_kind", choices=INPUT_KINDS, default=INPUT_KIND_AUTO,
                        help="what --input matches: zip files (and .nii/.nii.gz files, read as NIfTI by "
                        "name), folders of DICOMs, or auto (both; a pattern ending in .zip, .nii or .nii.gz "
                        "is read as files only)")
    parser.add_argument("--output", required=True, help="output folder, local or gs://")
    parser.add_argument("--phenotypes", default=None,
                        help="phenotype table (CSV or Parquet, local or gs://), columns as `lvmass synth` "
                        "writes them")
    parser.add_argument("--methods", default=",".join(contracts.INPUT_METHODS),
                        help=f"comma-separated subset of {','.join(contracts.INPUT_METHODS)} "
                        f"({contracts.METHOD_INLINEVF_RECALIBRATED} comes with {contracts.METHOD_INLINEVF})")
    parser.add_argument("--mode", choices=MODES, default=MODE_INFER,
                        help="infer: measure and write Parquet (default); tensorize: write TFRecords of "
                        "tensors and InlineVF labels for the trainer")
    parser.add_argument("--model_seg", default=None,
                        help="ML4H_seg SavedModel folder (default: bundled:ml4h_seg, the package's own)")
    parser.add_argument("--model_reg", default=None,
                        help="ML4H_reg SavedModel folder (default: bundled:ml4h_reg, the package's own)")
    parser.add_argument("--calibration", default=None,
                        help="JSON {method: {raw_mean_g: {sex: g}, manual_mean_g: {sex: g}}} used for "
                        "sex-stratified centering of a sex with too few manual masses in the run")
    parser.add_argument("--min_calibration_n", type=int, default=DEFAULT_MIN_CALIBRATION_N,
                        help="manual masses of a sex the run needs to fit its own centering for that sex; "
                        "below it --calibration / the model card is used for that sex when it has one "
                        f"(default {DEFAULT_MIN_CALIBRATION_N})")
    parser.add_argument("--ed_rule", choices=ED_RULES, default=ED_RULES[0],
                        help="end-diastolic frame of each slice: first_trigger_time (smallest TriggerTime, "
                        "the UK Biobank and ml4h rule; default) or first_instance (smallest "
                        "InstanceNumber)")
    parser.add_argument("--pixel_spacing_mm", type=float, default=None,
                        help="in-plane pixel size (mm) of the tensor grid every slice is resampled to. "
                        "Default: the models' own (model card pixel_spacing_mm); without a model "
                        f"(inlinevf only, --mode tensorize) {contracts.DEFAULT_TENSOR_PIXEL_SPACING_MM} mm, "
                        "UK Biobank's nominal size. A value that contradicts a model's card is refused")
    # default None: the most that fit PROCESS_MEMORY_BUDGET_MB per process by the model cards' measured
    # inference_memory (parse_args), 1 when no card has it
    parser.add_argument("--batch_size", type=int, default=None, help="max participants per inference batch")
    parser.add_argument("--large_model", action="store_true",
                        help="share one model copy across a worker's processes")
    parser.add_argument("--seg_field_of_view", choices=SEG_FIELDS_OF_VIEW, default=SEG_FIELDS_OF_VIEW[0],
                        help="ML4H_seg on a 128 px heart-centred crop (crop, default: the whole field of "
                        "view's labels within 60 mm of the LV, an eighth of the CPU) or on the whole "
                        "256 px field of view, as the paper ran it (whole)")
    parser.add_argument("--num_shards", type=int, default=None,
                        help="files of the run's own measurements (Parquet, default 1) or TFRecords (default "
                             "0); 0: the runner decides. The derived table has one file per method")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --output holds before writing (without it, or --skip_existing, a "
                        "non-empty output is refused)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="incremental run, or the resume of a stopped one: keep what --output's "
                        "committed runs hold (measured with the same settings) and process only the "
                        "participant-visits they do not; the cohort values of every participant are then "
                        "derived again")
    parser.add_argument("--save_labels", action="store_true",
                        help="also write ML4H_seg / InlineVF label volumes to OUTPUT/labels/method=<m>/ "
                             "(.npz in the tensor layout for Dice; .nii.gz on the acquisition grid with its "
                             "affine) and the ED image to OUTPUT/labels/image/ (for QC review: lvmass qc, "
                             "ITK-SNAP)")
    parser.add_argument("--progress_every_s", type=float, default=DEFAULT_PROGRESS_EVERY_S,
                        help="on a local runner, log participants done of matched, rate and time left this "
                        f"often (seconds; default {DEFAULT_PROGRESS_EVERY_S:g}; 0: never). On Dataflow the "
                        "same counts are the job's counters (participants_done, inputs_matched)")
    return parser


def parse_methods(text: str) -> tuple[str, ...]:
    """``"ml4h_seg,inlinevf"`` -> the methods in contract order; unknown names raise ConfigError."""
    requested = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(requested) - set(contracts.INPUT_METHODS))
    if unknown or not requested:
        raise ConfigError(f"--methods must name some of {list(contracts.INPUT_METHODS)}. Received: {text!r}")
    return tuple(m for m in contracts.INPUT_METHODS if m in requested)


def parse_args(argv: Sequence[str] | None) -> tuple[RunConfig, list[str]]:
    """Split our flags from Beam's; resolve default models; fail fast on what cannot work."""
    args, beam_args = build_parser().parse_known_args(argv)
    methods = parse_methods(args.methods)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1. Received: {args.batch_size}")
    if args.overwrite and args.skip_existing:
        raise ConfigError("--overwrite and --skip_existing contradict each other: choose one")
    if args.pixel_spacing_mm is not None and not args.pixel_spacing_mm > 0:
        raise ConfigError(f"--pixel_spacing_mm must be > 0. Received: {args.pixel_spacing_mm}")
    if args.min_calibration_n < 1:
        raise ConfigError(f"--min_calibration_n must be >= 1. Received: {args.min_calibration_n}")
    if not args.progress_every_s >= 0:
        raise ConfigError(f"--progress_every_s must be >= 0. Received: {args.progress_every_s}")
    if args.input_kind == INPUT_KIND_FOLDER and "**" in args.input:
        raise ConfigError(f"--input_kind folder: --input cannot hold '**' (one folder per participant). "
                          f"Received: {args.input!r}")
    models = {"seg": args.model_seg, "reg": args.model_reg}
    if args.mode == MODE_INFER:
        for flag, method, kind in (("seg", contracts.METHOD_ML4H_SEG, contracts.MODEL_KIND_SEG),
                                   ("reg", contracts.METHOD_ML4H_REG, contracts.MODEL_KIND_REG)):
            if method not in methods:
                continue
            models[flag] = models[flag] or bundled_model_dir(kind)
            if models[flag] is None:
                raise ConfigError(
                    f"method {method} needs a SavedModel: pass --model_{flag} DIR (no bundled model under "
                    f"beam_pipeline/models/{kind}/), or drop {method} from --methods")
    model_seg, model_reg = models["seg"], models["reg"]
    batch_size = args.batch_size
    if batch_size is None:  # the model cards' measured memory, for the models this run loads
        in_use = [m for m, method in ((model_seg, contracts.METHOD_ML4H_SEG),
                                      (model_reg, contracts.METHOD_ML4H_REG))
                  if m and method in methods and args.mode == MODE_INFER]
        batch_size = batch_size_for_memory(read_model_card(m) for m in in_use) or 1
        logger.info("inference batch size %d (model cards' inference_memory, %.0f MB per process)",
                    batch_size, PROCESS_MEMORY_BUDGET_MB)
    config = RunConfig(
        input=args.input, output=args.output.rstrip("/"), phenotypes=args.phenotypes, methods=methods,
        mode=args.mode, model_seg=model_seg if contracts.METHOD_ML4H_SEG in methods else None,
        model_reg=model_reg if contracts.METHOD_ML4H_REG in methods else None,
        calibration=args.calibration, ed_rule=args.ed_rule, batch_size=batch_size,
        large_model=args.large_model, seg_field_of_view=args.seg_field_of_view,
        save_labels=args.save_labels, input_kind=args.input_kind,
        min_calibration_n=args.min_calibration_n, grid_pixel_mm=args.pixel_spacing_mm,
        overwrite=args.overwrite, skip_existing=args.skip_existing, progress_every_s=args.progress_every_s,
        run_id=new_run_id(),
        num_shards=(args.num_shards if args.num_shards is not None
                    else 0 if args.mode == MODE_TENSORIZE else 1),
    )
    return config, beam_args


def new_run_id() -> str:
    """A run's id: its UTC start time to the microsecond (run ids sort in the order runs began, which is
    the order the ledger reads them in), the process id and a random tag (two runs never share one)."""
    now_ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 1_000_000_000))
    return f"{stamp}.{now_ns // 1000 % 1_000_000:06d}Z-{os.getpid() % 100000:05d}-{secrets.token_hex(2)}"


def centering_from_dict(spec: Any, *, source: str) -> SexCentering:
    """``{"raw_mean_g": {sex: g}, "manual_mean_g": {sex: g}}`` -> ``mass.SexCentering``."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: calibration must be an object with raw_mean_g and manual_mean_g")
    try:
        return SexCentering.from_dict(spec, source=source)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{source}: bad calibration ({exc})") from exc


def fallback_centering(config: RunConfig) -> dict[str, Any]:
    """Centering per method for a sex with too few manual masses in the run: --calibration, else the
    model card. Each carries its origin as ``source`` (``calibration_file`` / ``model_card``), which the
    rows' ``calibration`` column reports."""
    fallback: dict[str, Any] = {}
    if config.model_seg is not None:
        card = read_model_card(config.model_seg, expected_kind=contracts.MODEL_KIND_SEG)
        if card.calibration:
            fallback[contracts.METHOD_ML4H_SEG] = replace(centering_from_dict(
                card.calibration, source=f"{config.model_seg} model card"), source=SOURCE_MODEL_CARD)
    if config.calibration:
        try:
            spec = json.loads(filesystems.read_text(config.calibration))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{config.calibration}: cannot read the calibration JSON ({exc})") from exc
        if not isinstance(spec, dict):
            raise ConfigError(f"{config.calibration}: calibration JSON must be an object keyed by method")
        for method, method_spec in spec.items():
            if method not in contracts.INPUT_METHODS:
                raise ConfigError(f"{config.calibration}: unknown method {method!r}")
            fallback[method] = replace(centering_from_dict(method_spec, source=config.calibration),
                                       source=SOURCE_CALIBRATION_FILE)
    return fallback


@dataclass(frozen=True)
class ModelGrid:
    """The run's tensor grid (in-plane pixel size, mm; None: as acquired) and, per ML4H method, the
    acquired pixel sizes its model was trained on (for ``pixel_spacing_outside_training``)."""

    grid_pixel_mm: float | None
    training_pixel_spacing_mm: dict[str, list[float] | None]
    # the tensor's slices: 13 slots (the paper's models), or None: every slice (all models per-slice)
    n_slots: int | None = contracts.TENSOR_SLICES


def model_grid(config: RunConfig) -> ModelGrid:
    """One tensor grid for the run: the models' cards agree on it, ``--pixel_spacing_mm`` may restate it
    but not contradict it, and without a model it is ``--pixel_spacing_mm`` or the UK Biobank default.

    A model whose card predates the physical grid (no ``pixel_spacing_mm``) sees the pixels as acquired.
    """
    cards = {}
    for method, path, kind in ((contracts.METHOD_ML4H_SEG, config.model_seg, contracts.MODEL_KIND_SEG),
                               (contracts.METHOD_ML4H_REG, config.model_reg, contracts.MODEL_KIND_REG)):
        if path is not None:
            cards[method] = read_model_card(path, expected_kind=kind)
    ranges = {method: card.training_pixel_spacing_mm for method, card in cards.items()}
    slots = {method: card.tensor_slices for method, card in cards.items()}
    if len(set(slots.values())) > 1:
        raise ConfigError(f"the models take different slice layouts {slots} (model card tensor.input_shape: "
                          "13 slots or every slice): run them in separate runs")
    # tensorize writes the paper's 13-slot TFRecords whatever models are named
    n_slots = (next(iter(slots.values())) if slots and config.mode != MODE_TENSORIZE
               else contracts.TENSOR_SLICES)
    if not cards:
        grid = config.grid_pixel_mm or contracts.DEFAULT_TENSOR_PIXEL_SPACING_MM
        return ModelGrid(grid_pixel_mm=float(grid), training_pixel_spacing_mm=ranges)
    grids = {method: card.pixel_spacing_mm for method, card in cards.items()}
    distinct = set(grids.values())
    if len(distinct) > 1:
        raise ConfigError(f"the models were trained on different tensor grids {grids} (model card "
                          "pixel_spacing_mm): run them in separate runs")
    (grid,) = distinct
    if grid is None:
        if config.grid_pixel_mm is not None:
            raise ConfigError(f"--pixel_spacing_mm {config.grid_pixel_mm}: the model cards record no "
                              "pixel_spacing_mm, so the models take the pixels as acquired")
        logger.warning("model cards record no pixel_spacing_mm: the models see the pixels as acquired")
        return ModelGrid(grid_pixel_mm=None, training_pixel_spacing_mm=ranges, n_slots=n_slots)
    if config.grid_pixel_mm is not None and abs(config.grid_pixel_mm - grid) > 1e-9:
        raise ConfigError(f"--pixel_spacing_mm {config.grid_pixel_mm} contradicts the models' grid of "
                          f"{grid} mm (model card pixel_spacing_mm)")
    return ModelGrid(grid_pixel_mm=float(grid), training_pixel_spacing_mm=ranges, n_slots=n_slots)


def true_anatomy_methods(config: RunConfig) -> frozenset[str]:
    """The segmentation methods whose model learned true anatomy (card ``label_source``): their raw mass
    is an estimate that needs no centering (they are still centred where the run has manual masses)."""
    if config.model_seg is None:
        return frozenset()
    card = read_model_card(config.model_seg, expected_kind=contracts.MODEL_KIND_SEG)
    return frozenset({contracts.METHOD_ML4H_SEG}) if card.label_source == LABEL_SOURCE_TRUE_ANATOMY \
        else frozenset()


def check_inputs(config: RunConfig) -> None:
    """Fail before any work (here, or on a Flex Template's launcher): the phenotype file exists and each
    model's card reads and matches the contracts."""
    if config.phenotypes and not filesystems.exists(config.phenotypes):
        raise ConfigError(f"--phenotypes {config.phenotypes}: file not found")
    for flag, path in (("--model_seg", config.model_seg), ("--model_reg", config.model_reg)):
        if path is not None:
            kind = contracts.MODEL_KIND_SEG if flag == "--model_seg" else contracts.MODEL_KIND_REG
            try:
                read_model_card(path, expected_kind=kind)
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"{flag} {path}: {exc}") from exc


def progress_method(methods: Sequence[str]) -> str:
    """The method whose results mark a participant done for progress: the slowest the run has (ML4H_seg,
    then ML4H_reg, then InlineVF), so a participant counts once it has its last result."""
    return next(m for m in contracts.INPUT_METHODS if m in methods)



def fact_options(config: RunConfig, grid: ModelGrid | None = None) -> dict[str, Any]:
    """What shapes this run's measurements (``ledger.run_fact_options``): every run of one output folder
    must agree on it, so that one derived table never mixes incomparable measurements."""
    grid = grid if grid is not None else model_grid(config)
    versions = {}
    for name, path, kind in (("ml4h_seg", config.model_seg, contracts.MODEL_KIND_SEG),
                             ("ml4h_reg", config.model_reg, contracts.MODEL_KIND_REG)):
        if path is not None and config.mode == MODE_INFER:
            versions[name] = read_model_card(path, expected_kind=kind).version
    return ledger.run_fact_options(mode=config.mode, methods=config.methods, ed_rule=config.ed_rule,
                                   seg_field_of_view=config.seg_field_of_view,
                                   grid_pixel_mm=grid.grid_pixel_mm, n_slots=grid.n_slots,
                                   model_versions=versions)


def result_methods(config: RunConfig) -> tuple[str, ...]:
    """The methods of the derived table: the run's, with ``inlinevf_recalibrated`` beside InlineVF."""
    methods = list(config.methods) if config.mode == MODE_INFER else []
    if contracts.METHOD_INLINEVF in methods:
        methods.append(contracts.METHOD_INLINEVF_RECALIBRATED)
    return tuple(methods)


# Options the derived table and the summary depend on (besides the measurements): the summary records
# these, and only these, so an incremental folder's summary equals a one-shot run's.
DERIVED_OPTIONS = ("mode", "methods", "phenotypes", "calibration", "min_calibration_n")


def finalise_settings(config: RunConfig) -> ledger.FinaliseSettings:
    """How this run's finalise derives the folder's cohort values (``ledger.finalise``)."""
    derivation = DerivationSettings(
        fallback_centering=fallback_centering(config) if config.mode == MODE_INFER else {},
        min_calibration_n=config.min_calibration_n,
        raw_is_estimate=true_anatomy_methods(config) if config.mode == MODE_INFER else frozenset())
    options = config.as_dict()
    return ledger.FinaliseSettings(mode=config.mode, result_methods=result_methods(config),
                                   phenotypes_path=config.phenotypes, derivation=derivation,
                                   options={k: options[k] for k in DERIVED_OPTIONS})


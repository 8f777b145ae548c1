"""``lvmass import-ml4h``: the paper's released ML4H_seg weights as an lvmass ML4H_seg export.

ml4h publishes ML4H_seg as :data:`RELEASED_FILE` (Git LFS, 15,191,464 bytes, sha256
:data:`RELEASED_SHA256`): a Keras 2 whole model with its
``model_config``, RAdam optimizer slots and custom objects of TensorFlow Addons and ml4h. ML4H_reg's weights
are not published (the folder holds the seg file, its arguments file and figures only).

What the import does, without TensorFlow Addons or ml4h:

1. reads the file with h5py (:mod:`trainer.ml4h_h5`): graph, weights, provenance;
2. matches the file's graph layer by layer against ml4h's U-Net (:mod:`trainer.ml4h_arch`) of the
   :mod:`trainer.models` ``paper`` sizes (or, with ``any_size``, of the sizes the file itself has), and
   takes every conv's kernel and bias with a shape check (:mod:`trainer.ml4h_match`); a file of another
   architecture is refused naming the first layer that does not fit;
3. builds that graph in Keras 3, sets the weights, and exports the pipeline's ML4H_seg contract with
   ``trainer.export`` (``serving_default``, ``serving_crop``, ``serving_window``, ``model.keras``, the card,
   whose ``crop_inference.crop_px`` is the first heart-centred crop the pipeline takes,
   :data:`DEFAULT_CROP_PX`);
4. checks the export: ``serving_crop`` equals the Keras model on a random crop, and ``serving_window``
   equals ``serving_crop``'s inner window.

The card (:func:`build_card`) says what the model learned from (``label_source: inlinevf_outline``), how
ml4h's tensor maps prepared its input (:data:`ML4H_INPUT`: pixels as acquired, top-left padding to 256,
the first cine frame of each outlined slice, z-scored over the whole tensor), where lvmass's tensor
differs (:data:`TENSOR_DIFFERENCES`) and the calibration it needs: ML4H_seg learned InlineVF's outlines, so
its raw masses carry InlineVF's bias and must be centred per sex on manual masses (the paper's
sex-stratified centring; the run's own manual masses or ``--calibration``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from lvmass.core import contracts
from lvmass.core.model_card import LABEL_SOURCE_INLINEVF, ModelCard
from trainer import ml4h_arch, ml4h_h5, ml4h_match

logger = logging.getLogger(__name__)

RELEASED_FILE = "model_zoo/cardiac_mri_derived_left_ventricular_mass/sax_diastole_segment_no_flat.h5"
# the Git LFS pointer of the released file (ml4h repository)
RELEASED_SHA256 = "05f8fe4843d04cd526b8f2c2424ac98554238089e43a4376ffb2e12122206e4f"
RELEASED_SIZE_BYTES = 15191464
# the arguments file saved beside the weights: how ml4h's recipes.py trained them
ML4H_ARGUMENTS = {
    "file": "model_zoo/cardiac_mri_derived_left_ventricular_mass/arguments_2020-11-13_11-47.txt",
    "id": "sax_diastole_segment_no_flat", "input_tensors": ["sax_all_diastole"],
    "output_tensors": ["sax_all_diastole_segmented"], "tensormap_prefix": "ml4h.tensormap.ukb.mri",
    "u_connect": [["sax_all_diastole", "sax_all_diastole_segmented"]], "bottleneck_type": "no_bottleneck",
    "activation": "mish", "conv_layers": [32], "conv_x": [3, 3, 3], "conv_y": [3, 3, 3], "conv_z": [3, 3, 3],
    "dense_blocks": [32, 32, 32], "block_size": 3, "pool_type": "max", "pool_x": 2, "pool_y": 2, "pool_z": 1,
    "padding": "same", "conv_normalize": None, "optimizer": "radam", "learning_rate": 0.0002,
    "batch_size": 2, "epochs": 368, "training_steps": 128, "patience": 48, "random_seed": 12878,
}
# ml4h/tensormap/ukb/mri.py sax_all_diastole (and tensorize/tensor_writer_ukbb.py, which wrote its HD5)
ML4H_INPUT = {
    "tensor_map": "sax_all_diastole", "shape": [256, 256, 13, 1],
    "hd5_key": "ukb_cardiac_mri/cine_segmented_sax_inlinevf/2/instance_{50*b + 1}, b = 0..12",
    "series": "CINE_segmented_SAX_InlineVF (UK Biobank field 20209)",
    "frame": "the first of each slice's 50 cine frames (InstanceNumber 50*b + 1), ml4h's end-diastole",
    "slices": "slot b = the b-th slice of the series by InstanceNumber (acquisition order); the tensor "
              "writer stored only DICOMs carrying the InlineVF overlay (6000,3000), so slices without "
              "outlines are zero",
    "pixel_size": "as acquired (PixelSpacing (0028,0030)), no resampling",
    "padding": "pad_or_crop_array_to_shape: image at the top-left corner of 256 x 256, zeros below and to "
               "the right; larger images cropped at the bottom and right",
    "normalisation": "ZeroMeanStd1: (x - mean) / (std + EPS) over the whole 256 x 256 x 13 tensor, zero "
                     "padding and empty slices included",
    "orientation": "the DICOM pixel array as stored (rows, columns)",
}
ML4H_OUTPUT = {
    "tensor_map": "sax_all_diastole_segmented", "shape": [256, 256, 13, 3],
    "channel_map": {"background": 0, "ventricle": 1, "myocardium": 2},
    "labels": "InlineVF (D13A) myocardial outlines closed morphologically into LV cavity and myocardium "
              "(tensor_writer_ukbb._get_overlay_from_dicom)",
}
TENSOR_DIFFERENCES = (
    "grid: the card records no pixel_spacing_mm, so lvmass feeds the pixels as acquired, as ml4h did",
    "end-diastole: lvmass's default --ed_rule first_trigger_time takes each slice's first cine frame, as "
    "ml4h did",
    "padding: lvmass centres each slice in 256 x 256; ml4h put it at the top-left corner (the network is "
    "convolutional; the shift moves the pooling grid and the zero border)",
    "normalisation: lvmass z-scores over the acquired pixels and keeps padding at 0; ml4h z-scored the whole "
    "tensor, so its padding sat at -mean/std",
    "slices: lvmass places every acquired slice base to apex; ml4h only those with InlineVF outlines, at "
    "their acquisition index",
    "orientation: lvmass turns every slice to its standard view (contracts.IN_PLANE_VIEW); ml4h used the "
    "pixel array as stored, which is that view for UK Biobank's standard short-axis planning",
)
CALIBRATION_NEEDED = (
    "ML4H_seg learned InlineVF's outlines, so its raw masses carry InlineVF's bias against manual masses. "
    "Centre them per sex on manual masses, as the paper did: a run whose phenotypes hold "
    "manual masses for enough participants of each sex (--min_calibration_n) fits the centring itself; "
    "otherwise pass --calibration with {\"ml4h_seg\": {\"raw_mean_g\": ..., \"manual_mean_g\": ...}}. The "
    "card carries no calibration of its own: the released file comes without the raw means it needs.")
# the largest difference tolerated between serving_crop and the Keras model on the export's probe: the
# same float32 network computed by two graphs (other kernel blockings) differs by a few 1e-6
EXPORT_TOLERANCE = 2e-5
# The first heart-centred crop the pipeline takes with this model. Its receptive field is 92 px (three
# poolings), against the handler's 32 px margin, so a crop's kept window is exact only where 92 px of context
# lie inside the crop: 256 (the whole grid; the decoder still runs on the kept window only) always; 192 gave
# the whole field of view's labels on every heart voxel measured, 128 did not
# (benchmarks/results/stage_cpu_seconds_ml4h_released.json: 0.70, 1.31 and 0.25 CPU-s, whole 1.64).
DEFAULT_CROP_PX = 192


def released_version(sha256: str) -> str:
    """The card's version: the released file's id and the first 12 hex digits of this file's sha256."""
    return f"ml4h-{ML4H_ARGUMENTS['id']}-{sha256[:12]}"


def build_card(source: ml4h_h5.Keras2File, config: ml4h_arch.Ml4hUnetConfig, layer_map: dict[str, str], *,
               parameters: int, crop_px: int | None) -> ModelCard:
    """The model card of an imported file (module docstring): provenance, ml4h's preprocessing, the
    differences from lvmass's tensor and the calibration it needs. ``crop_px`` is the first crop's side the
    pipeline's handler takes for this model (None: the handler's own, 128)."""
    is_released = source.sha256 == RELEASED_SHA256
    is_paper = config == ml4h_arch.paper_config()
    crop = ({"signature": contracts.SEG_CROP_SIGNATURE, "align_px": 1, "crop_px": int(crop_px)}
            if crop_px else None)
    return ModelCard(
        kind=contracts.MODEL_KIND_SEG,
        version=released_version(source.sha256),
        label_source=LABEL_SOURCE_INLINEVF,
        pixel_spacing_mm=None,
        training_data={
            "source": "UK Biobank CMR short-axis cine (field 20209) with InlineVF (D13A) contours; "
                      "Khurshid et al. 2021: 33,071 CMRs",
            "labels": "InlineVF contours",
            "ml4h_input": ML4H_INPUT, "ml4h_output": ML4H_OUTPUT,
            "tensor_differences": list(TENSOR_DIFFERENCES),
            "calibration_needed": CALIBRATION_NEEDED,
            "origin": {
                "repository": "https://github.com/broadinstitute/ml4h", "released_file": RELEASED_FILE,
                "released_sha256": RELEASED_SHA256, "released_size_bytes": RELEASED_SIZE_BYTES,
                "file": os.path.basename(source.path), "sha256": source.sha256,
                "size_bytes": source.size_bytes, "is_released_file": is_released,
                "keras_version": source.keras_version, "model_class": source.model_class,
                "optimizer": source.optimizer, "optimizer_weights_ignored": source.optimizer_weight_count,
                "layer_map": dict(layer_map),
            },
        },
        hyperparameters={
            "architecture": config.as_dict(), "wiring": "ml4h make_multimodal_multitask_model "
            "(trainer.ml4h_arch)", "paper_preset_sizes": is_paper, "parameters": int(parameters),
            "ml4h_arguments": ML4H_ARGUMENTS,
        },
        trained_on_synthetic_data=False,
        crop_inference=crop,
        notes=("Imported from ml4h's released Keras 2 file by `lvmass import-ml4h` (trainer/ml4h_import.py). "
               + ("This is the released file (sha256 matches). " if is_released else
                  "This is NOT the released file (sha256 differs): a stand-in or another ml4h run. ")
               + "lvmass feeds its own tensor contract; where it differs from ml4h's input see "
                 "training_data.tensor_differences. " + CALIBRATION_NEEDED),
    )


def _check_export(model: Any, export_dir: str, *, seed: int = 0) -> dict[str, float | None]:
    """``serving_crop`` against the Keras model on a random aligned crop, and ``serving_window`` against
    ``serving_crop``'s inner window (``trainer.export.window_difference``)."""
    import tensorflow as tf

    from trainer import export

    saved = tf.saved_model.load(export_dir)
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((1, *contracts.TENSOR_SHAPE)).astype(np.float32)
    spacing = np.float32([[1.8, 1.8, 10.0]])
    crop = image[:, 96:160, 96:160]
    serve_crop = saved.signatures[export.CROP_SIGNATURE]
    outputs = serve_crop(image=tf.constant(crop), spacing_mm=tf.constant(spacing))
    served = outputs[contracts.SIGNATURE_OUTPUT_PROBABILITIES].numpy()
    direct = export.size_agnostic_twin(model)({contracts.SIGNATURE_INPUT_IMAGE: tf.constant(crop)},
                                              training=False).numpy()
    gap = float(np.abs(served - direct).max())
    if gap > EXPORT_TOLERANCE:
        raise ValueError(f"{export_dir}: serving_crop differs from the imported Keras model by {gap:.3g} "
                         f"(tolerance {EXPORT_TOLERANCE})")
    window_gap = export.window_difference(saved, image, spacing)
    return {"serving_crop_max_abs_difference": gap, "serving_window_max_abs_difference": window_gap}


def import_ml4h(weights_path: str, out_dir: str, *, any_size: bool = False,
                crop_px: int | None = DEFAULT_CROP_PX, overwrite: bool = False) -> dict[str, Any]:
    """Import ml4h's ML4H_seg ``.h5`` into an lvmass export folder ``out_dir`` (module docstring); returns
    what was checked.

    ``any_size``: accept an ml4h U-Net of other sizes than the paper's (read from the file) instead of
    requiring the ``paper`` preset's. ``crop_px``: the first crop's side the pipeline takes for this model
    (a multiple of 8 up to 256, :data:`DEFAULT_CROP_PX`; None: the handler's own, 128).

    Raises ``ml4h_match.ArchitectureMismatch`` (a ``ValueError``) naming the first layer that does not fit,
    ``ValueError`` for a file that is not a Keras 2 model, a bad ``crop_px`` or an ``out_dir`` that holds
    something else.
    """
    from trainer import export

    if crop_px is not None and not (2 * contracts.SEG_WINDOW_MARGIN_PX < crop_px <= contracts.TENSOR_ROWS
                                    and crop_px % 8 == 0):
        raise ValueError(f"crop_px must be a multiple of 8 above {2 * contracts.SEG_WINDOW_MARGIN_PX} and at "
                         f"most {contracts.TENSOR_ROWS}. Received: {crop_px}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise ValueError(f"{out_dir} is not empty: pass --overwrite to replace an earlier import")
        if not os.path.exists(os.path.join(out_dir, contracts.MODEL_CARD_FILENAME)):
            raise ValueError(f"{out_dir} holds files but no {contracts.MODEL_CARD_FILENAME}: not an lvmass "
                             "export, refusing to replace it")
        shutil.rmtree(out_dir)
    source = ml4h_h5.read_keras2_h5(weights_path)
    config = (ml4h_match.infer_config(source.layers, source.input_layers) if any_size
              else ml4h_arch.paper_config())
    graph = ml4h_arch.ml4h_unet_graph(config)
    try:
        plan = ml4h_match.plan_import(source.layers, source.input_layers, source.output_layers,
                                      source.weights, graph)
    except ml4h_match.ArchitectureMismatch as exc:
        sizes = "the sizes read from the file" if any_size else "the paper preset's sizes (trainer.models)"
        raise ml4h_match.ArchitectureMismatch(
            f"{weights_path}: not ml4h's ML4H_seg of {sizes}: {exc}") from exc
    model = ml4h_arch.build_ml4h_unet(config)
    for node in graph:
        if node.name in plan.weights:
            model.get_layer(node.name).set_weights(plan.weights[node.name])
    card = build_card(source, config, plan.layer_map, parameters=model.count_params(), crop_px=crop_px)
    export.export_model(model, kind=contracts.MODEL_KIND_SEG, export_dir=out_dir, card=card)
    checks = _check_export(model, out_dir)
    logger.info("imported %s (%s) into %s", weights_path, card.version, out_dir)
    return {"weights": weights_path, "out": out_dir, "version": card.version, "sha256": source.sha256,
            "is_released_file": source.sha256 == RELEASED_SHA256, "architecture": config.as_dict(),
            "paper_preset_sizes": config == ml4h_arch.paper_config(), "parameters": model.count_params(),
            "layers_matched": len(plan.layer_map), "conv_weights_copied": len(plan.weights),
            "optimizer_weights_ignored": source.optimizer_weight_count, **checks}


def build_parser():
    """The ``lvmass import-ml4h`` options."""
    from lvmass.cli_args import ArgumentParser

    parser = ArgumentParser(prog="lvmass import-ml4h",
                            description="Import ml4h's released ML4H_seg (sax_diastole_segment_no_flat.h5) "
                                        "as an lvmass ML4H_seg export for `lvmass run --model_seg DIR`.")
    parser.add_argument("--weights", required=True,
                        help="ml4h's Keras 2 .h5 (after `git lfs pull`), e.g. ml4h/" + RELEASED_FILE)
    parser.add_argument("--out", required=True, help="export folder to write (must be empty or absent)")
    parser.add_argument("--any_size", action="store_true",
                        help="accept an ml4h U-Net of other sizes than the paper's (read from the file)")
    parser.add_argument("--crop_px", type=int, default=DEFAULT_CROP_PX,
                        help="first heart-centred crop (px) the pipeline segments with this model: a "
                             "multiple of 8 up to 256; 256 is exact by construction "
                             f"(default {DEFAULT_CROP_PX}, see docs/training.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier import in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``lvmass import-ml4h --weights FILE.h5 --out DIR``: exit 0 with the report as JSON on stdout, 2 with
    the reason on stderr when the file cannot be imported."""
    import json

    from lvmass.cli_args import configure_logging

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)
    try:
        report = import_ml4h(args.weights, args.out, any_size=args.any_size, crop_px=args.crop_px,
                             overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lvmass import-ml4h: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate an exported (or in-memory) ML4H model over TFRecords: mass r / MAE, Dice, per-sex means.

``python -m trainer.evaluate --model_dir DIR --data 'tfrecords/*.tfrecord' [--split test] [--out m.json]``

References come from the records: ``manual_lv_mass_g`` for mass agreement and the record's label volume
for Dice (InlineVF labels in pipeline-made records; ground-truth labels when a synthetic cohort is
tensorized with its truth). For ML4H_seg the InlineVF mass of the same labels is reported beside the
model's, so "ML4H_seg beats InlineVF" can be read off one report. The per-sex means feed the model card's
``calibration`` (sex-stratified centering, as in the paper).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core import contracts
from lvmass.core.mass import measure_label_volume
from lvmass.core.metrics import label_dice, mass_agreement

Predictor = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
_SEX_NAMES = {code: name for name, code in contracts.SEX_CODE.items()}


def keras_predictor(model, kind: str) -> Predictor:
    """Wrap a Keras model of :mod:`trainer.models` as ``(image, spacing_mm) -> signature outputs``."""
    import tensorflow as tf

    is_seg = kind == contracts.MODEL_KIND_SEG

    @tf.function(reduce_retracing=True)
    def run(image, spacing):
        if is_seg:
            return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: model({contracts.SIGNATURE_INPUT_IMAGE: image})}
        out = model({contracts.SIGNATURE_INPUT_IMAGE: image, contracts.SIGNATURE_INPUT_SPACING: spacing})
        return {contracts.SIGNATURE_OUTPUT_MASS: tf.reshape(out, [-1])}

    def predict(image: np.ndarray, spacing_mm: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in run(tf.constant(image), tf.constant(spacing_mm)).items()}

    return predict


def saved_model_predictor(export_dir: str) -> tuple[Predictor, str]:
    """The ``serving_default`` signature of an export, and the model kind from its card."""
    import tensorflow as tf

    from trainer.export import load_card, load_serving

    card = load_card(export_dir)
    card.check_compatible()
    serve = load_serving(export_dir)

    def predict(image: np.ndarray, spacing_mm: np.ndarray) -> dict[str, np.ndarray]:
        out = serve(**{contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image, tf.float32),
                       contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing_mm, tf.float32)})
        return {k: v.numpy() for k, v in out.items()}

    return predict, card.kind


def _records(files: Sequence[str], split: str, spec):

    from lvmass.storage.tfrecord import parse_example, record_dataset
    from trainer import data

    ds = record_dataset(list(files)).map(parse_example)
    if split != "all":
        ds = ds.filter(lambda ex: data.in_split(ex[contracts.FEATURE_EID], split, spec))
    return ds


def predict_rows(
    predict: Predictor, files: Sequence[str], *, kind: str, split: str, spec, limit: int | None = None,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """One row per record: eid, sex, predicted mass, references (manual, label mass), Dice, seconds."""
    ds = _records(files, split, spec)
    if limit:
        ds = ds.take(limit)
    rows: list[dict[str, Any]] = []
    for batch in ds.batch(batch_size).as_numpy_iterator():
        started = time.perf_counter()
        out = predict(batch[contracts.FEATURE_IMAGE], batch[contracts.FEATURE_SPACING])
        seconds = (time.perf_counter() - started) / len(batch[contracts.FEATURE_EID])
        for i, eid in enumerate(batch[contracts.FEATURE_EID]):
            spacing = batch[contracts.FEATURE_SPACING][i]
            has_labels = bool(batch[contracts.FEATURE_HAS_LABELS][i])
            labels = batch[contracts.FEATURE_LABELS][i]
            row: dict[str, Any] = {
                "eid": int(eid),
                "sex": _SEX_NAMES.get(int(batch[contracts.FEATURE_SEX][i])),
                "manual_lv_mass_g": (float(batch[contracts.FEATURE_MANUAL_MASS][i])
                                     if batch[contracts.FEATURE_HAS_MANUAL_MASS][i] else float("nan")),
                "label_mass_g": (measure_label_volume(labels, spacing).lv_mass_raw_g if has_labels
                                 else float("nan")),
                "seconds": seconds,
            }
            if kind == contracts.MODEL_KIND_SEG:
                predicted = np.argmax(out[contracts.SIGNATURE_OUTPUT_PROBABILITIES][i], axis=-1)
                row["predicted_mass_g"] = measure_label_volume(predicted, spacing).lv_mass_raw_g
                row["myocardium_dice"] = label_dice(predicted, labels) if has_labels else float("nan")
            else:
                row["predicted_mass_g"] = float(out[contracts.SIGNATURE_OUTPUT_MASS][i])
            rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Agreement vs manual mass (and vs label mass), mean Dice, per-sex calibration means."""
    predicted = [r["predicted_mass_g"] for r in rows]
    manual = [r["manual_lv_mass_g"] for r in rows]
    out: dict[str, Any] = {
        "n": len(rows),
        "vs_manual_mass": mass_agreement(predicted, manual),
        "seconds_per_participant": float(np.mean([r["seconds"] for r in rows])) if rows else float("nan"),
    }
    if kind == contracts.MODEL_KIND_SEG:
        dices = [r["myocardium_dice"] for r in rows if np.isfinite(r["myocardium_dice"])]
        out["myocardium_dice_vs_labels"] = float(np.mean(dices)) if dices else float("nan")
        out["vs_label_mass"] = mass_agreement(predicted, [r["label_mass_g"] for r in rows])
        out["labels_vs_manual_mass"] = mass_agreement([r["label_mass_g"] for r in rows], manual)
        raw, ref = {}, {}
        for sex in contracts.SEXES:
            pairs = [(r["predicted_mass_g"], r["manual_lv_mass_g"]) for r in rows
                     if r["sex"] == sex and np.isfinite(r["manual_lv_mass_g"])]
            if pairs:
                raw[sex] = float(np.mean([p for p, _ in pairs]))
                ref[sex] = float(np.mean([q for _, q in pairs]))
        if raw:
            out["calibration"] = {"raw_mean_g": raw, "manual_mean_g": ref, "source": "validation split"}
    return out


def evaluate_records(
    predict: Predictor, files: Sequence[str], *, kind: str, split: str, spec, limit: int | None = None
) -> dict[str, Any]:
    return summarise(predict_rows(predict, files, kind=kind, split=split, spec=spec, limit=limit), kind)


def build_parser() -> ArgumentParser:
    """The ``python -m trainer.evaluate`` options."""
    from trainer import data

    p = ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", required=True, help="an export of trainer.task (SavedModel + model card)")
    p.add_argument("--data", required=True, help="TFRecord glob(s), comma-separated")
    p.add_argument("--split", choices=(*data.SPLITS, "all"), default="all",
                   help="which split of the eid hash to evaluate (default all)")
    p.add_argument("--validation_fraction", type=float, default=0.1, help="as trainer.task's")
    p.add_argument("--test_fraction", type=float, default=0.1, help="as trainer.task's")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many examples")
    p.add_argument("--out", default=None, help="write the summary (and per-participant rows) as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from trainer import data

    p = build_parser()
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)
    try:
        predict, kind = saved_model_predictor(args.model_dir)
        files = data.list_files(args.data)
        spec = data.SplitSpec(args.validation_fraction, args.test_fraction)
        rows = predict_rows(predict, files, kind=kind, split=args.split, spec=spec, limit=args.limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 1
    summary = {"model_dir": args.model_dir, "kind": kind, "data": args.data, "split": args.split,
               **summarise(rows, kind)}
    print(json.dumps(summary, indent=2))
    if args.out:
        import tensorflow as tf

        with tf.io.gfile.GFile(args.out, "w") as handle:
            handle.write(json.dumps({**summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

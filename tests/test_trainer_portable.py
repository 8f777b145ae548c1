"""``trainer.portable``: ML4H_seg trained straight from participant zips (any Keras backend; here the
test environment's TensorFlow), with the pipeline's tensors and InlineVF labels, exported for the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.decode import decode_participant_zip
from lvmass.core.model_card import ModelCard
from lvmass.core.model_input import ModelInput
from trainer import models, portable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    from lvmass.synth import generate_cohort
    from lvmass.synth.config import SynthConfig

    root = tmp_path_factory.mktemp("portable")
    config = SynthConfig(manual_mass_fraction=1.0)
    train = generate_cohort(root / "train", participants=4, seed=31, first_eid=4100001, config=config)
    validation = generate_cohort(root / "val", participants=2, seed=32, first_eid=4200001, config=config)
    (train.zips_dir / "4100099_20209_2_0.zip").write_bytes(b"not a zip at all")
    return root, train, validation


def test_examples_are_the_pipelines_tensors_and_inlinevf_labels(cohorts):
    from lvmass.core.measure import participant_from_study

    _, train, _ = cohorts
    path = sorted(train.zips_dir.glob("41000*_20209_2_0.zip"))[0]
    example = portable.load_example(str(path))
    with open(path, "rb") as handle:
        expected = participant_from_study(decode_participant_zip(handle, str(path)), with_inlinevf=True)
    assert example.eid == expected.eid
    np.testing.assert_array_equal(example.image, expected.image[..., 0])
    np.testing.assert_array_equal(example.labels, expected.inlinevf_labels)
    np.testing.assert_allclose(example.spacing_mm, expected.spacing_mm)


def test_unusable_zip_is_named_with_its_reason(cohorts):
    _, train, _ = cohorts
    bad = str(train.zips_dir / "4100099_20209_2_0.zip")
    with pytest.raises(Exception, match="4100099"):
        portable.load_example(bad)


def test_fit_then_export_serves_the_same_labels(cohorts, tmp_path):
    _, train, validation = cohorts
    run_dir = tmp_path / "run"
    code = portable.main([
        "fit", "--zips", f"{train.zips_dir}/*.zip", "--validation_zips", f"{validation.zips_dir}/*.zip",
        "--out", str(run_dir), "--preset", "cpu", "--crop_px", "32", "--crops_per_participant", "2",
        "--batch_size", "2", "--epochs", "2", "--steps_per_epoch", "2", "--workers", "1", "--seed", "3",
    ])
    assert code == 0
    summary = json.loads((run_dir / portable.FIT_FILENAME).read_text())
    data = summary["training_data"]
    assert (data["train_participants"], data["validation_participants"]) == (4, 2)
    [skipped] = data["skipped"]  # the broken zip is reported, the others trained
    assert skipped["source"].endswith("4100099_20209_2_0.zip") and skipped["reason"]
    assert summary["hyperparameters"]["steps_run"] == 4
    assert len(summary["history"]["loss"]) == 2
    assert (run_dir / portable.LOG_FILENAME).read_text().startswith("epoch")
    validation_metrics = summary["validation"]
    assert validation_metrics["n"] == 2
    assert 0.0 <= validation_metrics["myocardium_dice_vs_labels"] <= 1.0
    assert set(validation_metrics["calibration"]["manual_mean_g"]) <= set(contracts.SEXES)

    export_dir = tmp_path / "export"
    assert portable.main(["export", "--run_dir", str(run_dir), "--export_dir", str(export_dir),
                          "--synthetic"]) == 0
    card = ModelCard.from_json((export_dir / contracts.MODEL_CARD_FILENAME).read_text())
    assert card.kind == contracts.MODEL_KIND_SEG and card.trained_on_synthetic_data
    assert card.calibration == validation_metrics["calibration"]
    assert card.hyperparameters["architecture"] == summary["architecture"]

    keras_model = models.build_ml4h_seg(models.SegConfig(**summary["architecture"]))
    portable.load_weights(keras_model, str(run_dir / portable.WEIGHTS_FILENAME))
    example = portable.load_example(str(sorted(validation.zips_dir.glob("*.zip"))[0]))
    image = example.image[None, ..., None]
    expected = np.argmax(np.asarray(keras_model.predict({contracts.SIGNATURE_INPUT_IMAGE: image}, verbose=0)),
                         axis=-1)[0]
    handler = SavedModelHandler(str(export_dir), kind=contracts.MODEL_KIND_SEG)
    model_input = ModelInput(example.image[..., None], np.asarray(example.spacing_mm, np.float32))
    [result] = handler.run_inference([model_input], handler.load_model())
    np.testing.assert_array_equal(result.inference, expected)


def test_missing_zips_are_a_clear_error(tmp_path, capsys):
    code = portable.main(["fit", "--zips", str(tmp_path / "none" / "*.zip"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no participant zip matches" in capsys.readouterr().err


def test_fine_tuning_stage_is_recorded_on_the_card(cohorts, tmp_path):
    _, train, _ = cohorts
    common = ["--zips", f"{train.zips_dir}/*.zip", "--preset", "cpu", "--crop_px", "32",
              "--crops_per_participant", "2", "--batch_size", "2", "--epochs", "1", "--steps_per_epoch", "1",
              "--workers", "1"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert portable.main(["fit", *common, "--out", str(first)]) == 0
    assert portable.main(["fit", *common, "--out", str(second), "--learning_rate", "1e-4",
                          "--initial_weights", str(first / portable.WEIGHTS_FILENAME)]) == 0
    export_dir = str(tmp_path / "export")
    # a fine-tuned run without its earlier stage would hide part of the training: refused
    assert portable.main(["export", "--run_dir", str(second), "--export_dir", export_dir]) == 2
    assert portable.main(["export", "--run_dir", str(second), "--export_dir", export_dir,
                          "--earlier_run_dir", str(first)]) == 0
    card = ModelCard.from_json((tmp_path / "export" / contracts.MODEL_CARD_FILENAME).read_text())
    [stage] = card.training_data["earlier_stages"]
    assert stage["train_participants"] == 4
    assert card.hyperparameters["initial_weights"].endswith(portable.WEIGHTS_FILENAME)
    assert card.hyperparameters["earlier_stages"][0]["learning_rate"] == 1e-3
    assert len(card.metrics["earlier_stages"][0]["history"]["loss"]) == 1

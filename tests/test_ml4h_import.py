"""``lvmass import-ml4h``: ml4h's released ML4H_seg ``.h5`` -> an lvmass ML4H_seg export -> ``lvmass run``.

The released file cannot be fetched here, so a stand-in (``tests/ml4h_standin.py``) is written from ml4h's
own rules: ml4h's graph, ml4h's layer names, Keras 2's h5 layout, RAdam's slots, random weights. Oracles
that are not the code under test:

* the released file's size in its Git LFS pointer (15,191,464 bytes): the stand-in of the paper's sizes,
  weights plus RAdam's two slots, comes within 0.1% of it (a different wiring of the same sizes, as
  ``trainer.models``' own ``paper`` preset, has a different parameter count);
* the forward pass: Keras 3's own legacy reader of Keras 2 files, which rebuilds the stand-in from its
  ``model_config`` and loads its weights by layer name, sharing no code with ``trainer.ml4h_*``;
* the whole field of view: ``serving_crop`` must equal ``serving_default`` wherever an output's receptive
  field lies inside the crop.

Tolerances: probabilities are float32 softmax outputs of 20 convolutions; the same network computed by two
graphs (different kernel blockings, oneDNN or not) differs by a few 1e-6, so 2e-5 is allowed. Labels are
compared where the oracle's two most likely classes are more than 1e-3 apart (a tie either way elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from lvmass import cli
from lvmass.core import contracts
from tests.ml4h_standin import INPUT_NAME, OUTPUT_NAME, legacy_keras_model, write_standin
from trainer import ml4h_arch, ml4h_h5, ml4h_import, ml4h_match

PROBABILITY_TOLERANCE = ml4h_import.EXPORT_TOLERANCE
TIE_MARGIN = 1e-3


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper-size stand-in and its import through ``lvmass import-ml4h`` (the CLI)."""
    root = tmp_path_factory.mktemp("ml4h")
    weights = write_standin(root / "sax_diastole_segment_no_flat.h5", seed=3)
    out = root / "ml4h_seg"
    assert cli.main(["import-ml4h", "--weights", str(weights), "--out", str(out)]) == 0
    return {"root": root, "weights": weights, "out": out}


def _oracle(weights: Path, image: np.ndarray) -> np.ndarray:
    return legacy_keras_model(weights).predict({INPUT_NAME: image[None]}, verbose=0)[0]


def _serving(out: Path, signature: str, image: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    saved = tf.saved_model.load(str(out))
    outputs = saved.signatures[signature](image=tf.constant(image[None]),
                                          spacing_mm=tf.constant(np.float32([[1.8, 1.8, 10.0]])))
    return outputs[contracts.SIGNATURE_OUTPUT_PROBABILITIES].numpy()[0]


# --- the stand-in is the released file's shape -----------------------------------------------------------


class TestStandIn:
    def test_its_size_is_the_released_files(self, paper):
        """Weights + RAdam's m and v of 1,245,827 parameters: 14.95 MB of the released 15.19 MB; the rest is
        HDF5 metadata and the JSON configs (what the real file holds beyond that is not known here)."""
        size = paper["weights"].stat().st_size
        assert abs(size - ml4h_import.RELEASED_SIZE_BYTES) / ml4h_import.RELEASED_SIZE_BYTES < 1e-3
        assert ml4h_arch.build_ml4h_unet().count_params() == 1_245_827

    def test_the_presets_own_wiring_would_not_be_that_size(self):
        from trainer import models

        assert models.build_ml4h_seg(models.seg_config("paper")).count_params() != 1_245_827

    def test_it_is_a_keras2_file_with_ml4hs_names(self, paper):
        source = ml4h_h5.read_keras2_h5(str(paper["weights"]))
        assert source.keras_version == "2.4.0" and source.optimizer == "RectifiedAdam"
        assert source.input_layers == (INPUT_NAME,) and source.output_layers == (OUTPUT_NAME,)
        names = {layer.name for layer in source.layers}
        assert {"conv3d", "conv3d_18", "activation_18", "concatenate_15", "max_pooling3d_2",
                "up_sampling3d_2"} <= names
        assert "max_pooling3d_3" not in names  # built by ml4h's encoder, never called
        assert source.optimizer_weight_count == 1 + 2 * 40


# --- the import ------------------------------------------------------------------------------------------


class TestImport:
    def test_every_layer_and_weight_is_matched(self, paper):
        card = json.loads((paper["out"] / contracts.MODEL_CARD_FILENAME).read_text())
        origin = card["training_data"]["origin"]
        assert len(origin["layer_map"]) == 62
        assert origin["layer_map"]["image"] == INPUT_NAME
        assert origin["layer_map"]["stem_conv"] == "conv3d"
        assert origin["layer_map"]["up2_skip"] == "concatenate_6"  # the bottom block with itself
        assert origin["layer_map"]["head_softmax"] == OUTPUT_NAME
        assert origin["is_released_file"] is False and origin["optimizer"] == "RectifiedAdam"
        assert card["version"] == ml4h_import.released_version(origin["sha256"])

    def test_the_card_says_what_ml4h_fed_it_and_what_it_needs(self, paper):
        card = json.loads((paper["out"] / contracts.MODEL_CARD_FILENAME).read_text())
        assert card["kind"] == contracts.MODEL_KIND_SEG and card["label_source"] == "inlinevf_outline"
        assert card["pixel_spacing_mm"] is None  # ml4h took the pixels as acquired
        assert card["calibration"] == {} and "sex" in card["training_data"]["calibration_needed"]
        assert card["training_data"]["ml4h_input"]["tensor_map"] == "sax_all_diastole"
        assert "top-left" in card["training_data"]["ml4h_input"]["padding"]
        assert card["hyperparameters"]["paper_preset_sizes"] is True
        assert card["hyperparameters"]["parameters"] == 1_245_827
        crop = card["crop_inference"]
        assert crop["align_px"] == 8 and crop["receptive_field_px"] == 92
        assert crop["window_signature"] == contracts.SEG_WINDOW_SIGNATURE
        assert crop["crop_px"] == ml4h_import.DEFAULT_CROP_PX == 192

    def test_crop_equals_the_whole_field_of_view_where_its_receptive_field_fits(self, paper):
        """An output voxel 92 px (the receptive field) from every crop edge sees only pixels of the crop."""
        image = np.random.default_rng(0).standard_normal(contracts.TENSOR_SHAPE).astype(np.float32)
        whole = _serving(paper["out"], contracts.SERVING_SIGNATURE, image)
        crop = _serving(paper["out"], contracts.SEG_CROP_SIGNATURE, image[32:224, 32:224])
        inside = slice(92, 192 - 92)
        np.testing.assert_allclose(crop[inside, inside], whole[32:224, 32:224][inside, inside],
                                   atol=PROBABILITY_TOLERANCE)


# --- through lvmass run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(paper):
    """One synthetic participant through ``lvmass run`` with the imported model on the whole field of
    view, and the tensor the pipeline built for it (its own decode and tensor functions, acquired grid)."""
    from lvmass.core.decode import decode_participant_zip
    from lvmass.core.measure import participant_from_study
    from lvmass.synth import generate_cohort

    root = paper["root"]
    cohort = generate_cohort(root / "cohort", participants=1, seed=5, fidelity="lite")
    (zip_path,) = sorted(Path(cohort.zips_dir).glob("*.zip"))
    out = root / "results"
    code = cli.main(["run", f"--input={zip_path}", f"--output={out}", f"--model_seg={paper['out']}",
                     "--methods=ml4h_seg", "--seg_field_of_view=whole", "--save_labels",
                     "--runner=FnApiRunner"])
    assert code == 0
    (labels_file,) = sorted((out / "labels").glob("method=ml4h_seg/*.npz"))
    with zip_path.open("rb") as handle:
        study = decode_participant_zip(handle, zip_path.name)
    tensor = participant_from_study(study, with_inlinevf=False, grid_pixel_mm=None)
    return {"labels": np.load(labels_file)["labels"], "image": np.asarray(tensor.image, np.float32)}


@pytest.mark.slow
class TestThroughThePipeline:
    def test_the_export_gives_the_standins_own_probabilities(self, paper, run):
        oracle = _oracle(paper["weights"], run["image"])
        served = _serving(paper["out"], contracts.SERVING_SIGNATURE, run["image"])
        np.testing.assert_allclose(served, oracle, atol=PROBABILITY_TOLERANCE)

    def test_the_runs_labels_are_the_standins_argmax(self, paper, run):
        oracle = _oracle(paper["weights"], run["image"])
        expected = np.argmax(oracle, axis=-1)
        ranked = np.sort(oracle, axis=-1)
        decisive = ranked[..., -1] - ranked[..., -2] > TIE_MARGIN
        assert decisive.mean() > 0.99
        assert set(np.unique(expected[decisive])) == {0, 1, 2}  # not a constant map
        assert run["labels"].shape == contracts.LABEL_VOLUME_SHAPE
        np.testing.assert_array_equal(run["labels"][decisive], expected[decisive])


# --- files that are not ml4h's ML4H_seg -------------------------------------------------------------------


def _refusal(path: Path, tmp_path: Path, match: str, **kw) -> None:
    with pytest.raises(ValueError, match=match):
        ml4h_import.import_ml4h(str(path), str(tmp_path / "out"), **kw)
    assert not (tmp_path / "out").exists()


class TestRefusals:
    def test_a_wider_block_names_its_first_conv(self, tmp_path):
        path = write_standin(tmp_path / "wide.h5", dense_blocks=(32, 64, 32), with_optimizer=False)
        _refusal(path, tmp_path, r"layer 'conv3d_4' \(Conv3D\) does not fit: it has filters 64, expected 32; "
                                 r"ml4h's U-Net has encoder dense block 1, conv 0 there")

    def test_another_activation_names_the_stem_activation(self, tmp_path):
        path = write_standin(tmp_path / "relu.h5", activation="relu", with_optimizer=False)
        _refusal(path, tmp_path, r"layer 'activation' \(Activation\) does not fit: it has activation 'relu', "
                                 r"expected 'mish'")

    def test_shorter_blocks_name_the_layer_where_a_concatenation_belongs(self, tmp_path):
        path = write_standin(tmp_path / "short.h5", block_size=2, with_optimizer=False)
        _refusal(path, tmp_path, r"layer 'max_pooling3d_1' \(MaxPooling3D of \['activation_2'\]\) does not "
                                 r"fit: ml4h's U-Net has encoder dense block 0, dense concatenation 2 there")

    def test_ml4hs_192_pixel_variant_names_the_input(self, tmp_path):
        path = write_standin(tmp_path / "192.h5", shape=(192, 192, 13, 1), with_optimizer=False)
        _refusal(path, tmp_path, rf"layer '{INPUT_NAME}' \(InputLayer\) does not fit: it takes shape "
                                 r"\(192, 192, 13, 1\), expected \(256, 256, 13, 1\)")

    def test_a_weight_of_the_wrong_shape_is_named(self, tmp_path):
        path = write_standin(tmp_path / "bad_weight.h5", with_optimizer=False)
        with h5py.File(path, "r+") as f:
            del f["model_weights/conv3d_7/conv3d_7/bias:0"]
            f["model_weights/conv3d_7/conv3d_7"].create_dataset("bias:0", data=np.zeros(16, np.float32))
        _refusal(path, tmp_path, r"layer 'conv3d_7' weight 'conv3d_7/bias:0' has shape \(16,\), expected "
                                 r"\(32,\); ml4h's U-Net has encoder dense block 2, conv 0 there")

    def test_a_weights_only_file_an_lfs_pointer_and_a_text_file(self, tmp_path):
        path = write_standin(tmp_path / "weights_only.h5", with_optimizer=False)
        with h5py.File(path, "r+") as f:
            del f.attrs["model_config"]
        _refusal(path, tmp_path, "no model_config attribute: a weights-only file")
        pointer = tmp_path / "pointer.h5"
        pointer.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:"
                           f"{ml4h_import.RELEASED_SHA256}\nsize {ml4h_import.RELEASED_SIZE_BYTES}\n")
        _refusal(pointer, tmp_path, r"Git LFS pointer, not the weights: run `git lfs pull")
        text = tmp_path / "notes.h5"
        text.write_text("not a model")
        _refusal(text, tmp_path, "is not an HDF5 file")

    def test_a_narrower_ml4h_unet_needs_any_size(self, tmp_path):
        path = write_standin(tmp_path / "narrow.h5", conv_layers=4, dense_blocks=(4, 8, 8), block_size=2,
                             with_optimizer=False)
        _refusal(path, tmp_path, r"paper preset's sizes .*layer 'conv3d' \(Conv3D\) does not fit: it has "
                                 r"filters 4, expected 32")
        report = ml4h_import.import_ml4h(str(path), str(tmp_path / "narrow"), any_size=True, crop_px=160)
        assert report["architecture"]["dense_blocks"] == [4, 8, 8]
        assert report["architecture"]["block_size"] == 2
        # input, stem conv/activation/pool, 3 blocks of 2 convs + 2 activations + 1 concatenation, 2 pools,
        # 3 decoder levels of skip + block + upsampling, head concatenation and conv
        assert report["paper_preset_sizes"] is False
        assert report["layers_matched"] == 1 + 3 + 3 * 5 + 2 + 3 * 7 + 2
        card = json.loads((tmp_path / "narrow" / contracts.MODEL_CARD_FILENAME).read_text())
        assert card["crop_inference"]["crop_px"] == 160
        image = np.random.default_rng(1).standard_normal(contracts.TENSOR_SHAPE).astype(np.float32)
        np.testing.assert_allclose(_serving(tmp_path / "narrow", contracts.SERVING_SIGNATURE, image),
                                   _oracle(path, image), atol=PROBABILITY_TOLERANCE)

    def test_activation_spellings_of_keras2(self):
        assert ml4h_match.activation_name("Addons>mish") == "mish"
        assert ml4h_match.activation_name({"registered_name": "Addons>mish", "config": "mish"}) == "mish"
        assert ml4h_match.activation_name("relu") == "relu"


class TestCommand:
    def test_refusal_exits_2_naming_the_layer(self, tmp_path, capsys):
        path = write_standin(tmp_path / "relu.h5", activation="relu", with_optimizer=False)
        assert cli.main(["import-ml4h", "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
        assert "layer 'activation' (Activation) does not fit" in capsys.readouterr().err

    def test_a_non_empty_out_is_refused_without_overwrite(self, tmp_path, capsys):
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "mine.txt").write_text("keep")
        assert cli.main(["import-ml4h", "--weights", "x.h5", "--out", str(tmp_path / "o")]) == 2
        assert "is not empty: pass --overwrite" in capsys.readouterr().err
        with pytest.raises(ValueError, match="not an lvmass export, refusing to replace it"):
            ml4h_import.import_ml4h("x.h5", str(tmp_path / "o"), overwrite=True)
        assert (tmp_path / "o" / "mine.txt").read_text() == "keep"

    def test_crop_px_must_be_aligned(self, tmp_path):
        for bad in (100, 64, 264):
            message = rf"crop_px must be a multiple of 8 above 64 and at most 256\. Received: {bad}"
            with pytest.raises(ValueError, match=message):
                ml4h_import.import_ml4h("x.h5", str(tmp_path / "o"), crop_px=bad)

    def test_parser_follows_the_cli_conventions(self):
        parser = ml4h_import.build_parser()
        assert parser.prog == "lvmass import-ml4h"
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and all("-" not in s[2:] for s in action.option_strings if s[:2] == "--")
        args = parser.parse_args(["--weights", "w.h5", "--out", "o", "--any-size", "--crop-px", "160"])
        assert args.any_size and args.crop_px == 160 and args.log_level == "INFO"

"""trainer.task: Vertex environment, cluster parsing, splits, augmentation and one end-to-end run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from lvmass.core import contracts  # noqa: E402
from tests.phantom import toy_example, write_toy_tfrecords  # noqa: E402
from trainer import augmentation, data, task  # noqa: E402
from trainer.export import load_card  # noqa: E402

EIDS = list(range(1000001, 1000013))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfrecords")
    write_toy_tfrecords(str(folder / "part-00000.tfrecord"), EIDS[:6])
    write_toy_tfrecords(str(folder / "part-00001.tfrecord"), EIDS[6:])
    return str(folder / "part-*.tfrecord")


class TestVertexEnvironment:
    def test_aip_variables_override_job_dir(self):
        env = {"AIP_MODEL_DIR": "gs://b/model", "AIP_CHECKPOINT_DIR": "gs://b/ckpt",
               "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb"}
        paths = task.resolve_paths("/local/job", env)
        assert (paths.model_dir, paths.checkpoint_dir, paths.tensorboard_dir) == env_values(env)
        assert paths.log_dir == "/local/job"

    def test_job_dir_defaults(self):
        paths = task.resolve_paths("/job", {})
        assert paths == task.RunPaths("/job/model", "/job/checkpoints", "/job/logs", "/job")

    def test_no_output_directory(self):
        with pytest.raises(ValueError, match="pass --job_dir or set AIP_MODEL_DIR"):
            task.resolve_paths(None, {})

    def test_tf_config_is_parsed(self):
        tf_config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                     "task": {"type": "worker", "index": 1}}
        parsed = task.cluster_config({"TF_CONFIG": json.dumps(tf_config)})
        assert parsed == tf_config
        assert task.strategy_kind(parsed, n_gpus=0) == "multi_worker"
        assert not task.is_chief(parsed)

    def test_vertex_cluster_spec_becomes_tf_config(self):
        spec = {"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1"]},
                "task": {"type": "workerpool0", "index": 0, "trial": ""}, "job": "{}"}
        parsed = task.cluster_config({"CLUSTER_SPEC": json.dumps(spec)})
        assert parsed == {"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                          "task": {"type": "chief", "index": 0}}
        assert task.is_chief(parsed)
        assert task.strategy_kind(parsed, n_gpus=1) == "multi_worker"

    def test_single_machine_strategies(self):
        assert task.cluster_config({}) is None
        assert task.strategy_kind(None, n_gpus=4) == "mirrored"
        assert task.strategy_kind(None, n_gpus=1) == "default"
        single = {"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}
        assert task.strategy_kind(single, n_gpus=0) == "default"

    def test_bad_tf_config(self):
        with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
            task.cluster_config({"TF_CONFIG": "{cluster"})
        with pytest.raises(ValueError, match="CLUSTER_SPEC must be a JSON object with a 'cluster'"):
            task.cluster_config({"CLUSTER_SPEC": "[]"})


def env_values(env):
    return env["AIP_MODEL_DIR"], env["AIP_CHECKPOINT_DIR"], env["AIP_TENSORBOARD_LOG_DIR"]


class TestSplits:
    def test_hash_split_is_deterministic_disjoint_and_complete(self, records):
        files = data.list_files(records)
        spec = data.SplitSpec(validation_fraction=0.25, test_fraction=0.25)
        seg = contracts.MODEL_KIND_SEG
        splits = {s: data.eids_in(files, kind=seg, split=s, spec=spec) for s in data.SPLITS}
        assert sorted(e for eids in splits.values() for e in eids) == EIDS
        assert all(splits[s] for s in data.SPLITS)
        assert {e: data.split_of(e, spec) for e in EIDS} == {e: s for s, es in splits.items() for e in es}
        reversed_files = data.eids_in(files[::-1], kind=contracts.MODEL_KIND_SEG, split="train", spec=spec)
        assert sorted(reversed_files) == sorted(splits["train"])

    def test_holdout_file_is_the_test_split(self, records, tmp_path):
        holdout = tmp_path / "holdout.csv"
        holdout.write_text(f"eid\n{EIDS[0]}\n{EIDS[5]}\n")
        spec = data.SplitSpec(0.2, 0.0, tuple(data.read_holdout_eids(str(holdout))))
        files = data.list_files(records)
        test = data.eids_in(files, kind=contracts.MODEL_KIND_REG, split="test", spec=spec)
        assert test == [EIDS[0], EIDS[5]]
        train = data.eids_in(files, kind=contracts.MODEL_KIND_REG, split="train", spec=spec)
        assert EIDS[0] not in train and EIDS[5] not in train

    def test_bad_holdout_and_patterns(self, tmp_path):
        bad = tmp_path / "holdout.txt"
        bad.write_text("1\nx2\n")
        with pytest.raises(ValueError, match=r"holdout.txt: line 2: not an eid: 'x2'"):
            data.read_holdout_eids(str(bad))
        with pytest.raises(FileNotFoundError, match=r"nothing-here/\*\.tfrecord: no TFRecord file matches"):
            data.list_files(str(tmp_path / "nothing-here/*.tfrecord"))


class TestAugmentation:
    def test_seeded_contract_preserving_and_labels_follow(self):
        example = toy_example(3)
        image, labels = tf.constant(example.image), tf.constant(example.labels)
        config = data.AugmentConfig(slice_dropout_prob=0.0)
        a_img, a_lab = data.augment(image, labels, tf.constant([1, 2]), config)
        b_img, b_lab = data.augment(image, labels, tf.constant([1, 2]), config)
        c_img, _ = data.augment(image, labels, tf.constant([1, 3]), config)
        np.testing.assert_array_equal(a_img.numpy(), b_img.numpy())
        np.testing.assert_array_equal(a_lab.numpy(), b_lab.numpy())
        assert not np.array_equal(a_img.numpy(), c_img.numpy())
        out = a_img.numpy()
        acquired = out != 0
        assert out.shape == contracts.TENSOR_SHAPE and a_lab.shape == contracts.LABEL_VOLUME_SHAPE
        assert abs(out[acquired].mean()) < 1e-3 and abs(out[acquired].std() - 1) < 1e-2  # z-score contract
        assert not out[:, :, example.n_slices:].any()  # padding slices stay 0
        assert set(np.unique(a_lab.numpy())) <= {0, 1, 2}
        # labels move with the anatomy: the bright blood pool stays under the cavity label
        cavity = a_lab.numpy() == contracts.LV_CAVITY
        myo = a_lab.numpy() == contracts.MYOCARDIUM
        assert out[..., 0][cavity].mean() > out[..., 0][myo].mean() + 0.5
        ratio = myo.sum() / (example.labels == contracts.MYOCARDIUM).sum()
        assert 0.85**2 * 0.9 < ratio < 1.2**2 * 1.1  # scaled by the zoom, nothing lost or invented

    def test_bad_ranges(self):
        with pytest.raises(ValueError, match=r"gamma_range must be \(low, high\).*Received: \(2.0, 1.0\)"):
            data.AugmentConfig(gamma_range=(2.0, 1.0))

    def test_tf_data_applies_the_one_numpy_definition(self):
        """``data.augment`` is ``trainer.augmentation`` (what ``trainer.portable`` calls), seed for seed."""
        example = toy_example(4)
        image, labels = tf.constant(example.image), tf.constant(example.labels)
        config = data.AugmentConfig()
        seed = [7, 2]
        crop, crop_labels = data.augment(image, labels, tf.constant(seed), config, crop_px=64)
        expected = augmentation.augment_crop(example.image[..., 0], example.labels,
                                             augmentation.example_rng(seed), config, crop_px=64)
        np.testing.assert_array_equal(crop.numpy()[..., 0], expected[0])
        np.testing.assert_array_equal(crop_labels.numpy(), expected[1])
        volume, volume_labels = data.augment(image, labels, tf.constant(seed), config)
        expected = augmentation.augment_volume(example.image[..., 0], example.labels,
                                               augmentation.example_rng(seed), config)
        np.testing.assert_array_equal(volume.numpy()[..., 0], expected[0])
        np.testing.assert_array_equal(volume_labels.numpy(), expected[1])
        reg_image, no_labels = data.augment(image, None, tf.constant(seed), config, slice_dropout=False)
        expected = augmentation.augment_volume(example.image[..., 0], None, augmentation.example_rng(seed),
                                               config, slice_dropout=False)
        np.testing.assert_array_equal(reg_image.numpy()[..., 0], expected[0])
        assert no_labels is None
        with pytest.raises(ValueError, match="crop_px needs labels"):
            data.augment(image, None, tf.constant(seed), config, crop_px=64)
        with pytest.raises(ValueError, match="augment needs an AugmentConfig unless it only crops"):
            data.augment(image, labels, tf.constant(seed), None)

    def test_training_batches_seed_each_example_by_run_seed_and_index(self, tmp_path):
        path = str(tmp_path / "one.tfrecord")
        made = write_toy_tfrecords(path, EIDS[:3])
        config = data.AugmentConfig()
        ds = data.make_dataset([path], kind=contracts.MODEL_KIND_SEG, split="train",
                               spec=data.SplitSpec(0.0, 0.0), batch_size=1, training=True, seed=5,
                               augment_config=config, crop_px=48, shuffle_buffer=1)
        for index, (inputs, target) in enumerate(ds.take(3)):
            example = made[index]  # one file and a shuffle buffer of one keep the file order
            rng = augmentation.example_rng([5, index])
            crop, crop_labels = augmentation.augment_crop(example.image[..., 0], example.labels, rng, config,
                                                          crop_px=48)
            np.testing.assert_array_equal(inputs[contracts.SIGNATURE_INPUT_IMAGE].numpy()[0, ..., 0], crop)
            np.testing.assert_array_equal(target.numpy()[0], crop_labels)


class TestEndToEnd:
    def test_main_trains_evaluates_and_exports_where_vertex_says(self, records, tmp_path, monkeypatch):
        for name in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR"):
            monkeypatch.setenv(name, str(tmp_path / name.lower()))
        for name in ("TF_CONFIG", "CLUSTER_SPEC"):
            monkeypatch.delenv(name, raising=False)
        argv = ["--model", "reg", "--train_data", records, "--job_dir", str(tmp_path / "job"),
                "--preset", "cpu", "--stem_filters", "2", "--blocks", "4", "--convs_per_block", "1",
                "--epochs", "2", "--steps_per_epoch", "2", "--batch_size", "2",
                "--validation_fraction", "0.25", "--test_fraction", "0.25",
                "--synthetic", "--seed", "3", "--verbose", "0"]
        assert task.main(argv) == 0
        model_dir = tmp_path / "aip_model_dir"
        assert (model_dir / "saved_model.pb").exists() and (model_dir / "model.keras").exists()
        card = load_card(str(model_dir))
        assert card.kind == contracts.MODEL_KIND_REG and card.trained_on_synthetic_data
        assert card.training_data["seed"] == 3 and sum(card.training_data["examples"].values()) == len(EIDS)
        assert card.hyperparameters["architecture"]["conv_blocks"] == [4]
        assert card.metrics["test"]["vs_manual_mass"]["n"] == card.training_data["examples"]["test"]
        assert (tmp_path / "aip_checkpoint_dir" / "best.weights.h5").exists()
        assert list((tmp_path / "aip_tensorboard_log_dir").rglob("events.out.tfevents.*"))
        with open(tmp_path / "job" / "training_log.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["epoch"] for r in rows] == ["0", "1"] and "val_loss" in rows[0]

    def test_main_reports_bad_input(self, tmp_path, capsys):
        pattern = str(tmp_path / "none-*.tfrecord")
        argv = ["--model", "seg", "--train_data", pattern, "--job_dir", str(tmp_path)]
        assert task.main(argv) == 1
        assert "none-*.tfrecord: no TFRecord file matches" in capsys.readouterr().err

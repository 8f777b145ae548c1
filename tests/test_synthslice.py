"""The default models' trainer: a stream that resumes where it stopped, checkpoints that hold a whole run,
the volume twin, and an export the pipeline's handler runs on every slice of a long stack."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from lvmass.core import contracts
from trainer.slice_stream import ExampleStream, StreamConfig

TINY_STREAM = StreamConfig(seed=5, crop_px=32, batch_size=2, uses=2)


def _batches(stream: ExampleStream, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [stream.next_batch() for _ in range(n)]


class TestStream:
    def test_a_resumed_stream_gives_the_same_batches(self):
        """Batch b is a function of (seed, b): a stream started at step 5 gives what a stream from 0 gave
        at steps 5-7 (block size 4 batches, so the resume starts inside a block)."""
        with ExampleStream(TINY_STREAM, workers=0) as whole:
            expected = _batches(whole, 8)[5:]
        with ExampleStream(TINY_STREAM, start_step=5, workers=0) as resumed:
            got = _batches(resumed, 3)
        for (xe, ye, ae), (xg, yg, ag) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(xe, xg)
            np.testing.assert_array_equal(ye, yg)
            np.testing.assert_array_equal(ae, ag)

    def test_worker_processes_give_the_same_batches(self):
        with ExampleStream(TINY_STREAM, workers=0) as local:
            expected = _batches(local, 4)
        with ExampleStream(TINY_STREAM, workers=2) as spawned:
            got = _batches(spawned, 4)
        for (xe, _, ae), (xg, _, ag) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(xe, xg)
            np.testing.assert_array_equal(ae, ag)

    def test_batch_shapes(self):
        with ExampleStream(TINY_STREAM, workers=0) as stream:
            images, labels, areas = stream.next_batch()
        assert images.shape == (2, 32, 32, 1) and images.dtype == np.float32
        assert labels.shape == (2, 32, 32) and labels.dtype == np.uint8
        assert areas.shape == (2,) and (areas >= 0).all()


@pytest.fixture(scope="module")
def tiny_config():
    from trainer.synthslice import FitConfig

    return FitConfig(
        task="both",
        base_filters=4,
        levels=2,
        reg_base_filters=4,
        reg_levels=2,
        steps=6,
        warmup_steps=2,
        stream=TINY_STREAM,
    )


class TestCheckpoints:
    def test_interrupted_run_equals_an_uninterrupted_one(self, tmp_path, tiny_config):
        """4 steps, stop, 2 more from the checkpoint: the same weights and optimizer states of both models as
        6 steps in one go (the same batches, the same Adam moments; one CPU thread is deterministic)."""
        from trainer.synthslice import fit, read_checkpoint

        fit(tmp_path / "whole", tiny_config, workers=0, checkpoint_every=2, validation_samples=2)
        fit(
            tmp_path / "cut", tiny_config, workers=0, checkpoint_every=2, validation_samples=2, stop_at_step=4
        )
        state = fit(tmp_path / "cut", tiny_config, workers=0, checkpoint_every=2, validation_samples=2)
        assert state.step == 6
        whole = read_checkpoint(tmp_path / "whole" / "checkpoint.npz")
        cut = read_checkpoint(tmp_path / "cut" / "checkpoint.npz")
        assert whole.state.step == cut.state.step == 6
        assert len(cut.state.invocations) == 2
        from lvmass.synth.slice_image import EXPERTS_MAX_WALL_FRACTION as CAP

        assert [i["experts_max_wall_fraction"] for i in cut.state.invocations] == [CAP, CAP]
        for name in ("seg", "reg"):
            for a, b in zip(
                whole.weights[name] + whole.optimizer[name],
                cut.weights[name] + cut.optimizer[name],
                strict=True,
            ):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert [row["step"] for row in cut.state.history] == [2, 4, 6]

    def test_init_from_another_run(self, tmp_path, tiny_config):
        """A new run started from another's weights holds exactly them, for both models."""
        from trainer.synthslice import fit, read_checkpoint

        short = dataclasses.replace(tiny_config, steps=2)
        fit(tmp_path / "first", short, workers=0, checkpoint_every=2, validation_samples=2)
        first = read_checkpoint(tmp_path / "first" / "checkpoint.npz")
        state = fit(tmp_path / "second", short, workers=0, checkpoint_every=2, validation_samples=2,
                    init_from=str(tmp_path / "first"), stop_at_step=0)
        second = read_checkpoint(tmp_path / "second" / "checkpoint.npz")
        assert state.step == 0
        for name in ("seg", "reg"):
            for a, b in zip(first.weights[name], second.weights[name], strict=True):
                np.testing.assert_array_equal(a, b)


    def test_averaged_snapshots_hold_the_mean_weights_and_export(self, tmp_path, tiny_config):
        """Two snapshots a run kept, 2 steps apart: the averaged checkpoint holds their mean weights for both
        models, scores the mean and the last snapshot on held-out synthetic slices, and its card names the
        averaged steps; a run with other shapes is refused by name."""
        from trainer.synthslice import average_checkpoints, fit, model_card, read_checkpoint

        short = dataclasses.replace(tiny_config, steps=4)
        fit(tmp_path / "run", short, workers=0, checkpoint_every=2, validation_samples=2, snapshot_every=2)
        snapshots = [tmp_path / "run" / "snapshots" / f"step_{k}.npz" for k in (2, 4)]
        averaged = average_checkpoints(snapshots, tmp_path / "mean.npz", validation_samples=2)
        early, late = (read_checkpoint(p) for p in snapshots)
        stored = read_checkpoint(tmp_path / "mean.npz")
        for name in ("seg", "reg"):
            assert any(not np.array_equal(a, b) for a, b in zip(early.weights[name], late.weights[name],
                                                                  strict=True))
            for a, b, mean in zip(early.weights[name], late.weights[name], stored.weights[name], strict=True):
                np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6, atol=1e-7)
        row = stored.state.history[-1]
        assert row["averaged_steps"] == [2, 4] and stored.state.step == 4
        assert {"val_myocardium_dice", "last_val_myocardium_dice", "reg_val_area_mae_mm2"} <= set(row)
        assert averaged.state.history[-1] == row
        card = model_card(stored.config, stored.state, "seg", version="0")
        assert card.hyperparameters["weights_averaged_over_steps"] == [2, 4]
        assert card.training_data["experts_max_wall_fraction"] == 0.25  # as the run's pieces recorded it
        assert card.metrics["synthetic_validation"]["val_myocardium_dice"] == row["val_myocardium_dice"]
        other = dataclasses.replace(short, base_filters=8, steps=0)
        fit(tmp_path / "other", other, workers=0, checkpoint_every=2, validation_samples=2)
        with pytest.raises(ValueError, match="only snapshots of one run average"):
            average_checkpoints([tmp_path / "other" / "checkpoint.npz", snapshots[1]], tmp_path / "x.npz")

class TestVolumeTwin:
    def test_twin_equals_the_slice_model_on_every_slice(self):
        import keras

        from trainer.slice_models import UNetConfig, build_slice_unet, volume_twin

        model = build_slice_unet(UNetConfig(base_filters=4, levels=3))
        rng = np.random.default_rng(0)
        for layer in model.layers:  # batch normalisation with non-trivial statistics, folded by the twin
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.gamma.shape[0]
                layer.set_weights(
                    [
                        rng.uniform(0.5, 1.5, n),
                        rng.normal(0, 0.1, n),
                        rng.normal(0, 0.1, n),
                        rng.uniform(0.5, 1.5, n),
                    ]
                )
        twin = volume_twin(model, levels=3)
        volume = rng.standard_normal((1, 64, 48, 5, 1)).astype(np.float32)
        by_twin = twin({contracts.SIGNATURE_INPUT_IMAGE: volume}).numpy()[0]
        by_slice = model(np.moveaxis(volume[0], 2, 0)).numpy()
        np.testing.assert_allclose(np.moveaxis(by_twin, 2, 0), by_slice, atol=2e-6)

    def test_mass_head_sums_density_times_voxel(self):
        from trainer.slice_models import CounterConfig, build_area_counter, mass_model, volume_twin

        counter = build_area_counter(CounterConfig(base_filters=4, levels=2, input_pool=2))
        net = mass_model(volume_twin(counter, levels=2))
        volume = np.random.default_rng(1).standard_normal((1, 256, 256, 3, 1)).astype(np.float32)
        spacing = np.float32([[1.5, 1.5, 8.0]])
        mass = float(net({"image": volume, "spacing_mm": spacing}).numpy().ravel()[0])
        density = counter(np.moveaxis(volume[0], 2, 0)).numpy()
        assert mass == pytest.approx(density.sum() * 1.5 * 1.5 * 8.0 / 1000.0 * 1.05, rel=1e-5)


def test_mass_window_counts_where_the_myocardium_is():
    """ML4H_reg's window: a ring of density on every slice and a speck far away; only the window holding
    the ring counts (its exact sum), wherever the ring is."""
    from trainer.slice_models import DensityToMass

    density = np.zeros((1, 64, 64, 3, 1), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    ring = ((np.hypot(yy - 40, xx - 22) > 5) & (np.hypot(yy - 40, xx - 22) < 8)).astype(np.float32)
    density[0, :, :, :, 0] = ring[:, :, None] * 0.5
    density[0, 3, 60, 1, 0] = 7.0  # far away, on one slice
    spacing = np.float32([[2.0, 2.0, 10.0]])
    mass = float(np.asarray(DensityToMass(window_px=24)(density, spacing)).ravel()[0])
    assert mass == pytest.approx(ring.sum() * 0.5 * 3 * 2.0 * 2.0 * 10.0 / 1000.0 * 1.05, rel=1e-5)
    everything = float(np.asarray(DensityToMass()(density, spacing)).ravel()[0])
    assert everything == pytest.approx(mass + 7.0 * 0.04 * 1.05, rel=1e-5)


def test_export_runs_in_the_handler_on_every_slice(tmp_path, tiny_config):
    """An export takes a 15-slice stack (more than the paper's 13 slots) and labels every slice, through the
    pipeline's own handler and crop policy; the card says per-slice, true anatomy, its grid and range."""
    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core.model_input import ModelInput
    from lvmass.storage.models import read_model_card
    from trainer.synthslice import export, fit

    fit(
        tmp_path / "run",
        dataclasses.replace(tiny_config, steps=2),
        workers=0,
        checkpoint_every=2,
        validation_samples=2,
    )
    out = export(tmp_path / "run", tmp_path / "export")
    card = read_model_card(str(out), expected_kind=contracts.MODEL_KIND_SEG)
    assert card.per_slice and card.label_source == "true_anatomy"
    assert card.pixel_spacing_mm == TINY_STREAM.grid_mm
    assert card.crop_inference.window_signature == contracts.SEG_WINDOW_SIGNATURE
    image = np.random.default_rng(2).standard_normal((256, 256, 15, 1)).astype(np.float32)
    example = ModelInput(image=image, spacing_mm=np.float32([1.5, 1.5, 8.0]))
    whole = SavedModelHandler(str(out), kind=contracts.MODEL_KIND_SEG, crop_policy=None)
    [full] = whole.run_inference([example], whole.load_model())
    assert full.inference.shape == (256, 256, 15)
    cropped = SavedModelHandler(str(out), kind=contracts.MODEL_KIND_SEG)
    [result] = cropped.run_inference([example], cropped.load_model())
    assert result.inference.shape == (256, 256, 15)


def test_a_signal_stops_a_run_with_a_checkpoint_of_its_last_step(tmp_path):
    """SIGTERM (a machine taken back) mid-run: the run writes its checkpoint at the step it reached, not at
    the last multiple of --checkpoint_every, and exits cleanly."""
    import signal
    import subprocess
    import time

    from trainer.synthslice import read_checkpoint

    command = [sys.executable, "-m", "trainer.synthslice", "fit", "--run_dir", str(tmp_path / "run"),
               "--task", "seg", "--steps", "100000", "--base_filters", "4", "--levels", "2",
               "--crop_px", "32",
               "--batch_size", "2", "--workers", "0", "--checkpoint_every", "1000", "--validation_samples",
               "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "training_log.csv"
    deadline = time.monotonic() + 120
    while not (tmp_path / "run").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(8)  # some steps
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-2000:]
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert 0 < checkpoint.state.step < 1000 and log.exists()
    assert checkpoint.state.history[-1]["step"] == checkpoint.state.step

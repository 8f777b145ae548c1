"""``--mode tensorize``: the same decode, written as TFRecords the trainer parses with the one spec."""

from __future__ import annotations

import io

import numpy as np
import pytest

from beam_pipeline import contracts
from beam_pipeline.decode import decode_participant_zip
from beam_pipeline.overlay import inlinevf_labels
from beam_pipeline.pipeline import run
from beam_pipeline.tensor import build_image_tensor, build_label_volume
from beam_pipeline.tfrecord import parse_example, record_dataset
from tests.dicom_factory import ukbb_participant_zip

pytestmark = pytest.mark.slow


def test_tensorize_writes_parseable_examples(tmp_path):

    inputs = tmp_path / "in"
    inputs.mkdir()
    zips = {
        1000001: ukbb_participant_zip(1000001, n_slices=8, seed=1),
        1000002: ukbb_participant_zip(1000002, n_slices=7, seed=2, with_inlinevf=False),
    }
    for z in zips.values():
        (inputs / z.name).write_bytes(z.data)
    (inputs / "1000003_20209_2_0.zip").write_bytes(b"not a zip")
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("eid,sex,height_cm,weight_kg,manual_lv_mass_g\n1000001,1,180,80,101.5\n1000002,0,160,60,\n")

    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--phenotypes={pheno}", f"--output={out}", "--mode=tensorize",
                   "--runner=FnApiRunner"])
    assert (summary["inputs_matched"], summary["participants_written"], summary["participants_failed"]) == (
        3, 2, 1)
    assert summary["reconciled"] and summary["mode"] == "tensorize"

    files = sorted((out / "tfrecords").glob("*.tfrecord.gz"))
    assert files
    dataset = record_dataset([str(f) for f in files]).map(parse_example)
    examples = {int(e[contracts.FEATURE_EID]): e for e in dataset.as_numpy_iterator()}
    assert sorted(examples) == [1000001, 1000002]

    for eid, z in zips.items():
        example = examples[eid]
        study = decode_participant_zip(io.BytesIO(z.data), str(inputs / z.name))
        tensor = build_image_tensor(study)
        assert example[contracts.FEATURE_IMAGE].shape == contracts.TENSOR_SHAPE
        assert example[contracts.FEATURE_LABELS].shape == contracts.LABEL_VOLUME_SHAPE
        np.testing.assert_array_equal(example[contracts.FEATURE_IMAGE], tensor.image)
        np.testing.assert_allclose(example[contracts.FEATURE_SPACING], tensor.spacing_mm)
        assert example[contracts.FEATURE_INSTANCE] == 2
        assert example[contracts.FEATURE_N_SLICES] == z.n_slices
        if study.has_inlinevf:
            expected = build_label_volume(inlinevf_labels(study), slice_start=tensor.slice_start)
            assert example[contracts.FEATURE_HAS_LABELS] == 1
            np.testing.assert_array_equal(example[contracts.FEATURE_LABELS], expected)
            assert (example[contracts.FEATURE_LABELS] == contracts.MYOCARDIUM).sum() > 0
        else:
            assert example[contracts.FEATURE_HAS_LABELS] == 0

    male, female = examples[1000001], examples[1000002]
    assert (male[contracts.FEATURE_SEX], female[contracts.FEATURE_SEX]) == (1, 0)
    assert male[contracts.FEATURE_HAS_MANUAL_MASS] == 1
    assert male[contracts.FEATURE_MANUAL_MASS] == pytest.approx(101.5)
    assert female[contracts.FEATURE_HAS_MANUAL_MASS] == 0 and np.isnan(female[contracts.FEATURE_MANUAL_MASS])


def test_n_slices_is_the_slices_in_the_tensor():
    """The TFRecord's n_slices counts the slices placed in the 13-slot tensor (what the trainer masks
    by), not the acquired ones: 15 acquired -> 13."""
    from beam_pipeline.measure import participant_from_study, tfrecord_bytes
    from beam_pipeline.phenotypes import Phenotype

    z = ukbb_participant_zip(1000015, n_slices=15, n_phases=2, seed=15)
    study = decode_participant_zip(io.BytesIO(z.data), z.name)
    participant = participant_from_study(study, with_inlinevf=True)
    assert (participant.n_slices, participant.n_slices_used) == (15, contracts.TENSOR_SLICES)
    assert contracts.QC_TOO_MANY_SLICES_TRUNCATED in participant.qc_flags
    example = parse_example(tfrecord_bytes(participant, Phenotype(eid=1000015, sex="male")))
    assert int(example[contracts.FEATURE_N_SLICES]) == contracts.TENSOR_SLICES
    assert int(example[contracts.FEATURE_HAS_LABELS]) == 1

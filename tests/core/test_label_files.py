"""lvmass.core.label_files: where --save_labels puts a participant's files, for writers and readers alike."""

from __future__ import annotations

from lvmass.core import label_files


def test_label_paths_by_method_participant_and_visit():
    assert label_files.label_path("gs://b/out/", "ml4h_seg", "1000123", 2) == (
        "gs://b/out/labels/method=ml4h_seg/1000123_2.npz")
    assert label_files.label_path("out", "inlinevf", "SCD0000501", 0, suffix=label_files.NIFTI_SUFFIX) == (
        "out/labels/method=inlinevf/SCD0000501_0.nii.gz")


def test_the_ed_image_lies_beside_the_labels():
    assert label_files.ed_image_path("out\\", "1000123", 2) == "out/labels/image/1000123_2.nii.gz"
    assert label_files.file_name("7", 3, ".npz") == "7_3.npz"

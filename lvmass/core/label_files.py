"""Where ``--save_labels`` puts a participant's files; the one place writers and readers take the names from.

==========================================================  ==============================================
``OUTPUT/labels/method=<m>/<participant_id>_<instance>.npz``     the label volume in the tensor layout, with
                                                                 what maps it back (the analysis' Dice)
``OUTPUT/labels/method=<m>/<participant_id>_<instance>.nii.gz``  the same labels on the acquisition grid, with
                                                                 the acquisition's affine (ITK-SNAP, Slicer)
``OUTPUT/labels/image/<participant_id>_<instance>.nii.gz``       the ED image on that grid, beside them
==========================================================  ==============================================

``participant_id`` is the eid for UK Biobank inputs (``lvmass.core.identity``). Paths are joined with
``/``, right for local paths and ``gs://`` alike. Pure: no Beam.
"""

from __future__ import annotations

from lvmass.core.schema import LABELS_DIRNAME

ED_IMAGE_DIRNAME = "image"
NPZ_SUFFIX = ".npz"
NIFTI_SUFFIX = ".nii.gz"


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/\\"), *parts])


def file_name(participant_id: str, instance: int, suffix: str) -> str:
    """``<participant_id>_<instance><suffix>``."""
    return f"{participant_id}_{int(instance)}{suffix}"


def label_path(output: str, method: str, participant_id: str, instance: int, *,
               suffix: str = NPZ_SUFFIX) -> str:
    """A method's saved labels: ``OUTPUT/labels/method=<m>/<participant_id>_<instance><suffix>``."""
    return _join(output, LABELS_DIRNAME, f"method={method}", file_name(participant_id, instance, suffix))


def ed_image_path(output: str, participant_id: str, instance: int) -> str:
    """The ED image beside the labels: ``OUTPUT/labels/image/<participant_id>_<instance>.nii.gz``."""
    return _join(output, LABELS_DIRNAME, ED_IMAGE_DIRNAME, file_name(participant_id, instance, NIFTI_SUFFIX))

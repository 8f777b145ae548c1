"""The files ``--save_labels`` writes (names from ``lvmass.core.label_files``), through
:mod:`lvmass.storage.filesystems`: a method's label volume in the tensor layout (``.npz``, for Dice) and on
the acquisition grid (``.nii.gz``), and the ED image they open over."""

from __future__ import annotations

import logging

import numpy as np

from lvmass.core import label_files
from lvmass.core.measure import ParticipantTensor, acquisition_label_volume, label_volume_npz
from lvmass.core.nifti import image_volume, nifti_bytes
from lvmass.core.study import DecodedStudy
from lvmass.storage import filesystems

logger = logging.getLogger(__name__)


def save_label_volume(output: str, method: str, participant: ParticipantTensor, labels: np.ndarray, *,
                      native_labels: np.ndarray | None = None) -> str:
    """Write ``labels`` (tensor layout) as ``measure.label_volume_npz`` encodes them and, beside them, the
    same labels on the acquisition grid as NIfTI (``native_labels`` when given: labels already on the
    acquired slices, InlineVF's); returns the ``.npz`` path
    (``OUTPUT/labels/method=<m>/<participant_id>_<instance>.npz``, the eid for UK Biobank). A study whose
    slices differ in size has no acquisition grid: its NIfTI file is left out and logged."""
    path = label_files.label_path(output, method, participant.participant_id, participant.instance)
    filesystems.write_bytes(path, label_volume_npz(participant, labels))
    if participant.acquisition is None:
        logger.warning("%s: no NIfTI labels written (slices of different sizes have no one grid)",
                       participant.source_uri)
        return path
    on_grid = acquisition_label_volume(participant, labels if native_labels is None else native_labels,
                                       native=native_labels is not None)
    nifti_path = label_files.label_path(output, method, participant.participant_id, participant.instance,
                                        suffix=label_files.NIFTI_SUFFIX)
    description = f"lvmass {method} ED labels: 1 LV cavity, 2 myocardium"
    filesystems.write_bytes(nifti_path, nifti_bytes(on_grid, participant.acquisition, labels=True,
                                                    description=description))
    return path


def save_ed_image(output: str, participant: ParticipantTensor, study: DecodedStudy) -> str | None:
    """Write the study's ED slices as NIfTI on the acquisition grid (``label_files.ed_image_path``), the
    image the saved labels open over; returns the path (None without an acquisition grid)."""
    if participant.acquisition is None:
        return None
    path = label_files.ed_image_path(output, participant.participant_id, participant.instance)
    volume = image_volume(study.images, participant.acquisition)
    filesystems.write_bytes(path, nifti_bytes(volume, participant.acquisition, description="lvmass ED image"))
    return path

"""What the tests of ML4H_seg's crop and window (``test_inference_crop``, ``test_inference_window``) share: a
drawn heart for the band segmenters, a model whose signature calls are recorded, one participant segmented
through the handler, and a participant tensor decoded with the pipeline's own functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from beam_pipeline.inference import LoadedModel, SavedModelHandler
from lvmass.core import contracts
from lvmass.core.model_input import ModelInput

GRID = contracts.LABEL_VOLUME_SHAPE[:2]
LOW, HIGH = 0.5, 1.5  # the band segmenters' thresholds: below LOW background, from HIGH myocardium
SPACING_MM = np.float32([1.86, 1.86, 10.0])
REAL_STUDY = Path(__file__).parent / "data" / "real_cmr" / "SCD0000501.zip"

Calls = list[tuple[str, tuple[int, ...]]]


def heart_image(centre: tuple[int, int], *, radius: int = 20, image: np.ndarray | None = None) -> np.ndarray:
    """A ring of 'myocardium' (2.0) around 'cavity' (1.0) in slices 1-9, on background 0."""
    image = np.zeros(contracts.TENSOR_SHAPE, np.float32) if image is None else image
    rows, cols = np.ogrid[:256, :256]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    image[distance <= radius, 1:10, 0] = 2.0
    image[distance <= radius - 6, 1:10, 0] = 1.0
    return image


def count_calls(model: LoadedModel) -> tuple[LoadedModel, Calls]:
    """The model with each signature call recorded as (``full`` | ``crop`` | ``window``, (rows, cols) of
    its input), in order."""
    calls: Calls = []

    def counted(name: str, fn: Any) -> Any:
        if fn is None:
            return None

        def call(**inputs):
            calls.append((name, tuple(inputs[contracts.SIGNATURE_INPUT_IMAGE].shape[1:3])))
            return fn(**inputs)
        return call

    return dataclasses.replace(model, serve=counted("full", model.serve),
                               serve_crop=counted("crop", model.serve_crop),
                               serve_window=counted("window", model.serve_window)), calls


def segment(model_dir: Path, image: np.ndarray, *, inlinevf_labels: np.ndarray | None = None,
            **handler_args: Any) -> tuple[np.ndarray, Calls]:
    """One participant's labels through the ML4H_seg handler, and the signature calls it made; with
    ``inlinevf_labels`` the participant carries outlines, as the pipeline's do."""
    handler = SavedModelHandler(str(model_dir), kind=contracts.MODEL_KIND_SEG, **handler_args)
    model, calls = count_calls(handler.load_model())
    example: Any = ModelInput(image, SPACING_MM)
    if inlinevf_labels is not None:
        example = dataclasses.make_dataclass("Participant", ["image", "spacing_mm", "inlinevf_labels"])(
            image, SPACING_MM, inlinevf_labels)
    [result] = handler.run_inference([example], model)
    return result.inference, calls


def participant_tensor(path: Path, *, with_inlinevf: bool):
    """The pipeline's participant tensor of a zip, on the bundled ML4H_seg's grid."""
    from lvmass.core.decode import decode_participant_zip
    from lvmass.core.measure import participant_from_study
    from lvmass.storage.models import bundled_model_dir, read_model_card

    grid_mm = read_model_card(bundled_model_dir(contracts.MODEL_KIND_SEG, "paper")).pixel_spacing_mm
    with path.open("rb") as handle:
        study = decode_participant_zip(handle, path.name, with_inlinevf=with_inlinevf)
    return participant_from_study(study, with_inlinevf=with_inlinevf, grid_pixel_mm=grid_mm)

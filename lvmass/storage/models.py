"""Where models are found and their cards read: a SavedModel folder (local, ``gs://``), or a model shipped
inside the package, named ``bundled:<name>`` (:func:`resolve_model_dir`).

A model shipped with the package (the trainer exports them to ``beam_pipeline/models/<name>/``, where they
stay) is named by the marker, never by an absolute path: the launcher's install path does not exist on
Dataflow workers, so the marker travels in the pipeline and each machine resolves it in its own
installation. The package ships two sets: the default models (any scanner; ``trainer.synthslice``) and the
paper's recipe (3-D, InlineVF outlines then centring; ``trainer.portable`` / ``trainer.task``), the latter
as ``<kind>_paper``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lvmass.core import contracts
from lvmass.core.model_card import MODEL_KINDS, ModelCard
from lvmass.storage import filesystems

BUNDLED_PREFIX = "bundled:"
MODELS_PACKAGE = "beam_pipeline"  # the package whose folder holds them (read as data, never imported)
MODELS_PACKAGE_DIR = "models"
BUNDLED_DEFAULT = "default"
BUNDLED_VARIANTS = ("default", "paper")


def bundled_models_root() -> Path:
    """Where this installation keeps its bundled models: the ``models`` folder of the package that ships
    them, found (not imported) where the code runs: launcher or worker."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {MODELS_PACKAGE!r} (it ships the bundled models) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / MODELS_PACKAGE_DIR


def bundled_model_name(kind: str, variant: str = BUNDLED_DEFAULT) -> str:
    """The bundled model folder of ``kind`` and ``variant``: ``ml4h_seg`` (the default models, trained on
    synthetic anatomy for any scanner) or ``ml4h_seg_paper`` (the paper's recipe on InlineVF outlines)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}. Received: {kind!r}")
    if variant not in BUNDLED_VARIANTS:
        raise ValueError(f"variant must be one of {BUNDLED_VARIANTS}. Received: {variant!r}")
    return kind if variant == BUNDLED_DEFAULT else f"{kind}_{variant}"


BUNDLED_MODELS = tuple(bundled_model_name(k, v) for v in ("default", "paper") for k in MODEL_KINDS)


def bundled_model_dir(kind: str, variant: str = BUNDLED_DEFAULT) -> str | None:
    """``"bundled:<name>"`` (:func:`bundled_model_name`) when this installation ships that SavedModel, else
    None.

    The marker, not a path, goes into the pipeline; :func:`resolve_model_dir` turns it into a folder
    on whichever machine loads the model.
    """
    name = bundled_model_name(kind, variant)
    return f"{BUNDLED_PREFIX}{name}" if (bundled_models_root() / name / "saved_model.pb").exists() else None


def resolve_model_dir(model_dir: str) -> str:
    """A model folder TensorFlow and Beam's FileSystems can open: ``bundled:<name>`` resolved in this
    installation's package, any other path (local, ``gs://``) unchanged."""
    if not model_dir.startswith(BUNDLED_PREFIX):
        return model_dir
    name = model_dir[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {model_dir!r}; expected one of "
                         f"{[BUNDLED_PREFIX + k for k in BUNDLED_MODELS]}")
    return str(bundled_models_root() / name)


def read_model_card(model_dir: str, *, expected_kind: str | None = None) -> ModelCard:
    """Read and check ``model_dir/model_card.json`` (``model_dir`` may be a ``bundled:<kind>`` marker).

    Raises ``FileNotFoundError`` naming the path when the card is missing and ``ValueError`` when its
    kind differs from ``expected_kind`` or its tensor contract/label map differ from the contracts.
    """
    card_path = filesystems.join(resolve_model_dir(model_dir), contracts.MODEL_CARD_FILENAME)
    if not filesystems.exists(card_path):
        raise FileNotFoundError(f"{card_path}: no model card next to the SavedModel")
    card = ModelCard.from_json(filesystems.read_text(card_path))
    if expected_kind is not None and card.kind != expected_kind:
        raise ValueError(f"{card_path}: model card kind is {card.kind!r}, expected {expected_kind!r}")
    try:
        card.check_compatible()
    except ValueError as exc:
        raise ValueError(f"{card_path}: {exc}") from exc
    return card

"""``lvmass synth``: a synthetic UK Biobank short-axis cohort with known ground truth.

``generate_cohort`` writes a cohort to disk; ``render_participant`` builds one participant in memory
(zip bytes, phenotype and truth rows, truth labels) for tests of special cases; ``participant_truth``
draws a participant's population, anatomy and disease truth without images. The names of the truth files
and truth.json entries are the truth-file contract, ``lvmass.core.truth``; the cohort's own folder
names are in ``lvmass.synth.layout``.

The public names are loaded on first use, so importing ``lvmass.synth.layout`` does not load the
generator (numpy, scipy, pydicom).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lvmass.synth.cohort import CohortPaths, draw_eids, generate_cohort, generate_population
    from lvmass.synth.config import SynthConfig
    from lvmass.synth.participant import ParticipantData, participant_truth, render_participant

_EXPORTS = {
    "CohortPaths": "lvmass.synth.cohort",
    "draw_eids": "lvmass.synth.cohort",
    "generate_cohort": "lvmass.synth.cohort",
    "generate_population": "lvmass.synth.cohort",
    "SynthConfig": "lvmass.synth.config",
    "ParticipantData": "lvmass.synth.participant",
    "participant_truth": "lvmass.synth.participant",
    "render_participant": "lvmass.synth.participant",
}

__all__ = [
    "CohortPaths",
    "ParticipantData",
    "SynthConfig",
    "draw_eids",
    "generate_cohort",
    "generate_population",
    "participant_truth",
    "render_participant",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

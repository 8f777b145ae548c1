"""``lvmass synth``: a synthetic UK Biobank short-axis cohort with known ground truth.

``generate_cohort`` writes a cohort to disk; ``render_participant`` builds one participant in memory
(zip bytes, phenotype and truth rows, truth labels) for tests of special cases.
"""

from lvmass.synth.cohort import CohortPaths, draw_eids, generate_cohort
from lvmass.synth.config import SynthConfig
from lvmass.synth.participant import ParticipantData, render_participant

__all__ = [
    "CohortPaths",
    "ParticipantData",
    "SynthConfig",
    "draw_eids",
    "generate_cohort",
    "render_participant",
]

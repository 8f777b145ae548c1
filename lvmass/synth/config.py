"""The generator's configuration (one frozen dataclass; every field is recorded in truth.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lvmass.synth.population import DEFAULT_DISEASES, DiseaseSpec

FIDELITIES = ("full", "lite")
LAYOUTS = ("ukbb", "single_series")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    ``fidelity``: ``full`` writes all 50 phases of every slice; ``lite`` only ``lite_phases`` (same
    structure: InstanceNumber = phase + 1, TriggerTime = phase x RR/50, ED first).
    ``appearance_scale`` widens every appearance spread (contrast, noise, bias, blur, field of view, heart
    position, misregistration); 1 is the default population, 0 a fixed look.
    ``layout``: ``ukbb`` (docs/ukbb_format.md) or ``single_series`` (all short-axis slices in one series,
    generic file names, no manifest, no InlineVF: another vendor's export).
    Probabilities of the real-world extras are per participant.
    """

    fidelity: str = "lite"
    appearance_scale: float = 1.0
    layout: str = "ukbb"
    instance: int = 2
    lite_phases: tuple[int, ...] = (0, 17)
    manual_mass_fraction: float = 0.15
    reader_noise_sd_g: float = 6.0
    inlinevf_failure_rate: float = 0.04
    inlinevf_epi_offset_mm: float = 1.7
    inlinevf_endo_offset_mm: float = 1.5
    inlinevf_offset_sd_mm: float = 0.4
    inlinevf_jitter_mm: float = 0.5
    lax_extras_fraction: float = 0.2
    vf_results_fraction: float = 0.3
    duplicate_slice_fraction: float = 0.05
    modality_column_fraction: float = 0.5
    spacing_between_slices_fraction: float = 0.5
    misregistration_mm: float = 1.2
    zip_compresslevel: int = 1
    diseases: tuple[DiseaseSpec, ...] = field(default=DEFAULT_DISEASES)

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise ValueError(f"fidelity must be one of {FIDELITIES}. Received {self.fidelity!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}. Received {self.layout!r}")
        if self.appearance_scale < 0:
            raise ValueError(f"appearance_scale must be >= 0. Received {self.appearance_scale}")
        if (
            not self.lite_phases
            or self.lite_phases[0] != 0
            or any(not 0 <= p < 50 for p in self.lite_phases)
            or list(self.lite_phases) != sorted(set(self.lite_phases))
        ):
            raise ValueError(
                f"lite_phases must be increasing phases in 0..49 starting with 0 (end-diastole). "
                f"Received {self.lite_phases}"
            )
        for name in (
            "manual_mass_fraction",
            "inlinevf_failure_rate",
            "lax_extras_fraction",
            "vf_results_fraction",
            "duplicate_slice_fraction",
            "modality_column_fraction",
            "spacing_between_slices_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]. Received {value}")
        if self.instance not in (2, 3):
            raise ValueError(
                f"instance must be 2 (first imaging visit) or 3 (repeat). Received {self.instance}"
            )

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(range(50)) if self.fidelity == "full" else self.lite_phases

    def with_(self, **changes: Any) -> SynthConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["lite_phases"] = list(self.lite_phases)
        out["diseases"] = [asdict(d) for d in self.diseases]
        return out

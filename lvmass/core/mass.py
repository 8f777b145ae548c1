"""LV mass arithmetic (Khurshid et al. 2021): volumes from labels, mass, BSA, LVMI, LVH, calibration.

* mass from a segmentation: myocardium voxels x pixel area x slice spacing x 1.05 g/mL;
* sex-stratified mean centering of raw masses (InlineVF, ML4H_seg) to the manual mean of that sex;
* InlineVF linear recalibration ``0.543487 x raw + 5.808005``;
* BSA by DuBois, LVMI = mass / BSA, LVH: LVMI > 72 g/m2 (men), > 55 g/m2 (women), or mass above the
  sex-specific 90th percentile.

``None`` in means unknown out; NaN inputs are treated as unknown too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvmass.core import contracts

DUBOIS_COEFFICIENT = 0.007184
DUBOIS_WEIGHT_EXPONENT = 0.425
DUBOIS_HEIGHT_EXPONENT = 0.725
MM3_PER_ML = 1000.0


def _known(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class LabelMeasurement:
    """Volumes and raw mass of one label volume (H, W, S) at a given voxel size."""

    myocardium_volume_ml: float
    lv_cavity_volume_ml: float
    lv_mass_raw_g: float
    myocardium_voxels_per_slice: tuple[int, ...]
    lv_cavity_voxels_per_slice: tuple[int, ...] = ()
    voxel_volume_ml: float = 0.0


def _check_spacing(spacing_mm: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"spacing_mm must be 3 positive finite numbers (row_mm, col_mm, slice_mm), got {values}"
        )
    return values  # the length check above narrows it to three floats


def measure_label_volume(labels: np.ndarray, spacing_mm: Sequence[float] | np.ndarray) -> LabelMeasurement:
    """Myocardium and LV cavity volumes (mL) and raw mass (g) of a label volume ``(H, W, S)``.

    ``spacing_mm`` is (row_mm, col_mm, slice_mm): PixelSpacing (0028,0030) and the slice centre
    distance, so each voxel stands for the slab between slice centres (the paper's 10 mm depth).
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be 3-D (rows, cols, slices), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise ValueError(f"labels must be integers from the label map, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= contracts.NUM_CLASSES):
        raise ValueError(
            f"labels hold values outside the label map {contracts.LABEL_MAP}: "
            f"{sorted(np.unique(arr).tolist())}"
        )
    row_mm, col_mm, slice_mm = _check_spacing(spacing_mm)
    voxel_ml = row_mm * col_mm * slice_mm / MM3_PER_ML
    myo_per_slice = tuple(int(v) for v in np.count_nonzero(arr == contracts.MYOCARDIUM, axis=(0, 1)))
    cav_per_slice = tuple(int(v) for v in np.count_nonzero(arr == contracts.LV_CAVITY, axis=(0, 1)))
    myo_ml = sum(myo_per_slice) * voxel_ml
    return LabelMeasurement(
        myocardium_volume_ml=myo_ml,
        lv_cavity_volume_ml=sum(cav_per_slice) * voxel_ml,
        lv_mass_raw_g=myocardium_mass_g(myo_ml),
        myocardium_voxels_per_slice=myo_per_slice,
        lv_cavity_voxels_per_slice=cav_per_slice,
        voxel_volume_ml=voxel_ml,
    )


def myocardium_mass_g(volume_ml: float) -> float:
    """Mass (g) of a myocardial volume (mL) at 1.05 g/mL."""
    if not math.isfinite(volume_ml) or volume_ml < 0:
        raise ValueError(f"myocardial volume must be a finite non-negative number of mL, got {volume_ml}")
    return float(volume_ml) * contracts.MYOCARDIAL_DENSITY_G_PER_ML


def bsa_dubois_m2(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Body surface area (m2) by DuBois & DuBois: 0.007184 x W^0.425 x H^0.725; None if either unknown."""
    if not (_known(height_cm) and _known(weight_kg)):
        return None
    assert height_cm is not None and weight_kg is not None
    if height_cm <= 0 or weight_kg <= 0:
        raise ValueError(f"height_cm and weight_kg must be positive, got {height_cm} cm, {weight_kg} kg")
    return DUBOIS_COEFFICIENT * weight_kg**DUBOIS_WEIGHT_EXPONENT * height_cm**DUBOIS_HEIGHT_EXPONENT


def lvmi_g_m2(mass_g: float | None, bsa_m2: float | None) -> float | None:
    """LV mass index (g/m2) = mass / BSA; None if either unknown."""
    if not (_known(mass_g) and _known(bsa_m2)):
        return None
    assert mass_g is not None and bsa_m2 is not None
    if bsa_m2 <= 0:
        raise ValueError(f"bsa_m2 must be positive, got {bsa_m2}")
    return mass_g / bsa_m2


def _check_sex(sex: str | None) -> str | None:
    if sex is None:
        return None
    if sex not in contracts.SEXES:
        raise ValueError(f"sex must be one of {contracts.SEXES} or None, got {sex!r}")
    return sex


def is_lvh(lvmi_g_m2: float | None, sex: str | None) -> bool | None:
    """LVH by LVMI: > 72 g/m2 in men, > 55 g/m2 in women (strictly greater); None if unknown."""
    sex = _check_sex(sex)
    if sex is None or not _known(lvmi_g_m2):
        return None
    assert lvmi_g_m2 is not None
    return bool(lvmi_g_m2 > contracts.LVH_LVMI_THRESHOLD_G_M2[sex])


def recalibrate_inlinevf_g(raw_g: float | None) -> float | None:
    """The paper's InlineVF bias correction: 0.543487 x raw + 5.808005 (g)."""
    if not _known(raw_g):
        return None
    assert raw_g is not None
    return contracts.INLINEVF_RECALIBRATION_SLOPE * raw_g + contracts.INLINEVF_RECALIBRATION_INTERCEPT_G


@dataclass(frozen=True)
class SexCentering:
    """Sex-stratified mean centering: ``calibrated = raw + offset[sex]``, offset = manual mean - raw mean.

    ``n_raw``/``n_manual`` count the participants behind each mean; ``source`` says where the means came
    from (``"run"``, ``"calibration_file"``, ``"model_card"``, ...); ``sources_by_sex`` overrides it per
    sex for a centering merged from several sources (:func:`merge_sex_centering`).
    """

    offsets_g: Mapping[str, float]
    n_raw: Mapping[str, int] = field(default_factory=dict)
    n_manual: Mapping[str, int] = field(default_factory=dict)
    raw_mean_g: Mapping[str, float] = field(default_factory=dict)
    manual_mean_g: Mapping[str, float] = field(default_factory=dict)
    source: str = "run"
    sources_by_sex: Mapping[str, str] = field(default_factory=dict)

    def source_for(self, sex: str) -> str:
        """Where the offset of ``sex`` came from."""
        return self.sources_by_sex.get(sex, self.source)

    def apply(self, raw_g: float | None, sex: str | None) -> float | None:
        """Centred mass (g); None when the mass or sex is unknown or the sex has no offset."""
        sex = _check_sex(sex)
        if sex is None or not _known(raw_g) or sex not in self.offsets_g:
            return None
        assert raw_g is not None
        return raw_g + self.offsets_g[sex]

    def to_dict(self) -> dict[str, Any]:
        """The model card's ``calibration`` form: raw and manual means per sex (plus counts, source)."""
        return {
            "raw_mean_g": dict(self.raw_mean_g),
            "manual_mean_g": dict(self.manual_mean_g),
            "n_raw": dict(self.n_raw),
            "n_manual": dict(self.n_manual),
            "source": self.source,
        }

    @classmethod
    def from_means(
        cls, raw_mean_g: Mapping[str, float], manual_mean_g: Mapping[str, float], *, source: str
    ) -> SexCentering:
        """From per-sex means, e.g. a model card's ``calibration`` or a calibration file."""
        for sex in (*raw_mean_g, *manual_mean_g):
            _check_sex(sex)
        sexes = [s for s in contracts.SEXES if s in raw_mean_g and s in manual_mean_g]
        if not sexes:
            raise ValueError(
                f"{source}: calibration needs raw and manual means for at least one sex, got raw for "
                f"{sorted(raw_mean_g)} and manual for {sorted(manual_mean_g)}"
            )
        return cls(
            offsets_g={s: float(manual_mean_g[s]) - float(raw_mean_g[s]) for s in sexes},
            raw_mean_g={s: float(raw_mean_g[s]) for s in sexes},
            manual_mean_g={s: float(manual_mean_g[s]) for s in sexes},
            source=source,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> SexCentering:
        """Inverse of :meth:`to_dict` (counts optional)."""
        if "raw_mean_g" not in data or "manual_mean_g" not in data:
            raise ValueError(f"{source}: calibration lacks raw_mean_g/manual_mean_g: keys {sorted(data)}")
        base = cls.from_means(data["raw_mean_g"], data["manual_mean_g"], source=source)
        return cls(
            offsets_g=base.offsets_g,
            n_raw={k: int(v) for k, v in dict(data.get("n_raw", {})).items()},
            n_manual={k: int(v) for k, v in dict(data.get("n_manual", {})).items()},
            raw_mean_g=base.raw_mean_g,
            manual_mean_g=base.manual_mean_g,
            source=source,
        )


def _as_arrays(
    values: Sequence[float | None], sex: Sequence[str | None], name: str
) -> tuple[np.ndarray, np.ndarray]:
    if len(values) != len(sex):
        raise ValueError(f"{name} has {len(values)} values but sex has {len(sex)}")
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    s = np.array([_check_sex(x) or "" for x in sex], dtype=object)
    return v, s


def fit_sex_centering(
    raw_g: Sequence[float | None],
    manual_g: Sequence[float | None],
    sex: Sequence[str | None],
    *,
    paired_only: bool = False,
    source: str = "run",
) -> SexCentering:
    """Per-sex offsets that move the mean raw mass onto the mean manual mass (the paper's centering).

    Raw means are over every participant of that sex with a raw mass (the whole distribution is
    shifted, as in the paper's Figure 2); with ``paired_only`` only over those that also have a manual
    mass. Manual means are over participants with a manual mass. A sex without both is left out (its
    participants get no calibrated mass); raises ValueError when no sex has both.
    """
    raw, s = _as_arrays(raw_g, sex, "raw_g")
    manual, _ = _as_arrays(manual_g, sex, "manual_g")
    if len(manual) != len(raw):
        raise ValueError(f"raw_g has {len(raw)} values but manual_g has {len(manual)}")
    raw_mean, manual_mean, n_raw, n_manual = {}, {}, {}, {}
    for sx in contracts.SEXES:
        of_sex = s == sx
        has_manual = of_sex & np.isfinite(manual)
        has_raw = of_sex & np.isfinite(raw) & (has_manual if paired_only else True)
        if has_raw.any() and has_manual.any():
            raw_mean[sx] = float(raw[has_raw].mean())
            manual_mean[sx] = float(manual[has_manual].mean())
            n_raw[sx] = int(has_raw.sum())
            n_manual[sx] = int(has_manual.sum())
    if not raw_mean:
        raise ValueError(
            "cannot fit sex centering: no sex has both raw and manual masses "
            f"({int(np.isfinite(raw).sum())} raw, {int(np.isfinite(manual).sum())} manual, of {len(raw)})"
        )
    return SexCentering(
        offsets_g={k: manual_mean[k] - raw_mean[k] for k in raw_mean},
        n_raw=n_raw,
        n_manual=n_manual,
        raw_mean_g=raw_mean,
        manual_mean_g=manual_mean,
        source=source,
    )


def merge_sex_centering(
    fitted: SexCentering | None, fallback: SexCentering | None, *, min_manual_n: int
) -> SexCentering | None:
    """One centering per sex from a run's own fit and a fallback (``--calibration`` or model card).

    For each sex: the run's offset when it rests on at least ``min_manual_n`` manual masses of that sex;
    else the fallback's offset when it has one for that sex; else the run's offset however few manual
    masses it rests on (better than none); else that sex stays uncentred. ``sources_by_sex`` records
    which source each sex got. None when neither source covers any sex.
    """
    if min_manual_n < 1:
        raise ValueError(f"min_manual_n must be >= 1, got {min_manual_n}")
    chosen: dict[str, SexCentering] = {}
    for sex in contracts.SEXES:
        fit = fitted if fitted is not None and sex in fitted.offsets_g else None
        if fit is not None and int(fit.n_manual.get(sex, 0)) >= min_manual_n:
            chosen[sex] = fit
        elif fallback is not None and sex in fallback.offsets_g:
            chosen[sex] = fallback
        elif fit is not None:
            chosen[sex] = fit
    if not chosen:
        return None

    def pick(attribute: str) -> dict[str, Any]:
        return {sex: getattr(c, attribute)[sex] for sex, c in chosen.items() if sex in getattr(c, attribute)}

    return SexCentering(
        offsets_g={sex: c.offsets_g[sex] for sex, c in chosen.items()},
        n_raw=pick("n_raw"),
        n_manual=pick("n_manual"),
        raw_mean_g=pick("raw_mean_g"),
        manual_mean_g=pick("manual_mean_g"),
        source="merged",
        sources_by_sex={sex: c.source_for(sex) for sex, c in chosen.items()},
    )


def sex_percentile_thresholds(
    mass_g: Sequence[float | None], sex: Sequence[str | None], percentile: float = contracts.LVH_PERCENTILE
) -> dict[str, float]:
    """Per-sex percentile of LV mass (numpy's linear interpolation) over known masses; sexes without
    any mass are absent."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within 0..100, got {percentile}")
    mass, s = _as_arrays(mass_g, sex, "mass_g")
    out = {}
    for sx in contracts.SEXES:
        values = mass[(s == sx) & np.isfinite(mass)]
        if values.size:
            out[sx] = float(np.percentile(values, percentile))
    return out


def is_lvh_percentile(mass_g: float | None, sex: str | None, thresholds: Mapping[str, float]) -> bool | None:
    """LVH_p90: mass strictly above the sex's percentile threshold; None when unknown."""
    sex = _check_sex(sex)
    if sex is None or not _known(mass_g) or sex not in thresholds:
        return None
    assert mass_g is not None
    return bool(mass_g > thresholds[sex])

"""Mass, BSA, LVMI, LVH, recalibration, centering and percentiles against worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.core.mass import (
    SexCentering,
    bsa_dubois_m2,
    fit_sex_centering,
    is_lvh,
    is_lvh_percentile,
    lvmi_g_m2,
    measure_label_volume,
    merge_sex_centering,
    myocardium_mass_g,
    recalibrate_inlinevf_g,
    sex_percentile_thresholds,
)


class TestMeasureLabelVolume:
    def test_worked_example(self):
        # 1000 myocardium voxels on slice 0 and 500 on slice 2, 300 cavity voxels on slice 1;
        # voxel = 2 mm x 2 mm x 10 mm = 40 mm3 = 0.04 mL
        # myocardium 1500 x 0.04 = 60 mL -> 60 x 1.05 = 63 g; cavity 300 x 0.04 = 12 mL
        labels = np.zeros((50, 50, 4), np.uint8)
        labels[:20, :50, 0] = 2
        labels[:10, :50, 2] = 2
        labels[20:26, :50, 1] = 1
        m = measure_label_volume(labels, (2.0, 2.0, 10.0))
        assert m.myocardium_volume_ml == pytest.approx(60.0)
        assert m.lv_cavity_volume_ml == pytest.approx(12.0)
        assert m.lv_mass_raw_g == pytest.approx(63.0)
        assert m.myocardium_voxels_per_slice == (1000, 0, 500, 0)
        assert m.lv_cavity_voxels_per_slice == (0, 300, 0, 0)

    def test_anisotropic_pixels(self):
        labels = np.zeros((4, 4, 1), np.uint8)
        labels[0, 0, 0] = 2
        # 1.8 x 1.9 x 10 = 34.2 mm3 = 0.0342 mL -> 0.03591 g
        assert measure_label_volume(labels, (1.8, 1.9, 10.0)).lv_mass_raw_g == pytest.approx(0.03591)

    def test_input_not_mutated(self):
        labels = np.full((3, 3, 2), 2, np.uint8)
        before = labels.copy()
        measure_label_volume(labels, (1.0, 1.0, 1.0))
        np.testing.assert_array_equal(labels, before)

    def test_rejects_2d(self):
        with pytest.raises(
            ValueError, match=r"labels must be 3-D \(rows, cols, slices\), got shape \(3, 3\)"
        ):
            measure_label_volume(np.zeros((3, 3), np.uint8), (1, 1, 1))

    def test_rejects_floats(self):
        with pytest.raises(ValueError, match="labels must be integers from the label map, got dtype float32"):
            measure_label_volume(np.zeros((3, 3, 1), np.float32), (1, 1, 1))

    def test_rejects_unknown_labels(self):
        with pytest.raises(ValueError, match=r"labels hold values outside the label map .*\[0, 5\]"):
            measure_label_volume(np.array([[[0, 5]]], np.uint8), (1, 1, 1))

    def test_rejects_bad_spacing(self):
        with pytest.raises(
            ValueError, match=r"spacing_mm must be 3 positive finite numbers .* got \(1.0, 0.0, 1.0\)"
        ):
            measure_label_volume(np.zeros((2, 2, 1), np.uint8), (1, 0, 1))


class TestMyocardiumMass:
    def test_density(self):
        assert myocardium_mass_g(100.0) == pytest.approx(105.0)

    def test_negative(self):
        with pytest.raises(
            ValueError, match="myocardial volume must be a finite non-negative number of mL, got -1"
        ):
            myocardium_mass_g(-1.0)


class TestBsaDubois:
    def test_worked_example(self):
        # 0.007184 x 70^0.425 x 175^0.725 = 0.007184 x 6.0837 x 42.287 = 1.8481 m2 (calculators: 1.85)
        assert bsa_dubois_m2(175.0, 70.0) == pytest.approx(1.8481, abs=1e-4)

    def test_unknown(self):
        assert bsa_dubois_m2(None, 70.0) is None
        assert bsa_dubois_m2(175.0, float("nan")) is None

    def test_nonpositive(self):
        with pytest.raises(ValueError, match=r"height_cm and weight_kg must be positive, got 0.0 cm, 70.0"):
            bsa_dubois_m2(0.0, 70.0)


class TestLvmiAndLvh:
    def test_lvmi(self):
        assert lvmi_g_m2(144.0, 2.0) == pytest.approx(72.0)
        assert lvmi_g_m2(None, 2.0) is None

    def test_lvmi_bad_bsa(self):
        with pytest.raises(ValueError, match="bsa_m2 must be positive, got 0"):
            lvmi_g_m2(100.0, 0.0)

    def test_thresholds_strictly_greater(self):
        assert is_lvh(72.0, "male") is False
        assert is_lvh(72.01, "male") is True
        assert is_lvh(55.0, "female") is False
        assert is_lvh(55.5, "female") is True
        assert is_lvh(60.0, "male") is False and is_lvh(60.0, "female") is True

    def test_unknown(self):
        assert is_lvh(None, "male") is None
        assert is_lvh(80.0, None) is None

    def test_bad_sex(self):
        with pytest.raises(ValueError, match="sex must be one of \\('female', 'male'\\) or None, got 'M'"):
            is_lvh(80.0, "M")


class TestRecalibrateInlinevf:
    def test_worked_example(self):
        # 0.543487 x 155 + 5.808005 = 84.240485 + 5.808005 = 90.04849 g (the paper's 155 g -> ~90 g)
        assert recalibrate_inlinevf_g(155.0) == pytest.approx(90.04849)
        assert recalibrate_inlinevf_g(None) is None


class TestSexCentering:
    def test_fit_worked_example(self):
        # women raw 150, 160, 170 (mean 160), manual known for two: 100, 110 (mean 105): offset -55
        # men raw 200, 220 (mean 210), manual 140 (one): offset -70; unknown sex ignored
        raw = [150.0, 160.0, 170.0, 200.0, 220.0, 500.0]
        manual = [100.0, None, 110.0, 140.0, float("nan"), 1.0]
        sex = ["female", "female", "female", "male", "male", None]
        c = fit_sex_centering(raw, manual, sex)
        assert c.offsets_g == pytest.approx({"female": -55.0, "male": -70.0})
        assert c.n_raw == {"female": 3, "male": 2} and c.n_manual == {"female": 2, "male": 1}
        assert c.apply(160.0, "female") == pytest.approx(105.0)
        assert c.apply(210.0, "male") == pytest.approx(140.0)
        assert c.apply(210.0, None) is None and c.apply(None, "male") is None

    def test_paired_only(self):
        # paired women: raw 150 and 170 (mean 160) with manual 100 and 110; men raw 200 with 140
        c = fit_sex_centering(
            [150.0, 165.0, 170.0, 200.0, 220.0],
            [100.0, None, 110.0, 140.0, None],
            ["female", "female", "female", "male", "male"],
            paired_only=True,
        )
        assert c.offsets_g == pytest.approx({"female": -55.0, "male": -60.0})

    def test_sex_without_manual_left_out(self):
        c = fit_sex_centering([150.0, 200.0], [100.0, None], ["female", "male"])
        assert set(c.offsets_g) == {"female"}
        assert c.apply(200.0, "male") is None

    def test_no_manual_at_all(self):
        with pytest.raises(
            ValueError, match=r"cannot fit sex centering: no sex has both raw and manual masses \(2 raw, 0"
        ):
            fit_sex_centering([150.0, 200.0], [None, None], ["female", "male"])

    def test_length_mismatch(self):
        with pytest.raises(ValueError, match="raw_g has 2 values but sex has 1"):
            fit_sex_centering([1.0, 2.0], [1.0, 2.0], ["male"])

    def test_dict_round_trip_and_model_card_form(self):
        c = fit_sex_centering([150.0, 200.0], [100.0, 140.0], ["female", "male"])
        again = SexCentering.from_dict(c.to_dict(), source="model_card")
        assert again.offsets_g == pytest.approx(c.offsets_g) and again.source == "model_card"
        assert again.n_raw == c.n_raw
        card = SexCentering.from_dict(
            {
                "raw_mean_g": {"female": 150.0, "male": 200.0},
                "manual_mean_g": {"female": 80.0, "male": 100.0},
            },
            source="card.json",
        )
        assert card.apply(150.0, "female") == pytest.approx(80.0)

    def test_from_dict_missing_keys(self):
        with pytest.raises(
            ValueError, match=r"card.json: calibration lacks raw_mean_g/manual_mean_g: keys \['x'\]"
        ):
            SexCentering.from_dict({"x": 1}, source="card.json")

    def test_from_means_no_common_sex(self):
        with pytest.raises(
            ValueError, match=r"f.csv: calibration needs raw and manual means for at least one sex"
        ):
            SexCentering.from_means({"female": 1.0}, {"male": 2.0}, source="f.csv")

    def test_inputs_not_mutated(self):
        raw = np.array([150.0, 200.0])
        before = raw.copy()
        fit_sex_centering(raw, [100.0, 140.0], ["female", "male"])
        np.testing.assert_array_equal(raw, before)


class TestPercentiles:
    def test_worked_example(self):
        # women 10, 20, ..., 100: 90th percentile (linear) at rank 0.9 x 9 = 8.1 -> 90 + 0.1 x 10 = 91
        # men 100, 200: 90th at rank 0.9 -> 100 + 0.9 x 100 = 190
        mass = [float(v) for v in range(10, 101, 10)] + [100.0, 200.0, None]
        sex = ["female"] * 10 + ["male", "male", "male"]
        thresholds = sex_percentile_thresholds(mass, sex)
        assert thresholds == pytest.approx({"female": 91.0, "male": 190.0})
        assert is_lvh_percentile(95.0, "female", thresholds) is True
        assert is_lvh_percentile(91.0, "female", thresholds) is False
        assert is_lvh_percentile(95.0, None, thresholds) is None

    def test_sex_absent(self):
        assert sex_percentile_thresholds([1.0], ["male"]) == {"male": 1.0}
        assert sex_percentile_thresholds([float("nan"), 3.0], ["female", "female"]) == {"female": 3.0}

    def test_bad_percentile(self):
        with pytest.raises(ValueError, match=r"percentile must be within 0..100, got 120"):
            sex_percentile_thresholds([1.0], ["male"], percentile=120)

    def test_default_is_the_papers(self):
        assert contracts.LVH_PERCENTILE == 90.0


class TestMergeSexCentering:
    """The run's own fit and a fallback, merged sex by sex (not method by method)."""

    FALLBACK = SexCentering(offsets_g={"female": -30.0, "male": -50.0}, source="model_card")

    def _fitted(self, n_female: int, n_male: int | None) -> SexCentering:
        offsets = {"female": -20.0} if n_male is None else {"female": -20.0, "male": -45.0}
        counts = {"female": n_female} if n_male is None else {"female": n_female, "male": n_male}
        return SexCentering(offsets_g=offsets, n_manual=counts, source="run")

    def test_a_sex_missing_from_the_run_keeps_the_fallback(self):
        merged = merge_sex_centering(self._fitted(12, None), self.FALLBACK, min_manual_n=10)
        assert dict(merged.offsets_g) == {"female": -20.0, "male": -50.0}
        assert dict(merged.sources_by_sex) == {"female": "run", "male": "model_card"}
        assert merged.apply(150.0, "male") == 100.0 and merged.source_for("female") == "run"

    def test_too_few_manual_masses_prefer_the_fallback(self):
        merged = merge_sex_centering(self._fitted(3, 40), self.FALLBACK, min_manual_n=10)
        assert dict(merged.sources_by_sex) == {"female": "model_card", "male": "run"}
        assert dict(merged.offsets_g) == {"female": -30.0, "male": -45.0}

    def test_without_fallback_a_small_fit_is_still_used(self):
        merged = merge_sex_centering(self._fitted(3, None), None, min_manual_n=10)
        assert dict(merged.offsets_g) == {"female": -20.0} and merged.source_for("female") == "run"

    def test_nothing_to_merge(self):
        assert merge_sex_centering(None, None, min_manual_n=10) is None
        with pytest.raises(ValueError, match="min_manual_n must be >= 1, got 0"):
            merge_sex_centering(None, self.FALLBACK, min_manual_n=0)

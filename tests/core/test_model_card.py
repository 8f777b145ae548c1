"""lvmass.core.model_card: the card's JSON round trip, its typed ``crop_inference``, its checks, and the
inference batch the cards' measured memory allows."""

from __future__ import annotations

import json

import pytest

from lvmass.core import contracts
from lvmass.core.model_card import CropInference, ModelCard, batch_size_for_memory

CROP = {"signature": "serving_crop", "align_px": 8, "receptive_field_px": 52,
        "window_signature": "serving_window", "window_margin_px": 32}


class TestModelCard:
    def test_json_round_trip(self):
        card = ModelCard(kind=contracts.MODEL_KIND_SEG, version="2026.11.27", metrics={"dice": 0.9})
        again = ModelCard.from_json(card.to_json())
        assert again == card
        assert json.loads(card.to_json())["signature"]["outputs"]["probabilities"] == [None, 256, 256, 13, 3]

    def test_unknown_kind_is_refused(self):
        with pytest.raises(ValueError, match="Received: 'unet'"):
            ModelCard(kind="unet", version="1")

    def test_incompatible_tensor_contract_is_refused(self):
        card = ModelCard(
            kind=contracts.MODEL_KIND_REG, version="1", tensor={"input_shape": [128, 128, 13, 1]}
        )
        with pytest.raises(ValueError, match="input_shape"):
            card.check_compatible()


class TestCropInference:
    def test_parsed_once_into_a_typed_object_and_written_back_as_it_was(self):
        card = ModelCard(kind=contracts.MODEL_KIND_SEG, version="1", crop_inference=dict(CROP))
        assert card.crop_inference == CropInference("serving_crop", 8, 52, None, "serving_window", 32)
        assert json.loads(card.to_json())["crop_inference"] == CROP  # no keys the card did not have
        assert ModelCard.from_json(card.to_json()) == card

    def test_only_an_ml4h_seg_card_with_an_alignment_has_one(self):
        with pytest.raises(ValueError, match="crop_inference must be an ML4H_seg card's"):
            ModelCard(kind=contracts.MODEL_KIND_REG, version="1", crop_inference=dict(CROP))
        with pytest.raises(ValueError, match="align_px >= 1"):
            ModelCard(kind=contracts.MODEL_KIND_SEG, version="1",
                      crop_inference={"signature": "s", "align_px": 0})

    def test_unknown_keys_of_later_cards_are_left_out(self):
        crop = CropInference.from_dict({**CROP, "tile_px": 64}, kind=contracts.MODEL_KIND_SEG)
        assert crop.to_dict() == CROP


class TestBatchSizeForMemory:
    def test_the_largest_peak_once_and_every_model_per_example(self):
        seg = ModelCard(kind=contracts.MODEL_KIND_SEG, version="1",
                        inference_memory={"peak_mb": 900.0, "per_example_mb": 40.0})
        reg = ModelCard(kind=contracts.MODEL_KIND_REG, version="1",
                        inference_memory={"peak_mb": 700.0, "per_example_mb": 10.0})
        assert batch_size_for_memory([seg, reg], budget_mb=2500.0) == (2500 - 900) // 50
        assert batch_size_for_memory([seg], budget_mb=100.0) == 1  # never below one

    def test_no_measurement_no_size(self):
        assert batch_size_for_memory([ModelCard(kind=contracts.MODEL_KIND_REG, version="1")]) is None


def test_an_unknown_postprocess_is_refused_by_name():
    with pytest.raises(ValueError, match="postprocess must be one of"):
        ModelCard(kind=contracts.MODEL_KIND_SEG, version="1", postprocess="largest_blob")
    card = ModelCard(kind=contracts.MODEL_KIND_SEG, version="1", postprocess="largest_component+closed_rings")
    assert ModelCard.from_json(card.to_json()).postprocess == "largest_component+closed_rings"

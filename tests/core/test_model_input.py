"""lvmass.core.model_input: an example's shapes checked against the tensor contract before a model call."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.core.model_input import ModelInput, check_example

SPACING = np.array([1.8, 1.8, 10.0])


def test_an_example_becomes_a_batch_of_one_in_float32():
    image = np.zeros(contracts.TENSOR_SHAPE, np.float64)
    batch_image, batch_spacing = check_example(ModelInput(image, SPACING), 0, contracts.TENSOR_SLICES)
    assert batch_image.shape == (1, *contracts.TENSOR_SHAPE) and batch_image.dtype == np.float32
    assert batch_spacing.tolist() == [[pytest.approx(1.8), pytest.approx(1.8), 10.0]]


def test_a_per_slice_model_takes_any_number_of_slices():
    image = np.zeros((256, 256, 21, 1), np.float32)
    assert check_example(ModelInput(image, SPACING), 0, None)[0].shape == (1, 256, 256, 21, 1)


@pytest.mark.parametrize(("shape", "slices"), [((256, 256, 12, 1), 13), ((128, 256, 13, 1), 13),
                                               ((256, 256, 40, 1), None), ((256, 256, 13), 13)])
def test_other_shapes_are_refused_naming_the_example(shape, slices):
    with pytest.raises(ValueError, match=rf"example 3: image shape {tuple(shape)!r}".replace("(", r"\(")
                       .replace(")", r"\)")):
        check_example(ModelInput(np.zeros(shape, np.float32), SPACING), 3, slices)


def test_a_spacing_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"example 0: spacing_mm shape \(2,\), expected \(3,\)"):
        check_example(ModelInput(np.zeros(contracts.TENSOR_SHAPE, np.float32), np.ones(2)), 0, 13)

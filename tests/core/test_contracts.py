"""lvmass.core.contracts: the constants the layers share agree with each other."""

from __future__ import annotations

from lvmass import __version__
from lvmass.core import contracts


def test_the_tensor_and_label_layouts_agree():
    assert contracts.TENSOR_SHAPE == (256, 256, 13, 1)
    assert contracts.LABEL_VOLUME_SHAPE == contracts.TENSOR_SHAPE[:3]
    assert len(contracts.SPACING_FIELDS) == 3


def test_the_label_map_is_the_named_constants():
    assert contracts.LABEL_MAP == {"background": contracts.BACKGROUND, "lv_cavity": contracts.LV_CAVITY,
                                   "myocardium": contracts.MYOCARDIUM}
    assert contracts.NUM_CLASSES == len(contracts.LABEL_MAP)


def test_methods_and_flags():
    assert set(contracts.INPUT_METHODS) <= set(contracts.ALL_METHODS)
    assert contracts.METHOD_INLINEVF_RECALIBRATED in contracts.ALL_METHODS
    assert set(contracts.QC_INFORMATIONAL_FLAGS) <= set(contracts.QC_FLAGS)


def test_every_row_records_the_packages_version():
    assert contracts.PIPELINE_VERSION == __version__

"""The Beam job: participant zips -> LV mass, LVMI, LVH -> Parquet (and TFRecords for training).

Pure modules (contracts, study, decode, tensor, overlay, mass, qc, phenotypes) never import Beam;
``transforms`` and ``pipeline`` compose them.
"""

from lvmass import __version__ as PIPELINE_VERSION

__all__ = ["PIPELINE_VERSION"]

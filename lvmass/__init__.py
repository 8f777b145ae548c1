"""lvmass: left-ventricular mass from short-axis cine CMR at biobank scale."""

__version__ = "0.2.0"

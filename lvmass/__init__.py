"""lvmass: left-ventricular mass from short-axis cine CMR at biobank scale."""

__version__ = "0.1.0"

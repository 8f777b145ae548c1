"""The domain: what a left-ventricular mass is and how it is measured, as plain Python on numpy.

Contracts, participant identity, decoding a study (:mod:`lvmass.core.decode`), geometry, slice selection,
the model tensor, InlineVF overlays, masses and their calibration, QC, the output schema, model cards,
metrics, and the cohort derivation. Nothing here imports Beam, TensorFlow, Keras or any file system client
(``pyproject.toml``, ``[tool.importlinter]``): every module is a pure function of its inputs, tested without
a pipeline, and used alike by the Beam job, the trainer, the analysis and the synthetic generator.
"""

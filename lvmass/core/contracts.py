"""The project's contracts, defined once and imported wherever they are used.

Everything here is plain Python (no Beam, no TensorFlow) so that the pipeline, the trainer, the
analysis and the synthetic generator can all import it cheaply.

Tensor layout
-------------
A participant's short-axis stack at end-diastole is a float32 array of shape
``(TENSOR_ROWS, TENSOR_COLS, TENSOR_SLICES, 1)`` = ``(256, 256, 13, 1)``, axes
``(row, column, slice, channel)``:

* slices are ordered **base to apex** along the slice normal; slice ``k`` of the acquisition sits at
  index ``k``; indices past the acquired slice count are zero (padding at the apical end);
* every slice is in one **in-plane view**, :data:`IN_PLANE_VIEW`: rows run towards posterior (anterior
  wall at the top) and the slice is seen from the apex (right ventricle on the image's left); mirrored
  or transposed acquisitions are turned to it at decode time (``geometry.standard_view_transform``);
* the grid is **physical**: each slice is resampled in-plane to the model's pixel size (the model
  card's ``tensor.pixel_spacing_mm``; :data:`DEFAULT_TENSOR_PIXEL_SPACING_MM` where no model says),
  linear interpolation with a Gaussian anti-aliasing filter when shrinking, so a heart has the same
  size in pixels whatever the scanner's pixel size (1.2-2.2 mm occur);
* each slice is then **zero-padded centred** (an odd remainder goes to the bottom/right); a slice
  larger than 256 in either dimension is centre-cropped and flagged;
* intensities are normalised **per image** (per participant volume) to mean 0 / sd 1 over the acquired
  pixels (Khurshid et al. 2021); padding stays exactly 0;
* the voxel size of the tensor's grid travels beside it as ``spacing_mm = (row_mm, col_mm, slice_mm)``:
  the grid's pixel size in both in-plane directions and the centre-to-centre slice distance measured
  from the slice positions; the acquired PixelSpacing (0028,0030) and the in-plane scale applied
  (acquired / grid pixel size) are recorded beside it.

Label volumes (InlineVF-derived training labels, model argmax) use the same layout without the
channel axis, dtype uint8, values from :data:`LABEL_MAP`; labels are resampled with nearest neighbour.

Two slice layouts. The paper's 3-D models take :data:`TENSOR_SLICES` (13) slots: a longer stack keeps 13
contiguous slices and is flagged ``too_many_slices_truncated``. A per-slice model (its card's
``tensor.input_shape`` has ``null`` slices, :data:`PER_SLICE_SLICES`) takes every acquired slice, ``(256,
256, n_slices, 1)`` with no padding slot, so no slice is dropped; stacks longer than
:data:`MAX_PER_SLICE_SLICES` are not short-axis cines and keep that many, flagged.
"""

from __future__ import annotations

from typing import Final

from lvmass import __version__

# The version every result and dead-letter row records (``pipeline_version``): the package's own.
PIPELINE_VERSION: Final = __version__

# --- Tensor layout --------------------------------------------------------------------------------
TENSOR_ROWS: Final = 256
TENSOR_COLS: Final = 256
TENSOR_SLICES: Final = 13
TENSOR_CHANNELS: Final = 1
TENSOR_SHAPE: Final = (TENSOR_ROWS, TENSOR_COLS, TENSOR_SLICES, TENSOR_CHANNELS)
LABEL_VOLUME_SHAPE: Final = (TENSOR_ROWS, TENSOR_COLS, TENSOR_SLICES)
# A per-slice model's slice axis: every acquired slice (a card's input_shape has null there).
PER_SLICE_SLICES: Final = None
MAX_PER_SLICE_SLICES: Final = 32
TENSOR_DTYPE: Final = "float32"
SLICE_ORDER: Final = "base_to_apex"
PADDING: Final = "zero_centred"
NORMALISATION: Final = "per_image_zscore_over_acquired_pixels"
SPACING_FIELDS: Final = ("row_mm", "col_mm", "slice_mm")
IN_PLANE_VIEW: Final = "short_axis_from_apex_anterior_up"
GRID: Final = "physical_resampled_in_plane"
# UK Biobank short-axis cine: PixelSpacing about 1.8-1.9 mm (population mean ~1.83); the default grid of
# runs and tensorize jobs whose models do not say theirs.
DEFAULT_TENSOR_PIXEL_SPACING_MM: Final = 1.83

# --- Label map ------------------------------------------------------------------------------------
BACKGROUND: Final = 0
LV_CAVITY: Final = 1
MYOCARDIUM: Final = 2
LABEL_MAP: Final = {"background": BACKGROUND, "lv_cavity": LV_CAVITY, "myocardium": MYOCARDIUM}
NUM_CLASSES: Final = len(LABEL_MAP)

# --- Methods (one results row per participant x instance x method) --------------------------------
METHOD_ML4H_SEG: Final = "ml4h_seg"
METHOD_ML4H_REG: Final = "ml4h_reg"
METHOD_INLINEVF: Final = "inlinevf"
METHOD_INLINEVF_RECALIBRATED: Final = "inlinevf_recalibrated"
INPUT_METHODS: Final = (METHOD_ML4H_SEG, METHOD_ML4H_REG, METHOD_INLINEVF)
ALL_METHODS: Final = (*INPUT_METHODS, METHOD_INLINEVF_RECALIBRATED)

# --- The paper's numbers (Khurshid et al. 2021) ---------------------------------------------------
MYOCARDIAL_DENSITY_G_PER_ML: Final = 1.05
PAPER_SLICE_DEPTH_MM: Final = 10.0
INLINEVF_RECALIBRATION_SLOPE: Final = 0.543487
INLINEVF_RECALIBRATION_INTERCEPT_G: Final = 5.808005
LVH_LVMI_THRESHOLD_G_M2: Final = {"male": 72.0, "female": 55.0}
LVH_PERCENTILE: Final = 90.0
SEXES: Final = ("female", "male")

# --- UK Biobank bulk field and file naming --------------------------------------------------------
SAX_FIELD_ID: Final = 20209
LAX_FIELD_ID: Final = 20208

# --- SavedModel serving contract ------------------------------------------------------------------
SERVING_SIGNATURE: Final = "serving_default"
SIGNATURE_INPUT_IMAGE: Final = "image"  # float32 (B, 256, 256, 13, 1), layout above
SIGNATURE_INPUT_SPACING: Final = "spacing_mm"  # float32 (B, 3): row_mm, col_mm, slice_mm
SIGNATURE_OUTPUT_PROBABILITIES: Final = "probabilities"  # ML4H_seg: float32 (B, 256, 256, 13, 3)
SIGNATURE_OUTPUT_MASS: Final = "lv_mass_g"  # ML4H_reg: float32 (B,)
MODEL_CARD_FILENAME: Final = "model_card.json"
MODEL_KIND_SEG: Final = "ml4h_seg"
MODEL_KIND_REG: Final = "ml4h_reg"
# ML4H_seg's crop signatures (trainer/export.py; the policy in beam_pipeline.inference): serving_crop takes an
# in-plane crop and returns its probabilities; serving_window takes the same crop and returns those of its
# inner window only, SEG_WINDOW_MARGIN_PX less on each in-plane side, computing the decoder only there.
SEG_CROP_SIGNATURE: Final = "serving_crop"
SEG_WINDOW_SIGNATURE: Final = "serving_window"
SEG_WINDOW_MARGIN_PX: Final = 32

# --- TFRecord feature keys (the spec itself lives in lvmass.storage.tfrecord, which imports TF) -----
FEATURE_EID: Final = "eid"
FEATURE_INSTANCE: Final = "instance"
FEATURE_IMAGE: Final = "image"  # bytes: float32 TENSOR_SHAPE, C order
FEATURE_LABELS: Final = "labels"  # bytes: uint8 LABEL_VOLUME_SHAPE, C order (InlineVF labels)
FEATURE_HAS_LABELS: Final = "has_labels"  # int64 0/1
FEATURE_SPACING: Final = "spacing_mm"  # float32[3]
FEATURE_SEX: Final = "sex"  # int64: 0 female, 1 male, -1 unknown
FEATURE_MANUAL_MASS: Final = "manual_lv_mass_g"  # float32, NaN when unknown
FEATURE_HAS_MANUAL_MASS: Final = "has_manual_mass"  # int64 0/1
FEATURE_N_SLICES: Final = "n_slices"  # int64: slices placed in the tensor (<= 13), not those acquired

SEX_CODE: Final = {"female": 0, "male": 1}
UNKNOWN_EID: Final = -1  # the TFRecord eid of a participant that is not UK Biobank (no eid)

# --- QC flags (the vocabulary of the results' qc_flags column) ------------------------------------
QC_MISSING_SLICES: Final = "missing_slices"
QC_NONCONTIGUOUS_SLICES: Final = "noncontiguous_slices"
QC_INCONSISTENT_SPACING: Final = "inconsistent_spacing"
QC_SLICE_COUNT_OUT_OF_RANGE: Final = "slice_count_out_of_range"
QC_TOO_MANY_SLICES_TRUNCATED: Final = "too_many_slices_truncated"
QC_IMAGE_CROPPED: Final = "image_cropped"
# A slice wider than the tensor's 256 px is centre-cropped; ``image_cropped`` is raised only when more than
# this is cut from a side. Short-axis fields of view are centred on the heart (an LV is at most about 120 mm
# across), so a 1.5 mm grid's 384 mm keeps every heart of a UK Biobank field of view (about 208 x 1.86 =
# 387 mm); a border of chest wall and arms is not a reason to fail QC.
IMAGE_CROP_TOLERANCE_MM: Final = 20.0
QC_EMPTY_MID_SLICE_MYOCARDIUM: Final = "empty_mid_slice_myocardium"
QC_MYOCARDIUM_NOT_RING: Final = "myocardium_not_ring"
QC_MASS_IMPLAUSIBLE: Final = "mass_implausible"
QC_INLINEVF_CONTOUR_MISSING: Final = "inlinevf_contour_missing"
QC_INLINEVF_CONTOUR_IMPLAUSIBLE: Final = "inlinevf_contour_implausible"
QC_NO_PHENOTYPE: Final = "no_phenotype"
QC_DUPLICATE_SLICE_ACQUISITION: Final = "duplicate_slice_acquisition"
QC_PIXEL_SPACING_OUTSIDE_TRAINING: Final = "pixel_spacing_outside_training"
QC_BODY_SIZE_IMPLAUSIBLE: Final = "body_size_implausible"
QC_IMAGE_IMPLAUSIBLE: Final = "image_implausible"
QC_FLAGS: Final = (
    QC_MISSING_SLICES,
    QC_NONCONTIGUOUS_SLICES,
    QC_INCONSISTENT_SPACING,
    QC_SLICE_COUNT_OUT_OF_RANGE,
    QC_TOO_MANY_SLICES_TRUNCATED,
    QC_IMAGE_CROPPED,
    QC_EMPTY_MID_SLICE_MYOCARDIUM,
    QC_MYOCARDIUM_NOT_RING,
    QC_MASS_IMPLAUSIBLE,
    QC_INLINEVF_CONTOUR_MISSING,
    QC_INLINEVF_CONTOUR_IMPLAUSIBLE,
    QC_NO_PHENOTYPE,
    QC_DUPLICATE_SLICE_ACQUISITION,
    QC_PIXEL_SPACING_OUTSIDE_TRAINING,
    QC_BODY_SIZE_IMPLAUSIBLE,
    QC_IMAGE_IMPLAUSIBLE,
)
# Flags that describe the data but do not fail QC on their own.
QC_INFORMATIONAL_FLAGS: Final = frozenset({QC_NO_PHENOTYPE, QC_DUPLICATE_SLICE_ACQUISITION,
                                          QC_BODY_SIZE_IMPLAUSIBLE})
PLAUSIBLE_LV_MASS_RANGE_G: Final = (20.0, 400.0)
PLAUSIBLE_LVMI_RANGE_G_M2: Final = (10.0, 250.0)
# Adults at an imaging visit; outside, BSA-based indexing is not meaningful (the row is flagged).
PLAUSIBLE_HEIGHT_CM: Final = (120.0, 220.0)
PLAUSIBLE_WEIGHT_KG: Final = (30.0, 250.0)
# Short-axis cine stacks cover the LV in 6-24 slices of 5-10 mm (UK Biobank 9-14 at 10 mm).
PLAUSIBLE_SLICE_COUNT: Final = (6, 24)
# A short-axis cine covers the chest: a field of view under 100 mm is not a heart acquisition.
MIN_FIELD_OF_VIEW_MM: Final = 100.0
# Neighbouring pixels of an MR image are strongly correlated (0.9+ measured on real and synthetic cine);
# pixel noise is not (about 0).
MIN_NEIGHBOUR_CORRELATION: Final = 0.5

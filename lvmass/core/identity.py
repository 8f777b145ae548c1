"""Who a participant input is: the one parser of input names (zips, folders, label files).

Every place that needs a participant's UK Biobank eid and imaging visit (``instance``) from a name uses
:func:`parse_input_name`. An input of the pipeline is parsed once, where it is read: :func:`input_identity`
gives its :class:`InputIdentity`, which travels with it (the decoder takes a UK Biobank zip's eid and visit
from it, the name being the authority over anything inside the zip; the measurements, the dead letters
and the ledger take theirs from it). The analysis' label files and the generator's truth labels parse
their own names with :func:`parse_input_name`. The names understood, in order (only the last path
component counts, any extensions are ignored):

============================================  ==============================  ======================
name                                          example                         (eid, instance)
============================================  ==============================  ======================
``{eid}_{field}_{instance}_{array}[.ext]``    ``1000123_20209_2_0.zip``       (1000123, 2)
``{eid}_{instance}[.ext]``                    ``1000123_3.zip``, ``..._3.npz`` (1000123, 3)
``{eid}[.ext]``                               ``1000123``, ``1000123.zip``    (1000123, None)
``{folder}/sa.nii.gz`` (also ``sa_ED``, .nii)  ``1000123_2/sa.nii.gz``         (1000123, 2)
============================================  ==============================  ======================

A NIfTI file named after the image rather than the participant (:data:`IMAGE_FILE_STEMS`: the names the
UK Biobank reference pipeline of Bai et al. writes, ``subjects/{eid}/sa.nii.gz``) is known by its folder's
name, parsed by the same rules (:func:`naming_component`).

A name that says no visit leaves ``instance`` None; the pipeline then uses ``ANY_VENDOR_INSTANCE``
(docs/ukbb_format.md, "Participants that are not UK Biobank").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only (the study module names this one the same way)
    from lvmass.core.study import DecodedStudy

ANY_VENDOR_INSTANCE = 0  # the visit of an input whose name does not say it
UKBB_SHORT_AXIS_FIELD = 20209  # UK Biobank bulk field of the short-axis cine zips
MAX_EID = 2**63 - 1  # the results' eid column is int64
MAX_INSTANCE = 2**31 - 1  # the results' instance column is int32
_STEM = re.compile(r"^([^.]*)(?:\.[A-Za-z0-9]+)*$")  # the name before its extensions (.zip, .tar.gz)
_DIGITS = re.compile(r"^\d+$")
# NIfTI files named after the image, not the participant (Bai et al.'s UK Biobank conversion writes
# subjects/{eid}/sa.nii.gz, sa_ED.nii.gz, sa_ES.nii.gz): their folder names the participant. Lower case.
IMAGE_FILE_STEMS = frozenset({"sa", "sa_ed", "sa_es"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class InputName:
    """What an input's name says: eid, visit (None when unsaid) and, for UK Biobank names, field and
    array index."""

    eid: int
    instance: int | None
    field: int | None = None
    array: int | None = None

    @property
    def is_ukbb(self) -> bool:
        """A full UK Biobank bulk-file name ``{eid}_{field}_{instance}_{array}``."""
        return self.field is not None


def base_name(uri: str) -> str:
    """The last component of a path or URI (local, ``gs://``, Windows separators)."""
    return uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def is_nifti_name(uri: str) -> bool:
    """Whether an input is a NIfTI file by its name (``.nii`` or ``.nii.gz``, any case)."""
    return base_name(uri).lower().endswith(NIFTI_SUFFIXES)


def naming_component(uri: str) -> str:
    """The path component that names the participant: the last one, except for a NIfTI file named after
    the image (``subjects/1000123/sa.nii.gz``: :data:`IMAGE_FILE_STEMS`), which its folder names."""
    parts = uri.replace("\\", "/").rstrip("/").rsplit("/", 2)
    base = parts[-1]
    named_by_image = is_nifti_name(base) and base.split(".", 1)[0].lower() in IMAGE_FILE_STEMS
    if named_by_image and len(parts) > 1 and parts[-2]:
        return parts[-2]
    return base


def parse_input_name(uri: str) -> InputName | None:
    """(eid, instance, ...) from the name of a file or folder (:func:`naming_component`, normally the
    last path component); None when it says no eid.

    See the module docstring for the accepted forms. A part that is not all digits makes the name
    unreadable (``abc_20209_2_0.zip`` is None, not eid ``abc``).
    """
    stem_match = _STEM.match(naming_component(uri))
    if stem_match is None:
        return None
    parts = stem_match.group(1).split("_")
    if not parts or not all(_DIGITS.match(p) for p in parts):
        return None
    numbers = [int(p) for p in parts]
    if len(numbers) == 4:
        eid, field, instance, array = numbers
        return InputName(eid=eid, instance=instance, field=field, array=array)
    if len(numbers) == 2:
        return InputName(eid=numbers[0], instance=numbers[1])
    if len(numbers) == 1:
        return InputName(eid=numbers[0], instance=None)
    return None


def parse_ukbb_zip_name(name: str) -> tuple[int, int, int, int] | None:
    """``{eid}_{field}_{instance}_{array}.zip`` -> (eid, field, instance, array); None for any other name.

    ``name`` may be a path or URI; only its last component is matched.
    """
    base = base_name(name)
    if not base.lower().endswith(".zip") or base.count(".") != 1:
        return None
    parsed = parse_input_name(base)
    if parsed is None or not parsed.is_ukbb:
        return None
    assert parsed.field is not None and parsed.instance is not None and parsed.array is not None
    return parsed.eid, parsed.field, parsed.instance, parsed.array


def ids_from_name(uri: str) -> tuple[int | None, int | None]:
    """(eid, instance) from an input's name, the instance ``ANY_VENDOR_INSTANCE`` when the name has an
    eid but no visit; (None, None) when it says neither."""
    parsed = parse_input_name(uri)
    if parsed is None:
        return None, None
    return parsed.eid, parsed.instance if parsed.instance is not None else ANY_VENDOR_INSTANCE


def name_stem(uri: str) -> str:
    """A file or folder name without its extensions: ``SCD0000501`` for ``.../SCD0000501.zip`` (and for
    ``.../SCD0000501/sa.nii.gz``, :func:`naming_component`)."""
    base = naming_component(uri)
    stem_match = _STEM.match(base)
    return stem_match.group(1) if stem_match is not None else base.split(".", 1)[0]


def check_input_name(uri: str) -> None:
    """Raise ValueError when an input's name cannot identify a participant: no name at all, or an eid
    that does not fit the results' int64 column (UK Biobank eids have 7 digits)."""
    stem = name_stem(uri)
    if not stem.strip():
        raise ValueError(f"{uri}: the input has no name to identify the participant by")
    parts = stem.split("_")
    if len(parts) == 4 and all(_DIGITS.match(p) for p in parts[1:]) and not _DIGITS.match(parts[0]):
        raise ValueError(f"{uri}: a UK Biobank name ({{eid}}_{{field}}_{{instance}}_{{array}}) whose eid "
                         f"{parts[0]!r} is not a number")
    parsed = parse_input_name(uri)
    if parsed is not None and not 0 <= parsed.eid <= MAX_EID:
        raise ValueError(f"{uri}: eid {parsed.eid} in the file name is outside 0..{MAX_EID} (int64)")
    if parsed is not None and parsed.instance is not None and not 0 <= parsed.instance <= MAX_INSTANCE:
        raise ValueError(f"{uri}: instance {parsed.instance} in the file name is outside 0..{MAX_INSTANCE}")


def input_key(uri: str) -> tuple[str, int]:
    """(participant_id, instance) an input's name promises: two inputs with one key are one participant
    and visit. The eid as text where the name has one, else the name's stem; visit ANY_VENDOR_INSTANCE
    where the name says none."""
    parsed = parse_input_name(uri)
    if parsed is None:
        return name_stem(uri), ANY_VENDOR_INSTANCE
    instance = parsed.instance if parsed.instance is not None else ANY_VENDOR_INSTANCE
    return str(parsed.eid), instance


@dataclass(frozen=True)
class InputIdentity:
    """What an input's name says about its participant (:func:`input_identity`), parsed once and carried.

    ``participant_id`` is the eid as text where the name has one, else the name's stem (``SCD0000501``);
    ``instance`` is ``ANY_VENDOR_INSTANCE`` where the name says no visit (:attr:`key` is what two inputs of
    one participant and visit share). ``ukbb_zip``: a UK Biobank bulk-file zip name
    (``{eid}_{field}_{instance}_{array}.zip``), whose eid and visit the decoder takes as the study's.
    ``problem``: why the name cannot identify a participant (:func:`check_input_name`'s message), None when
    it can; the pipeline turns it into a ``read`` dead letter before any byte is read."""

    uri: str
    participant_id: str
    eid: int | None
    instance: int
    ukbb_zip: bool = False
    problem: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """(participant_id, instance): the same for two inputs of one participant and visit."""
        return self.participant_id, self.instance

    def check(self) -> None:
        """Raise ValueError (naming the input) when the name cannot identify a participant."""
        if self.problem is not None:
            raise ValueError(self.problem)


def input_identity(uri: str) -> InputIdentity:
    """The :class:`InputIdentity` of an input, from its name alone (never raises: a name that cannot
    identify a participant says why in ``problem``)."""
    problem = None
    try:
        check_input_name(uri)
    except ValueError as exc:
        problem = str(exc)
    parsed = parse_input_name(uri)
    if parsed is None:
        return InputIdentity(uri, name_stem(uri), None, ANY_VENDOR_INSTANCE, problem=problem)
    instance = parsed.instance if parsed.instance is not None else ANY_VENDOR_INSTANCE
    return InputIdentity(uri, str(parsed.eid), parsed.eid, instance,
                         ukbb_zip=parse_ukbb_zip_name(uri) is not None, problem=problem)


@dataclass(frozen=True)
class ParticipantIdentity:
    """Who a study is: ``participant_id`` (text, always set), the UK Biobank ``eid`` when known, and the
    imaging visit (``ANY_VENDOR_INSTANCE`` when nothing says it)."""

    participant_id: str
    eid: int | None
    instance: int


def participant_identity(study: DecodedStudy) -> ParticipantIdentity:
    """The identity of a study, the file or folder name first, the DICOM PatientID last.

    1. the decoder's (a UK Biobank zip name ``{eid}_20209_{instance}_{array}.zip``);
    2. the name of any other zip or folder (``study.name``, the :class:`InputIdentity` the input was read
       with: ``{eid}.zip``, ``{eid}_{instance}.zip``, a folder named by the eid); the instance defaults to
       ``ANY_VENDOR_INSTANCE`` (0: visit unknown);
    3. a numeric PatientID (0010,0020) shared by the slices (instance ``ANY_VENDOR_INSTANCE``): scanners
       and anonymisers put all sorts of numbers there, so it never overrides a name;
    4. otherwise the participant has no eid and is known by the stem of its file or folder name
       (``SCD0000501`` for ``SCD0000501.zip``).

    ``participant_id`` is the eid as text whenever there is an eid. A study built by hand, without
    ``name``, is known by its ``source_uri``.
    """
    name = study.name if study.name is not None else input_identity(study.source_uri)
    name.check()
    if study.eid is not None:
        instance = int(study.instance if study.instance is not None else ANY_VENDOR_INSTANCE)
        return ParticipantIdentity(str(int(study.eid)), int(study.eid), instance)
    if name.eid is not None:
        return ParticipantIdentity(name.participant_id, name.eid, name.instance)
    if study.patient_id.isdigit() and int(study.patient_id) <= MAX_EID:
        return ParticipantIdentity(str(int(study.patient_id)), int(study.patient_id), ANY_VENDOR_INSTANCE)
    return ParticipantIdentity(name.participant_id, None, ANY_VENDOR_INSTANCE)


def participant_ids(study: DecodedStudy) -> tuple[int, int]:
    """(eid, instance) of a study with an eid (:func:`participant_identity`); ValueError naming the file
    when it has none (callers that can take any participant use :func:`participant_identity`)."""
    identity = participant_identity(study)
    if identity.eid is None:
        raise ValueError(
            f"{study.source_uri}: no participant id: not a UK Biobank zip name, the file or folder name does "
            "not start with the eid ('{eid}.zip' or '{eid}_{instance}.zip'), and no numeric PatientID "
            "(0010,0020)"
        )
    return identity.eid, identity.instance

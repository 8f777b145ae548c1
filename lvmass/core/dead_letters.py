"""Dead letters: the one ``ErrorRecord`` for an element a pipeline step failed on (pure, no Beam).

Beam hands a failed element over as ``(element, (exc_type, repr(exc), traceback_lines))``
(``with_exception_handling()``). :func:`error_record` turns that into one row naming the input, the
participant when it is known, the stage and the exception's own message, which is taken from the last
line of the formatted traceback (what ``str(exc)`` printed), so nothing is re-parsed from a ``repr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.identity import InputIdentity, input_identity
from lvmass.core.measure import Measurement, ParticipantTensor
from lvmass.core.schema import STAGE_DECODE, STAGE_READ, ErrorRecord, ResultRecord
from lvmass.core.study import DecodedStudy, DecodeError


def _qualified_name(exc_type: type) -> str:
    """The exception's name as ``traceback`` prints it (module-qualified outside builtins)."""
    module = getattr(exc_type, "__module__", None)
    name = getattr(exc_type, "__qualname__", getattr(exc_type, "__name__", str(exc_type)))
    return name if module in (None, "builtins", "__main__") else f"{module}.{name}"


def exception_message(exc_type: type, exc_repr: str, traceback_lines: Sequence[str] = ()) -> str:
    """``str(exc)`` of a dead letter's exception: the final ``Type: message`` line of its traceback;
    the ``repr`` when there is no traceback to read it from."""
    prefix = f"{_qualified_name(exc_type)}: "
    for line in reversed(list(traceback_lines)):
        if line.startswith(prefix):
            return line[len(prefix):].rstrip("\n")
        if line.rstrip("\n") == prefix[:-2]:  # raised with an empty message
            return ""
    return exc_repr


def _name_identity(name: InputIdentity) -> tuple[str | None, int | None, int | None]:
    """(participant_id, eid, instance) from what the input's name says; Nones where it says nothing usable
    (a name ``identity.check_input_name`` rejects), and no visit where it names no participant."""
    if name.problem is not None:
        return None, None, None
    return name.participant_id, name.eid, name.instance if name.eid is not None else None


def identity_of(element: Any) -> tuple[str, str | None, int | None, int | None]:
    """(source URI, participant_id, eid, instance) of any element a step may fail on: the identity it
    carries (a selected input's, a study's name, a participant's or a measurement's), else what the name of
    the file it names says."""
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], str):
        key, element = element  # keyed by source URI (RunInference's KeyedModelHandler)
        if not isinstance(element, ParticipantTensor | Measurement | DecodedStudy):
            return (key, *_name_identity(input_identity(key)))
    if isinstance(element, tuple) and element and isinstance(element[0], Measurement):
        element = element[0]  # (measurement, phenotype) joined for calibration
    if isinstance(element, ParticipantTensor | Measurement | ResultRecord):
        return element.source_uri, element.participant_id, element.eid, element.instance
    if isinstance(element, DecodedStudy):
        name = element.name if element.name is not None else input_identity(element.source_uri)
        return (element.source_uri, *_name_identity(name))
    carried = getattr(element, "identity", None)  # a selected input (beam_pipeline's ParticipantInput)
    if isinstance(carried, InputIdentity):
        return (carried.uri, *_name_identity(carried))
    metadata = getattr(element, "metadata", None)
    uri = getattr(metadata, "path", None) or getattr(element, "path", None) or str(element)
    return (uri, *_name_identity(input_identity(uri)))


def error_record(
    stage: str, element: Any, exc_type: type, exc_repr: str, traceback_lines: Sequence[str] = ()
) -> ErrorRecord:
    """One dead-letter row: where it failed, on which input, and the error's own message.

    A ``DecodeError`` names its own step (``uri: step: reason``): ``read`` stays a read failure, every
    other step is a decode failure."""
    uri, participant_id, eid, instance = identity_of(element)
    message = exception_message(exc_type, exc_repr, traceback_lines)
    if exc_type is DecodeError or getattr(exc_type, "__name__", "") == "DecodeError":
        step = message[len(uri) + 2:].split(":", 1)[0] if message.startswith(f"{uri}: ") else ""
        stage = STAGE_READ if step == STAGE_READ else STAGE_DECODE
    return ErrorRecord(
        source_uri=uri, participant_id=participant_id, eid=eid, instance=instance, stage=stage,
        error_type=getattr(exc_type, "__name__", str(exc_type)), message=message,
        pipeline_version=PIPELINE_VERSION,
    )

"""The memory one participant may take while it is decoded and its tensor built, checked before any frame
is read (pure: no I/O).

Why: the size caps of ``zip_members`` hold per member, and a participant of many members, each under
them, still added up: a 4.6 MB zip of 20 slices of 64 MiB each took a worker from 1 to 6 GB. What a
participant costs is known from its headers before a pixel is read (Rows x Columns of every chosen
frame, the declared size of the largest member), so the decoder estimates it (:func:`bytes_needed`) and
refuses a participant beyond :data:`MAX_PARTICIPANT_BYTES` with a dead letter that names the input, its
largest member and the numbers (:func:`check`), instead of finding out from the operating system.

The estimate, per chosen frame of ``n`` pixels, follows the decode and tensor code: the decoded float32
image and its float32 resampling onto the tensor grid are held for every slice until the tensor exists
(:data:`HELD_BYTES_PER_PIXEL`); one slice at a time is resampled in float64 (a copy, the anti-aliasing
filter's output, the interpolation's output: :data:`PEAK_BYTES_PER_PIXEL`); and one member at a time is
read whole (its declared size). ``benchmarks/memory_per_participant.py`` measures it against peak RSS.
"""

from __future__ import annotations

from collections.abc import Sequence

MIB = 1024 * 1024
# Real studies take a few MB (UK Biobank: ~13 slices of 208 x 192 pixels); this leaves room for 60
# slices of 1024 x 1024 while a worker serving both models (about 1 GB) stays under 2.5 GB per
# decoding thread (benchmarks/results/participant_memory.json).
MAX_PARTICIPANT_BYTES = 512 * MIB
HELD_BYTES_PER_PIXEL = 8  # each chosen frame: decoded float32 + resampled float32, held until the tensor
PEAK_BYTES_PER_PIXEL = 24  # the frame being resampled: float64 copy, filtered, interpolated


class ParticipantTooLarge(ValueError):
    """A participant would take more memory than :data:`MAX_PARTICIPANT_BYTES`; the message says why."""


def bytes_needed(frame_pixels: Sequence[int], largest_read_bytes: int = 0) -> int:
    """Peak bytes to decode frames of ``frame_pixels`` pixels each and build their tensor, reading one
    member of at most ``largest_read_bytes`` at a time."""
    if not frame_pixels:
        return int(largest_read_bytes)
    return (HELD_BYTES_PER_PIXEL * int(sum(frame_pixels)) + PEAK_BYTES_PER_PIXEL * int(max(frame_pixels))
            + int(largest_read_bytes))


def check(frame_pixels: Sequence[int], largest_read_bytes: int = 0, *, what: str,
          budget: int = MAX_PARTICIPANT_BYTES) -> int:
    """The bytes needed (:func:`bytes_needed`); :class:`ParticipantTooLarge` beyond ``budget``.

    ``what`` describes the frames in the message (``"20 frames of up to 5700 x 5800 pixels"``)."""
    needed = bytes_needed(frame_pixels, largest_read_bytes)
    if needed > budget:
        raise ParticipantTooLarge(
            f"{what} would take about {needed / MIB:.0f} MiB to decode and resample, more than the "
            f"{budget / MIB:.0f} MiB one participant may use (lvmass.core.budget.MAX_PARTICIPANT_BYTES)")
    return needed

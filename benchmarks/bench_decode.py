"""CPU seconds per participant to decode a full-fidelity UK Biobank zip: naive, old decoder, new decoder.

Makes its own participants with ``lvmass.synth`` (``fidelity="full"``: 50 phases of every slice, the
InlineVF series, the manifest; ~1,000 DICOMs per zip) and, by default, pads every Siemens CSA element of
every DICOM to a realistic size: the generator writes 16-byte stand-ins for (0029,1010) CSA Image Header
Info and (0029,1020) CSA Series Header Info, real ones are tens of KB (the series header carries the
whole ``MrPhoenixProtocol`` text). The padding is CSA-like (``SV10`` tag records with ASCII values and an
``ASCCONV`` protocol text, different in every instance), so it compresses about as well as the real
thing. Every DICOM header then has to be inflated past those blocks to reach the overlay group and
PixelData, as on a real file.

Per participant and method, the CPU time of this process (``time.process_time``; everything here is
single-threaded) is measured ``--repeats`` times, and the median is kept; the figures are the median over
participants of those medians. Methods, all in the same run on the same zips:

``naive``
    extract every member (``ZipFile.read``) and parse every DICOM in full with pydicom, pixel data read
    as bytes (not converted to arrays, so the naive figure is a lower bound of what naive code costs);
``floor``
    the central directory plus inflating, whole, only the members the decoder parses for pixels and
    overlays (its ``DecodeStats.members_decoded``), nothing parsed: about what no decoder can beat;
``old``
    ``decode_zip`` with ``strategy="scan_all_headers"``: pydicom header pass over every candidate
    member, as the decoder did before;
``new``
    ``decode_zip`` with the default strategy.

The run checks that ``old`` and ``new`` decode every participant to the same study (bit-identical images
and outlines, same geometry and flags) and records it. ``--cohort DIR`` keeps the generated zips there and
reuses them on the next run. The figures, each with its command (the JSON records the command, the
machine, its load and the numbers):

``benchmarks/results/decode_speed.json``: the decoder as it is (CSA blocks of 12 and 24 KB)::

    python benchmarks/bench_decode.py --participants 8 --repeats 3

``benchmarks/results/decode_speed_before.json``: the decoder before the minimal tag reader and the trusted
layout (commit ee1746a; both ``old`` and ``new`` time its only path), on the same zips::

    git worktree add /tmp/before ee1746a
    PYTHONPATH=/tmp/before python benchmarks/bench_decode.py --participants 8 --repeats 3 \
        --out benchmarks/results/decode_speed_before.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import statistics
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode_speed.json"
TARGET_RATIO = 20.0  # the new decoder at least 20x cheaper than the naive approach (issue: performance)
FIRST_EID = 4100001
_CSA_TAGS = (0x00291010, 0x00291020)
_CSA_NAMES = (
    "EchoLinePosition", "EchoColumnPosition", "EchoPartitionPosition", "UsedChannelMask",
    "Actual3DImaPartNumber", "ICE_Dims", "B_value", "Filter1", "Filter2", "ProtocolSliceNumber",
    "RealDwellTime", "PixelFile", "PixelFileName", "SliceMeasurementDuration", "SequenceMask",
    "AcquisitionMatrixText", "MeasuredFourierLines", "FlowEncodingDirection", "FlowVenc",
    "PhaseEncodingDirectionPositive", "NumberOfImagesInMosaic", "DiffusionGradientDirection", "ImageGroup",
    "SliceNormalVector", "DiffusionDirectionality", "TimeAfterStart", "FlipAngle", "SequenceName",
    "RepetitionTime", "EchoTime", "NumberOfAverages", "VoxelThickness", "VoxelPhaseFOV", "VoxelReadoutFOV",
    "VoxelPositionSag", "VoxelPositionCor", "VoxelPositionTra", "VoxelNormalSag", "VoxelNormalCor",
    "VoxelNormalTra", "VoxelInPlaneRot", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceLocation", "SliceThickness", "SpectrumTextRegionLabel", "Comp_Algorithm", "Comp_Blended",
    "Comp_ManualAdjusted", "Comp_AutoParam", "Comp_AdjustedParam", "Comp_JobID", "FMRIStimulInfo",
    "FlowEncodingDirectionString", "RepetitionTimeEffective", "CsiImagePositionPatient",
    "CsiImageOrientationPatient", "CsiPixelSpacing", "CsiSliceLocation", "CsiSliceThickness",
    "OriginalSeriesNumber", "OriginalImageNumber", "ImaAbsTablePosition", "NonPlanarImage", "MoCoQMeasure",
    "LQAlgorithm", "SlicePosition_PCS", "RBMoCoTrans", "RBMoCoRot", "MultistepIndex", "ImaRelTablePosition",
    "ImaCoilString", "RFSWDDataType", "GSWDDataType", "NormalizeManipulated", "ImaPATModeText", "B_matrix",
    "BandwidthPerPixelPhaseEncode", "FMRIStimulLevel", "MosaicRefAcqTimes", "AutoInlineImageFilterEnabled",
    "QCData", "ExamLandmarks", "ExamDataRole", "MRDiffusion", "RealWorldValueMapping", "DataFileName",
    "DataRole", "ImageHistory", "Distorcor",
)


# --- the cohort ------------------------------------------------------------------------------------


def _csa_element(name: str, vr: str, values: list[str]) -> bytes:
    """One CSA2 tag record: name[64], VM, VR[4], SyngoDT, NumberOfItems, 77, then the items (each: four
    int32 holding its length, then the value padded to 4 bytes)."""
    out = [name.encode("ascii")[:63].ljust(64, b"\x00"),
           struct.pack("<i4siii", len(values), vr.encode("ascii").ljust(4, b"\x00"), 3, len(values), 77)]
    for value in values:
        raw = value.encode("ascii") + b"\x00"
        out.append(struct.pack("<iiii", len(raw), len(raw), 77, len(raw)))
        out.append(raw.ljust((len(raw) + 3) // 4 * 4, b"\x00"))
    return b"".join(out)


def csa_block(n_bytes: int, rng: np.random.Generator, *, protocol: bool) -> bytes:
    """A CSA2 header (``SV10``) of about ``n_bytes``: tag records with numeric ASCII values and, for the
    series header (``protocol``), the ``### ASCCONV BEGIN ###`` protocol text real scanners embed."""
    records: list[bytes] = []
    size = 16
    k = 0
    while size < (n_bytes // 2 if protocol else n_bytes) - 200:
        name = _CSA_NAMES[k % len(_CSA_NAMES)]
        n_values = int(rng.integers(1, 7))
        values = [f"{rng.normal(0.0, 200.0):.8f}" for _ in range(n_values)]
        records.append(_csa_element(name, "DS", values))
        size += len(records[-1])
        k += 1
    if protocol:
        lines = ["### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 ###"]
        j = 0
        while sum(len(line) + 1 for line in lines) < n_bytes - size - 200:
            name = _CSA_NAMES[j % len(_CSA_NAMES)]
            lines.append(f"sProt.as{name}[{j % 7}].d{name}Value{j // 7}\t = {rng.normal(0.0, 100.0):.6f}")
            j += 1
        lines.append("### ASCCONV END ###")
        records.append(_csa_element("MrPhoenixProtocol", "UN", ["\n".join(lines)]))
    head = b"SV10\x04\x03\x02\x01" + struct.pack("<II", len(records), 77)
    block = head + b"".join(records)
    return block + b"\x00" * (len(block) % 2)


def pad_csa(dicom: bytes, image_kb: float, series_kb: float, rng: np.random.Generator) -> bytes:
    """Replace the generator's 16-byte CSA stand-ins (Explicit VR Little Endian OB elements) by blocks of
    the given sizes. Members without them (the secondary capture) are returned as they are."""
    for tag, kb in zip(_CSA_TAGS, (image_kb, series_kb), strict=True):
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"OB\x00\x00"
        at = dicom.find(head)
        if at < 0 or kb <= 0:
            continue
        (length,) = struct.unpack_from("<I", dicom, at + 8)
        block = csa_block(int(kb * 1024), rng, protocol=tag == 0x00291020)
        dicom = dicom[:at] + head + struct.pack("<I", len(block)) + block + dicom[at + 12 + length:]
    return dicom


def make_cohort(directory: Path, participants: int, csa_kb: tuple[float, float], seed: int) -> list[Path]:
    """Full-fidelity participants (UK Biobank layout) written as zips, CSA blocks padded."""
    from lvmass.synth import SynthConfig, render_participant

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(participants):
        eid = FIRST_EID + k
        path = directory / f"{eid}_20209_2_0.zip"
        paths.append(path)
        if path.exists():
            continue
        data = render_participant(eid, seed, SynthConfig(fidelity="full"))
        rng = np.random.default_rng([seed, eid])
        members = []
        with zipfile.ZipFile(io.BytesIO(data.zip_bytes)) as zf:
            for info in zf.infolist():
                member = zf.read(info)
                if info.filename.lower().endswith(".dcm"):
                    member = pad_csa(member, *csa_kb, rng)
                members.append((info, member))
        tmp = path.with_suffix(".part")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for info, member in members:
                out.writestr(info, member, compresslevel=1)  # the generator's level
        tmp.rename(path)
        print(f"wrote {path.name}: {path.stat().st_size / 1e6:.1f} MB, {len(members)} members", flush=True)
    return paths


# --- the methods -----------------------------------------------------------------------------------


def naive(path: Path) -> int:
    import pydicom
    from pydicom.errors import InvalidDicomError

    n = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            data = zf.read(info)
            try:
                pydicom.dcmread(io.BytesIO(data))
            except InvalidDicomError:
                continue
            n += 1
    return n


def floor(path: Path, members: list[str]) -> int:
    with zipfile.ZipFile(path) as zf:
        return sum(len(zf.read(name)) for name in members)


def decoder(path: Path, *, old: bool):
    """(study, stats) of one zip: ``old`` reads every header with pydicom (``scan_all_headers``)."""
    from lvmass.core.decode import DecodeRequest, decode_zip

    request = DecodeRequest(str(path), strategy="scan_all_headers" if old else "fast")
    with path.open("rb") as handle:
        decoded = decode_zip(handle, request)
    return decoded.study, decoded.stats


def _cpu(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(result of the last call, median CPU seconds over ``repeats`` calls)."""
    times = []
    result = None
    for _ in range(repeats):
        cpu0 = time.process_time()
        result = fn()
        times.append(time.process_time() - cpu0)
    return result, statistics.median(times)


def same_study(a, b) -> bool:
    """Bit-identical images and outlines, identical geometry, descriptions and flags."""
    if a.n_slices != b.n_slices:
        return False
    for x, y in zip(a.images, b.images, strict=True):
        if x.dtype != y.dtype or not np.array_equal(x, y):
            return False
    for x, y in zip(a.outlines, b.outlines, strict=True):
        if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
            return False
    fields = ("eid", "instance", "pixel_spacing_mm", "slice_spacing_mm", "slice_positions_mm",
              "end_diastolic_trigger_times_ms", "series_descriptions", "qc_flags", "patient_id",
              "in_plane_view")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        a.slice_thickness_mm == b.slice_thickness_mm or (np.isnan(a.slice_thickness_mm)
                                                          and np.isnan(b.slice_thickness_mm)))


def measure(paths: list[Path], repeats: int) -> list[dict[str, Any]]:
    rows = []
    decoder(paths[0], old=False)  # imports and caches
    for path in paths:
        row: dict[str, Any] = {"zip": path.name, "zip_mb": round(path.stat().st_size / 1e6, 2)}
        with zipfile.ZipFile(path) as zf:
            row["members"] = len(zf.infolist())
        (new_study, new_stats), row["new_cpu_s"] = _cpu(lambda p=path: decoder(p, old=False), repeats)
        (old_study, old_stats), row["old_cpu_s"] = _cpu(lambda p=path: decoder(p, old=True), repeats)
        row["dicoms"], row["naive_cpu_s"] = _cpu(lambda p=path: naive(p), repeats)
        chosen = list(getattr(new_stats, "members_decoded", ()) or ())
        if chosen:
            _, row["floor_cpu_s"] = _cpu(lambda p=path, c=chosen: floor(p, c), repeats)
        row["members_decoded"] = len(chosen) or None
        row["headers_read_new"] = new_stats.headers_read
        row["headers_read_old"] = old_stats.headers_read
        row["bytes_read_new_mb"] = round(new_stats.bytes_read / 1e6, 3)
        row["bytes_read_old_mb"] = round(old_stats.bytes_read / 1e6, 3)
        row["identical_old_new"] = same_study(old_study, new_study)
        for key in ("new_cpu_s", "old_cpu_s", "naive_cpu_s", "floor_cpu_s"):
            if key in row:
                row[key] = round(row[key], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def machine() -> dict[str, Any]:
    import pydicom

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
    }


def _git_commit() -> str | None:
    """HEAD, and whether the decoder's modules differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=root)
        modules = ["lvmass/core/decode/", *(f"lvmass/core/{m}.py" for m in ("dicom_headers", "zip_members",
                                                                            "slices", "manifest"))]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *modules], capture_output=True,
                               text=True, cwd=root).stdout.strip()
        return out.stdout.strip() + (" (decoder modules modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _decoder_file() -> str:
    import lvmass.core.decode

    return str(lvmass.core.decode.__file__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=8, help="full-fidelity participants to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per participant and method")
    parser.add_argument("--csa_kb", "--csa-kb", type=float, nargs=2, default=(12.0, 24.0),
                        metavar=("IMAGE_KB", "SERIES_KB"),
                        help="sizes of the (0029,1010) and (0029,1020) CSA blocks; 0 0 keeps the stand-ins")
    parser.add_argument("--seed", type=int, default=11, help="generator seed")
    parser.add_argument("--cohort", default=None,
                        help="folder for the zips (kept and reused); default a temporary one")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON result")
    parser.add_argument("--note", default="", help="free text recorded with the result")
    args = parser.parse_args(argv)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cohort) if args.cohort else Path(tmp)
        folder = folder / f"seed{args.seed}_csa{args.csa_kb[0]:g}_{args.csa_kb[1]:g}"
        paths = make_cohort(folder, args.participants, tuple(args.csa_kb), args.seed)
        wall0 = time.perf_counter()
        rows = measure(paths, args.repeats)
        wall = time.perf_counter() - wall0

    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    summary = {k: med(f"{k}_cpu_s") for k in ("naive", "old", "new", "floor")}
    ratio = {
        "naive_over_new": round(summary["naive"] / summary["new"], 1) if summary["new"] else None,
        "naive_over_old": round(summary["naive"] / summary["old"], 2) if summary["old"] else None,
        "old_over_new": round(summary["old"] / summary["new"], 1) if summary["new"] else None,
    }
    result = {
        "script": "benchmarks/bench_decode.py",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": _git_commit(),
        "decoder_module": _decoder_file(),
        "note": args.note,
        "machine": machine(),
        "cohort": {
            "participants": len(rows),
            "fidelity": "full",
            "seed": args.seed,
            "csa_kb": list(args.csa_kb),
            "zip_mb": med("zip_mb"),
            "members": med("members"),
        },
        "repeats": args.repeats,
        "cpu_s_per_participant_median": summary,
        "ratios": ratio,
        "target": {"naive_over_new_at_least": TARGET_RATIO,
                   "met": bool(ratio["naive_over_new"] and ratio["naive_over_new"] >= TARGET_RATIO)},
        "all_identical_old_new": all(r["identical_old_new"] for r in rows),
        "wall_s_measuring": round(wall, 1),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "per_participant": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu_s_per_participant_median", "ratios",
                                              "all_identical_old_new")}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

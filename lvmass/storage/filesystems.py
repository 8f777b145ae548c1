"""Reading and writing through Beam's ``FileSystems``, so local paths and ``gs://`` work the same.

Why not ``open()``: the pipeline runs on Dataflow workers where inputs and outputs live in GCS, and in
tests against a local folder or a GCS emulator. Every byte the pipeline reads or writes outside Beam's
own sources/sinks goes through these few functions. Compression is never guessed from the file name
(``.gz`` phenotype files aside, which are decompressed on request): a participant zip must come back
as the raw, seekable byte stream that ``zipfile`` needs.
"""

from __future__ import annotations

import io
import re
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    """Join path components with the right separator for ``base``'s filesystem (``/`` for ``gs://``)."""
    return FileSystems.join(base, *parts)


def exists(path: str) -> bool:
    """True when ``path`` (a file, local or ``gs://``) exists."""
    return FileSystems.exists(path)


def size(path: str) -> int | None:
    """The size of the file ``path`` in bytes; None when there is none."""
    found = [m for result in FileSystems.match([path]) for m in result.metadata_list]
    return int(found[0].size_in_bytes) if found else None


def open_read(path: str) -> IO[bytes]:
    """Open ``path`` for reading as a binary stream, without decompression.

    Local files and GCS objects both come back seekable. A GCS stream fetches a buffer (Beam: 16 MiB)
    at a time and fetches again on every seek outside it, so code that seeks around in a remote
    object should use :func:`random_access` instead.
    """
    return FileSystems.open(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED)


def ensure_seekable(stream: IO[bytes]) -> IO[bytes]:
    """Return ``stream`` itself when it can seek, else its bytes in memory (the last resort)."""
    seekable = getattr(stream, "seekable", None)
    if seekable is not None and seekable():
        return stream
    return io.BytesIO(stream.read())


def is_local(path: str) -> bool:
    """True for a path of the local filesystem (no URI scheme, or ``file://``)."""
    return FileSystems.get_scheme(path) in (None, "file")


def random_access(stream: IO[bytes], path: str) -> tuple[IO[bytes], int]:
    """A stream of ``path`` to seek around in, and the bytes fetched up front to make it.

    A local file stays as it is (seekable, read on demand: 0 bytes up front). Anything else
    (``gs://``...) is read once, whole, into memory: its buffered reader refetches on each seek outside
    its buffer, and a participant zip (tens of MB) is visited in several passes, so streaming it would
    download it several times over.
    """
    if is_local(path):
        return ensure_seekable(stream), 0
    data = stream.read()
    return io.BytesIO(data), len(data)


def read_bytes(path: str) -> bytes:
    """The whole content of a (small) file: phenotype tables, model cards, calibration JSON."""
    with open_read(path) as stream:
        return stream.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
    """The whole content of a small text file."""
    return read_bytes(path).decode(encoding)


def write_bytes(path: str, data: bytes, *, mime_type: str = "application/octet-stream") -> None:
    """Create (or replace) ``path`` with ``data`` (parent folders created where the filesystem has them)."""
    with FileSystems.create(path, mime_type=mime_type,
                            compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        stream.write(data)


def write_text(path: str, text: str, *, mime_type: str = "text/plain") -> None:
    """Create (or replace) ``path`` with UTF-8 ``text``."""
    write_bytes(path, text.encode("utf-8"), mime_type=mime_type)


def write_bytes_atomic(path: str, data: bytes, *, temp_folder: str,
                       mime_type: str = "application/octet-stream") -> None:
    """Create (or replace) ``path`` so that a reader, or a process killed half-way, sees the old content
    or the new, never part of it.

    A ``gs://`` object is atomic by itself (it exists once its upload completes). A local file is
    written whole under ``temp_folder`` (on the same filesystem, outside any folder a reader lists) and
    moved into place with ``os.replace``, which is atomic on POSIX; the file is flushed to disk first,
    so a power cut cannot leave a renamed but empty file."""
    if not is_local(path):
        write_bytes(path, data, mime_type=mime_type)
        return
    import os
    import uuid

    local = _local_path(path)
    temp_dir = _local_path(temp_folder)
    os.makedirs(temp_dir, exist_ok=True)
    os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    temp = os.path.join(temp_dir, f"{os.path.basename(local)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        _move_into_place(temp, local)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _move_into_place(temp: str, destination: str) -> None:
    """The commit of one local atomic write: ``os.replace`` (atomic on POSIX)."""
    import os

    os.replace(temp, destination)


def _local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def delete_files(paths: list[str]) -> None:
    """Delete every file of ``paths`` (local or ``gs://``); one already gone is not an error, so a
    clean-up killed half-way can simply run again."""
    present = [p for p in paths if exists(p)]
    if present:
        FileSystems.delete(present)


def prune_empty_folders(folder: str) -> None:
    """Remove the empty folders below a local ``folder``, and ``folder`` itself when it ends empty
    (deleting files leaves them behind; ``gs://`` has no folders)."""
    if not is_local(folder):
        return
    import os

    root = _local_path(folder)
    for current, _dirs, _files in sorted(os.walk(root, topdown=False), key=lambda t: -len(t[0])):
        if not os.listdir(current):
            os.rmdir(current)


def rename(source: str, destination: str) -> None:
    """Move one file (a ``gs://`` object is copied, then deleted)."""
    if is_local(destination):
        import os

        os.makedirs(os.path.dirname(_local_path(destination)) or ".", exist_ok=True)
    FileSystems.rename([source], [destination])


def match(pattern: str) -> list[str]:
    """Sorted paths matching a glob (local or ``gs://``); empty when nothing matches."""
    results = FileSystems.match([pattern])
    return sorted(m.path for result in results for m in result.metadata_list)


def folder_pattern(pattern: str) -> re.Pattern[str]:
    """A regex whose match at the start of a file path is the participant folder ``pattern`` matched.

    Beam's glob (``FileSystem.translate_pattern``): ``*`` never crosses ``/``, so the prefix of a path
    below the folder that matches ``pattern`` and is followed by a separator is exactly that folder.
    """
    anchored = FileSystem.translate_pattern(pattern.rstrip("/\\"))
    if not anchored.endswith(r"\Z"):  # pragma: no cover - Beam's translation always ends so
        raise ValueError(f"unexpected glob translation of {pattern!r}: {anchored!r}")
    return re.compile(anchored[: -len(r"\Z")] + r"(?=[/\\])")


def list_files(folder: str) -> list[str]:
    """Sorted paths of every file below ``folder``, at any depth; empty when there is none.

    ``folder`` is a local folder or a ``gs://`` prefix taken as a folder (``gs://b/run`` never lists
    ``gs://b/run2/...``); it is matched as a glob, so it must not hold ``*``, ``?`` or ``[``.
    """
    return match(join(folder.rstrip("/\\"), "**"))


def empty_folders(pattern: str) -> list[str]:
    """Sorted local folders ``pattern`` matches (``*`` never crossing ``/``, as Beam's glob) that hold no
    file at any depth; always empty for ``gs://`` (a bucket has no folders, only names)."""
    if not is_local(pattern):
        return []
    import glob
    import os

    out = []
    for path in glob.glob(_local_path(pattern)):
        if os.path.isdir(path) and not any(files for _, _, files in os.walk(path)):
            out.append(path)
    return sorted(out)


def has_files(folder: str) -> bool:
    """Whether any file lies below ``folder`` (as :func:`list_files` takes it); the listing stops at the
    first one found."""
    results = FileSystems.match([join(folder.rstrip("/\\"), "**")], limits=[1])
    return any(result.metadata_list for result in results)


class _BeamArrowHandler(pafs.FileSystemHandler):
    """Read-only pyarrow filesystem handler over Beam's ``FileSystems``: pyarrow (``pyarrow.dataset``,
    ``pyarrow.parquet``) then reads ``gs://`` as this module does, emulator included. Paths are full
    URIs (``gs://bucket/key``); files are opened raw (no decompression) and read on demand."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BeamArrowHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "beam"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = []
        for path in paths:
            found = [m for result in FileSystems.match([path]) for m in result.metadata_list]
            infos.append(pafs.FileInfo(path, pafs.FileType.File, size=found[0].size_in_bytes) if found
                         else pafs.FileInfo(path, pafs.FileType.NotFound))
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        pattern = join(selector.base_dir.rstrip("/\\"), "**" if selector.recursive else "*")
        results = FileSystems.match([pattern])
        return [pafs.FileInfo(m.path, pafs.FileType.File, size=m.size_in_bytes)
                for result in results for m in result.metadata_list]

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.PythonFile(open_read(path), mode="r")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("a Beam FileSystems view for pyarrow is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def arrow_filesystem(path: str) -> pafs.FileSystem:
    """The pyarrow filesystem to read ``path`` (and its neighbours) with: pyarrow's own for a plain
    local path, else a read-only view of Beam's ``FileSystems`` (``gs://``), so that ``pyarrow.dataset`` and
    ``pyarrow.parquet`` read remote files through the same client as the pipeline."""
    if FileSystems.get_scheme(path) is None:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(_BeamArrowHandler())

"""``gs://`` in and out, against an in-process GCS emulator (gcp-storage-emulator).

Beam's GCS filesystem and google-cloud-storage both honour ``STORAGE_EMULATOR_HOST``; Beam gets no
credentials (an anonymous client) so it never probes the cloud metadata server.
"""

from __future__ import annotations

import io
import json
import socket

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from analysis import io as aio
from beam_pipeline.pipeline import run
from lvmass.core import contracts
from lvmass.core.schema import ERRORS_SCHEMA, RESULTS_FILE_SCHEMA
from lvmass.storage import filesystems
from tests.dicom_factory import ukbb_participant_zip

BUCKET = "lvmass-test"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def gcs(monkeypatch):
    """A running emulator with one bucket; Beam and the client library pointed at it, anonymously."""
    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    port = _free_port()
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{port}")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    try:
        yield storage.Client.create_anonymous_client().bucket(BUCKET)
    finally:
        server.stop()


def test_filesystems_roundtrip(gcs):
    path = f"gs://{BUCKET}/x/notes.txt"
    filesystems.write_text(path, "hello gcs")
    assert filesystems.exists(path)
    assert filesystems.read_text(path) == "hello gcs"
    with filesystems.open_read(path) as stream:
        assert stream.seekable()
        stream.seek(6)
        assert stream.read() == b"gcs"
    assert filesystems.match(f"gs://{BUCKET}/x/*.txt") == [path]
    assert gcs.blob("x/notes.txt").download_as_bytes() == b"hello gcs"


def test_pipeline_reads_and_writes_gcs(gcs):
    for eid, seed in ((1000001, 1), (1000002, 2)):
        z = ukbb_participant_zip(eid, n_slices=8, seed=seed)
        gcs.blob(f"20209/{z.name}").upload_from_string(z.data)
    gcs.blob("pheno/phenotypes.csv").upload_from_string(
        "eid,sex,age,height_cm,weight_kg\n1000001,male,61,181,82\n1000002,female,57,165,63\n")

    summary = run([
        f"--input=gs://{BUCKET}/20209/*_20209_*.zip", f"--phenotypes=gs://{BUCKET}/pheno/phenotypes.csv",
        f"--output=gs://{BUCKET}/run1", "--methods=inlinevf", "--runner=FnApiRunner",
    ])
    assert summary["inputs_matched"] == 2 and summary["participants_written"] == 2
    assert summary["reconciled"] and summary["participants_failed"] == 0

    names = sorted(b.name for b in gcs.list_blobs(prefix="run1/"))
    assert "run1/summary.json" in names
    assert json.loads(gcs.blob("run1/summary.json").download_as_bytes())["inputs_matched"] == 2
    for method in (contracts.METHOD_INLINEVF, contracts.METHOD_INLINEVF_RECALIBRATED):
        files = [n for n in names if n.startswith(f"run1/lvmass/method={method}/") and n.endswith(".parquet")]
        assert len(files) == 1
        table = pq.read_table(io.BytesIO(gcs.blob(files[0]).download_as_bytes()))
        assert table.schema.equals(RESULTS_FILE_SCHEMA, check_metadata=False)
        assert sorted(table.column("eid").to_pylist()) == [1000001, 1000002]
        assert sorted(table.column("sex").to_pylist()) == ["female", "male"]
        assert all(uri.startswith(f"gs://{BUCKET}/20209/") for uri in table.column("source_uri").to_pylist())
    # no failures: the errors folder still holds a valid, empty Parquet file
    error_files = [n for n in names if n.startswith("run1/errors/")]
    assert len(error_files) == 1
    errors = pq.read_table(io.BytesIO(gcs.blob(error_files[0]).download_as_bytes()))
    assert errors.num_rows == 0 and errors.schema.equals(ERRORS_SCHEMA, check_metadata=False)


def test_pyarrow_reads_a_hive_dataset_through_filesystems(gcs):
    """list_files / has_files and pyarrow over Beam's FileSystems: a hive-partitioned dataset on gs://
    gives its partition column back, read through the same client as the pipeline."""
    prefix = f"gs://{BUCKET}/run1/lvmass"
    for method, eids in (("inlinevf", [1, 2]), ("ml4h_seg", [3])):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"eid": eids}), buffer)
        filesystems.write_bytes(f"{prefix}/method={method}/part-0.parquet", buffer.getvalue())
    filesystems.write_text(f"gs://{BUCKET}/run1/summary.json", "{}")
    files = filesystems.list_files(prefix)
    assert files == [f"{prefix}/method=inlinevf/part-0.parquet", f"{prefix}/method=ml4h_seg/part-0.parquet"]
    assert filesystems.list_files(f"gs://{BUCKET}/run1/") == [*files, f"gs://{BUCKET}/run1/summary.json"]
    assert filesystems.has_files(f"gs://{BUCKET}/run1")
    assert not filesystems.has_files(f"gs://{BUCKET}/run")  # a prefix of the name is not a folder
    assert filesystems.list_files(f"gs://{BUCKET}/nothing") == []
    arrow = filesystems.arrow_filesystem(prefix)
    assert isinstance(filesystems.arrow_filesystem("/tmp/results"), pafs.LocalFileSystem)
    assert arrow.get_file_info(files[0]).size == len(filesystems.read_bytes(files[0]))
    dataset = ds.dataset(
        files, format="parquet", filesystem=arrow, partitioning="hive", partition_base_dir=prefix
    )
    table = dataset.to_table().sort_by("eid")
    assert table.column("eid").to_pylist() == [1, 2, 3]
    assert table.column("method").to_pylist() == ["inlinevf", "inlinevf", "ml4h_seg"]


def test_the_analysis_reads_the_pipelines_gs_output(gcs):
    """The pipeline writes gs://, the analysis reads it back (results as a hive dataset, phenotypes with
    the pipeline's reader), both through lvmass.storage.filesystems."""
    for eid, seed in ((1000001, 1), (1000002, 2)):
        z = ukbb_participant_zip(eid, n_slices=8, seed=seed)
        gcs.blob(f"20209/{z.name}").upload_from_string(z.data)
    phenotypes = f"gs://{BUCKET}/pheno/visits.csv"
    gcs.blob("pheno/visits.csv").upload_from_string(
        "eid,instance,sex,age,height_cm,weight_kg\n1000001,2,M,61,181,82\n1000002,2,F,57,165,63\n")
    summary = run([
        f"--input=gs://{BUCKET}/20209/*_20209_*.zip", f"--phenotypes={phenotypes}",
        f"--output=gs://{BUCKET}/run2", "--methods=inlinevf", "--runner=FnApiRunner",
    ])
    assert summary["participants_written"] == 2
    results = aio.read_results(f"gs://{BUCKET}/run2")
    assert set(results["method"]) == {contracts.METHOD_INLINEVF, contracts.METHOD_INLINEVF_RECALIBRATED}
    assert sorted(results.loc[results["method"] == contracts.METHOD_INLINEVF, "eid"]) == [1000001, 1000002]
    frame = aio.read_phenotypes(phenotypes).set_index("eid")
    assert frame.loc[1000001, "sex"] == "male" and frame.loc[1000002, "instance"] == 2
    by_eid = results[results["method"] == contracts.METHOD_INLINEVF].set_index("eid")
    assert (by_eid["sex"] == frame.loc[by_eid.index, "sex"]).all()

"""The Dataflow job, the Flex Template and the worker image, checked offline.

No Dataflow is reachable here. ``docker/flex-template/main.py`` (the template's entry point) builds the
real pipeline with ``DataflowRunner`` and ``--template_location`` on a storage emulator: Beam then stages
the pipeline proto and writes the job it would submit (the Dataflow API's ``Job``) instead of submitting
it. The tests read both back: the steps, the container image, GPU service options when asked for, and no
local paths. ``metadata.json`` is checked against the options of ``lvmass run`` and parsed as Dataflow's
own ``TemplateMetadata`` message; the worker image's CUDA pins against TensorFlow's requirements.
"""

from __future__ import annotations

import base64
import bz2
import importlib.metadata
import importlib.util
import json
import re
import socket
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FLEX_DIR = ROOT / "docker" / "flex-template"
BUCKET = "lvmass-staging"
PROJECT = "lvmass-test-project"
REGION = "europe-west4"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/lvmass/worker:0.2.0"
SERVICE_ACCOUNT = f"lvmass-dataflow@{PROJECT}.iam.gserviceaccount.com"
GPU_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
# The pipeline's top-level steps (beam_pipeline.pipeline.build_pipeline), in infer mode with all methods.
STEPS = {"ReadParticipants", "InputURIs", "DecodeParticipants", "ML4H_seg", "ML4H_reg", "InlineVF",
         "FlattenMeasurements", "ValidateMeasurements", "WriteMeasurements", "FactURIs", "FlattenErrors",
         "WriteErrors", "CommitRun"}
LOCAL_PATH = re.compile(rb"(?:%s|/tmp/|/home/|/root/|/Users/)[^\x00-\x1f\"'\x80-\xff]*"
                        % re.escape(str(ROOT).encode()))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


flex_main = _load("lvmass_flex_main", FLEX_DIR / "main.py")
flex_metadata = _load("lvmass_flex_metadata", FLEX_DIR / "metadata.py")


# --- metadata.json --------------------------------------------------------------------------------


def test_metadata_is_generated_from_the_run_options():
    assert (FLEX_DIR / "metadata.json").read_text() == flex_metadata.metadata_text(), (
        "run: python docker/flex-template/metadata.py --write")
    from beam_pipeline.options import build_parser

    options = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    metadata = json.loads((FLEX_DIR / "metadata.json").read_text())
    parameters = {p["name"]: p for p in metadata["parameters"]}
    assert set(parameters) == options
    for name, p in parameters.items():
        assert p["helpText"] and p["label"] and p["regexes"], name
        assert all(r.startswith("^") and r.endswith("$") for r in p["regexes"]), name
    assert [n for n, p in parameters.items() if not p["isOptional"]] == ["input", "output"]


def test_metadata_is_a_valid_dataflow_template_metadata():
    """Dataflow's own message type refuses unknown fields and unknown parameter types."""
    from google.cloud.dataflow_v1beta3 import types

    text = (FLEX_DIR / "metadata.json").read_text()
    metadata = types.TemplateMetadata.from_json(text)
    assert metadata.name == "lvmass" and len(metadata.parameters) == len(json.loads(text)["parameters"])
    spec = {"image": "europe-west4-docker.pkg.dev/p/lvmass/launcher:0.2.0", "sdkInfo": {"language": "PYTHON"},
            "metadata": json.loads(text), "defaultEnvironment": {"sdkContainerImage": IMAGE}}
    assert types.ContainerSpec.from_json(json.dumps(spec)).sdk_info.language == types.SDKInfo.Language.PYTHON
    with pytest.raises(Exception, match="paramTyp"):
        types.TemplateMetadata.from_json(json.dumps({"name": "x", "parameters": [
            {"name": "a", "label": "a", "helpText": "a", "paramTyp": "TEXT"}]}))


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("input", "gs://ukb-bulk/20209/*_20209_*.zip", "/data/20209/*.zip"),
    ("output", "gs://my-results/runs/2026-11", "results/run1"),
    ("phenotypes", "gs://my-results/pheno.parquet", "pheno.csv"),
    ("methods", "ml4h_seg,inlinevf", "ml4h_seg,ml4h_sag"),
    ("mode", "tensorize", "train"),
    ("model_seg", "bundled:ml4h_seg", "bundled:ml4h_reg"),
    ("calibration", "gs://my-bucket/calibration.json", "gs://my-bucket/calibration.yaml"),
    ("batch_size", "16", "-1"),
    ("pixel_spacing_mm", "1.83", "1.8mm"),
    ("large_model", "true", "yes"),
])
def test_metadata_regexes_accept_and_refuse(name, good, bad):
    (parameter,) = [p for p in json.loads((FLEX_DIR / "metadata.json").read_text())["parameters"]
                    if p["name"] == name]
    assert all(re.fullmatch(r, good) for r in parameter["regexes"])
    assert not all(re.fullmatch(r, bad) for r in parameter["regexes"])


def test_metadata_refuses_an_option_without_a_rule():
    import argparse

    from beam_pipeline.options import build_parser

    parser = build_parser()
    parser.add_argument("--region_hint", help="a new free-text option")
    with pytest.raises(ValueError, match="--region_hint: no template validation"):
        flex_metadata.build_metadata(parser)
    bare = argparse.ArgumentParser()
    bare.add_argument("--input", required=True, help="zips")
    with pytest.raises(ValueError, match=r"TEXT_RULES names options lvmass run does not have"):
        flex_metadata.build_metadata(bare)


# --- template arguments -----------------------------------------------------------------------------


def test_template_argv_turns_on_off_parameters_into_flags():
    flags = flex_main.boolean_flags()
    assert {"--large_model", "--save_labels"} <= flags
    argv = ["--input=gs://b/*.zip", "--large_model=true", "--save_labels=false", "--runner=DataflowRunner"]
    assert flex_main.template_argv(argv, flags) == ["--input=gs://b/*.zip", "--large_model",
                                                    "--runner=DataflowRunner"]
    with pytest.raises(ValueError, match=r"--large_model takes true or false. Received: 'maybe'"):
        flex_main.template_argv(["--large_model=maybe"], flags)


# --- the job Beam would submit ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def staging():
    """A storage emulator with the staging bucket; Beam's GCS IO pointed at it, without credentials."""
    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    patch = pytest.MonkeyPatch()
    port = _free_port()
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    patch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{port}")
    patch.setenv("NO_GCE_CHECK", "true")
    patch.setattr(auth._Credentials, "_credentials_init", True)
    patch.setattr(auth._Credentials, "_credentials", None)
    bucket = storage.Client.create_anonymous_client().bucket(BUCKET)
    bucket.blob("inputs/phenotypes.csv").upload_from_string("eid,sex,age,height_cm,weight_kg\n1,male,60,180,80\n")
    try:
        yield bucket
    finally:
        server.stop()
        patch.undo()


def _build_job(bucket, name: str, extra: list[str]) -> tuple[dict, bytes]:
    """Run the template's entry point with DataflowRunner; return (job JSON, staged pipeline proto)."""
    argv = [
        "--input=gs://ukb-bulk/20209/*_20209_*.zip", f"--output=gs://{BUCKET}/runs/test",
        f"--phenotypes=gs://{BUCKET}/inputs/phenotypes.csv", "--large_model=true",
        "--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}", f"--job_name={name}",
        f"--temp_location=gs://{BUCKET}/temp", f"--staging_location=gs://{BUCKET}/staging",
        f"--template_location=gs://{BUCKET}/jobs/{name}.json", f"--sdk_container_image={IMAGE}",
        f"--service_account_email={SERVICE_ACCOUNT}", "--experiments=use_runner_v2", *extra,
    ]
    flex_main.launch(argv)
    job = json.loads(bucket.blob(f"jobs/{name}.json").download_as_bytes())
    (proto,) = [b for b in bucket.list_blobs(prefix=f"staging/{name}.") if b.name.endswith("/pipeline.pb")]
    return job, proto.download_as_bytes()


@pytest.fixture(scope="module")
def cpu_job(staging):
    return _build_job(staging, "lvmass-cpu", ["--machine_type=n2-highcpu-16", "--max_num_workers=40"])


@pytest.fixture(scope="module")
def gpu_job(staging):
    return _build_job(staging, "lvmass-gpu", ["--machine_type=g2-standard-8", "--max_num_workers=10",
                                              f"--dataflow_service_options={GPU_OPTION}"])


def test_job_runs_the_worker_image_with_the_requested_workers(cpu_job):
    job, _ = cpu_job
    (pool,) = job["environment"]["workerPools"]
    assert pool["workerHarnessContainerImage"] == IMAGE
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [IMAGE]
    assert pool["machineType"] == "n2-highcpu-16"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 40
    assert job["environment"]["serviceAccountEmail"] == SERVICE_ACCOUNT
    assert "use_runner_v2" in job["environment"]["experiments"]
    assert job["type"] == "JOB_TYPE_BATCH"
    assert "serviceOptions" not in job["environment"]  # CPU recipe: no accelerator
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["sdk_container_image"] == IMAGE and options["job_name"] == "lvmass-cpu"
    assert "large_model" not in options and "input" not in options  # lvmass flags stay out of Beam's


def test_gpu_recipe_asks_for_the_accelerator(gpu_job):
    job, _ = gpu_job
    assert job["environment"]["serviceOptions"] == [GPU_OPTION]
    (pool,) = job["environment"]["workerPools"]
    assert pool["machineType"] == "g2-standard-8"
    assert "resource_hints" not in job["environment"]["sdkPipelineOptions"]["options"] or not (
        job["environment"]["sdkPipelineOptions"]["options"]["resource_hints"])


def test_job_graph_has_the_pipeline_steps_in_the_worker_image(cpu_job):
    from apache_beam.portability.api import beam_runner_api_pb2

    _, proto_bytes = cpu_job
    pipeline = beam_runner_api_pb2.Pipeline.FromString(proto_bytes)
    top = {t.unique_name for t in pipeline.components.transforms.values() if "/" not in t.unique_name}
    assert STEPS <= top
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    assert any(n.startswith("ReadParticipants/") and "Reshuffle" in n for n in names), (
        "without a reshuffle every zip would be decoded by one worker")
    images = set()
    for env in pipeline.components.environments.values():
        images.add(beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image)
    assert images == {IMAGE}


def _pickled_payloads(proto_bytes: bytes) -> list[tuple[str, bytes]]:
    from apache_beam.portability.api import beam_runner_api_pb2

    pipeline = beam_runner_api_pb2.Pipeline.FromString(proto_bytes)
    out = []
    for t in pipeline.components.transforms.values():
        if t.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
            out.append((t.unique_name, bz2.decompress(base64.b64decode(payload))))  # Beam's pickle encoding
    return out


def test_job_holds_no_local_paths(cpu_job, gpu_job):
    """Nothing a worker must open points into this machine: models travel as ``bundled:<kind>`` markers,
    data as gs://. The only local paths are the source file names cloudpickle records for tracebacks."""
    for job, proto_bytes in (cpu_job, gpu_job):
        assert not LOCAL_PATH.findall(json.dumps(job).encode())
        assert not LOCAL_PATH.findall(proto_bytes)
        payloads = _pickled_payloads(proto_bytes)
        assert payloads
        for name, raw in payloads:
            for path in LOCAL_PATH.findall(raw):
                assert path.endswith(b".py"), f"{name}: local path {path!r} in the job"
        assert any(b"bundled:ml4h_seg" in raw for _, raw in payloads)
        assert any(b"bundled:ml4h_reg" in raw for _, raw in payloads)


def test_launch_refuses_a_missing_phenotype_file(staging):
    from beam_pipeline.options import ConfigError

    with pytest.raises(ConfigError, match=r"inputs/missing\.csv: file not found"):
        flex_main.launch(["--input=gs://b/*.zip", "--output=gs://b/out",
                          f"--phenotypes=gs://{BUCKET}/inputs/missing.csv", "--runner=DataflowRunner"])


# --- the images ---------------------------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_cuda_wheels_are_pinned_within_tensorflows_requirements():
    pins = _pins(ROOT / "docker" / "dataflow" / "cuda-constraints.txt")
    wanted = {}
    for text in importlib.metadata.requires("tensorflow") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "and-cuda"}) \
                and not requirement.marker.evaluate({"extra": ""}):
            wanted[requirement.name] = requirement.specifier
    assert wanted, "tensorflow should declare its and-cuda wheels"
    assert set(pins) == set(wanted)
    for name, version in pins.items():
        assert Version(version) in wanted[name], f"{name}=={version} outside {wanted[name]}"


def test_dockerfiles_pin_versions_and_entrypoints():
    import apache_beam

    worker = (ROOT / "docker" / "dataflow" / "Dockerfile").read_text()
    assert f"FROM apache/beam_python3.11_sdk:{apache_beam.__version__}" in worker
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in worker
    # one SDK process per vCPU, one TensorFlow thread each: what benchmarks/dataflow_cost.py sizes with
    assert "ENV TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1" in worker
    assert "TF_ENABLE_ONEDNN_OPTS=1" in worker  # as benchmarks/bench_inference.py measured inference
    tf_version = importlib.metadata.version("tensorflow")
    for name in ("dataflow", "trainer"):
        text = (ROOT / "docker" / name / "Dockerfile").read_text()
        assert f'"tensorflow[and-cuda]=={tf_version}"' in text, name
        assert "-c constraints.txt -c cuda-constraints.txt" in text, name
    launcher = (FLEX_DIR / "Dockerfile").read_text()
    assert "COPY docker/flex-template/main.py ./main.py" in launcher
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py" in launcher
    assert "-c constraints.txt" in launcher


# --- the sizing ---------------------------------------------------------------------------------------


def test_recorded_recipes_are_what_the_cost_script_computes():
    """benchmarks/results/dataflow_cost.json follows from the recorded stage timings: no hand edits."""
    cost = _load("lvmass_dataflow_cost", ROOT / "benchmarks" / "dataflow_cost.py")
    stages = json.loads((ROOT / "benchmarks" / "results" / "stage_cpu_seconds.json").read_text())
    recorded = json.loads((ROOT / "benchmarks" / "results" / "dataflow_cost.json").read_text())
    expected = cost.estimate(stages, [38500, 100000])
    results = ROOT / "benchmarks" / "results"
    if (results / "pipeline_scaling.json").exists():  # the end-to-end measurements, as main() adds them
        def optional(name):
            path = results / name
            return json.loads(path.read_text()) if path.exists() else None

        expected["measured_end_to_end"] = cost.measured_end_to_end(
            optional("pipeline_scaling.json"), optional(cost.DEFAULT_INFERENCE.name),
            optional(cost.DEFAULT_PIPELINE_MEMORY.name), stages, [38500, 100000])
    assert expected == recorded
    assert (ROOT / "benchmarks" / "results" / "dataflow_cost.md").read_text() == cost.markdown(recorded)


def test_break_even_is_where_cpu_and_gpu_cost_the_same():
    cost = _load("lvmass_dataflow_cost", ROOT / "benchmarks" / "dataflow_cost.py")
    stages = json.loads((ROOT / "benchmarks" / "results" / "stage_cpu_seconds.json").read_text())
    result = cost.estimate(stages, [38500])
    base = sum(result["inputs"]["cpu_s_per_participant"][s] for s in cost.CPU_STAGES)
    rss = result["inputs"]["peak_rss_mb"]
    at_break_even = cost.cpu_recipe("x", base + result["gpu_pays_when_ml4h_seg_cpu_s_exceeds"], rss)
    (gpu,) = [r for r in result["recipes"] if r["gpu"]]
    # both sides are rounded in the record (6 decimals in dollars, 2 in CPU-seconds)
    assert at_break_even.usd_per_participant == pytest.approx(gpu["usd_per_participant"], rel=1e-2)
    for recipe in result["recipes"]:
        assert recipe["memory_gb_per_process"] * 1024 >= rss  # one SDK process per vCPU fits in memory
        assert all(run["usd"] > 0 and run["wall_hours"] > 0 for run in recipe["runs"])
    with pytest.raises(ValueError, match=r"participants must be >= 1\. Received: 0"):
        cost.run_estimate(cost.cpu_recipe("x", 1.0, rss), 0)

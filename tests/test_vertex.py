"""The Vertex AI custom job for trainer.task, checked offline: no job is submitted.

The spec is parsed as the Vertex AI API's own ``CustomJob`` message (unknown fields and accelerator names
are refused), the ``AIP_*`` folders Vertex AI derives from it are fed to ``trainer.task.resolve_paths``,
and the launcher is run against a stand-in ``JobServiceClient`` that records the request.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from google.cloud import aiplatform_v1

from trainer import task, vertex

BASE = "gs://my-lvmass-results/jobs/seg-1"
TRAIN_ARGS = ("--model", "seg", "--preset", "paper", "--train_data",
              "gs://my-lvmass-results/tensors/tfrecords/*.tfrecord.gz", "--epochs", "50")
CONFIG = vertex.VertexJobConfig(
    project="my-lvmass-project", region="europe-west4",
    image_uri="europe-west4-docker.pkg.dev/my-lvmass-project/lvmass/trainer:0.2.0",
    base_output_dir=BASE, service_account="lvmass-vertex@my-lvmass-project.iam.gserviceaccount.com",
    trainer_args=TRAIN_ARGS,
)


class RecordingJobClient:
    """Stands in for aiplatform_v1.JobServiceClient: records create_custom_job, creates nothing."""

    def __init__(self):
        self.calls = []

    def create_custom_job(self, *, parent, custom_job):
        self.calls.append((parent, custom_job))
        return aiplatform_v1.CustomJob(name=f"{parent}/customJobs/123")


def _message(spec: dict) -> aiplatform_v1.CustomJob:
    return aiplatform_v1.CustomJob.from_json(json.dumps(spec))


def test_spec_is_a_valid_custom_job_with_the_trainer_command():
    job = _message(vertex.custom_job_spec(CONFIG))
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.machine_spec.machine_type == "g2-standard-12"
    assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_L4
    assert pool.machine_spec.accelerator_count == 1 and pool.replica_count == 1
    assert pool.container_spec.image_uri == CONFIG.image_uri
    assert list(pool.container_spec.command) == ["python", "-m", "trainer.task"]
    assert tuple(pool.container_spec.args) == TRAIN_ARGS
    assert job.job_spec.service_account == CONFIG.service_account
    assert job.job_spec.base_output_directory.output_uri_prefix == BASE
    assert job.job_spec.scheduling.restart_job_on_worker_restart is True
    assert job.job_spec.scheduling.timeout.total_seconds() == 3 * 24 * 3600
    assert not job.encryption_spec.kms_key_name


def test_unknown_fields_or_accelerators_are_refused_by_the_message_type():
    spec = vertex.custom_job_spec(CONFIG)
    spec["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"] = "NVIDIA_L5"
    with pytest.raises(Exception, match="NVIDIA_L5"):
        _message(spec)


def test_trainer_writes_where_vertex_points_it():
    """Vertex AI sets AIP_* from baseOutputDirectory; trainer.task must write under it, not elsewhere."""
    environ = vertex.aip_directories(BASE)
    assert environ == {"AIP_MODEL_DIR": f"{BASE}/model/", "AIP_CHECKPOINT_DIR": f"{BASE}/checkpoints/",
                       "AIP_TENSORBOARD_LOG_DIR": f"{BASE}/logs/"}
    args = task.build_parser().parse_args(list(TRAIN_ARGS))
    paths = task.resolve_paths(args.job_dir, environ)
    assert paths.model_dir == f"{BASE}/model/"
    assert paths.checkpoint_dir == f"{BASE}/checkpoints/"
    assert paths.tensorboard_dir == f"{BASE}/logs/"
    assert paths.log_dir == BASE


def test_several_replicas_make_a_chief_and_a_worker_pool():
    job = _message(vertex.custom_job_spec(replace(CONFIG, replica_count=3)))
    chief, workers = job.job_spec.worker_pool_specs
    assert (chief.replica_count, workers.replica_count) == (1, 2)
    assert workers.container_spec.args == chief.container_spec.args
    # trainer.task turns Vertex AI's CLUSTER_SPEC for these pools into a multi-worker TF_CONFIG
    cluster_spec = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w1:2222", "w2:2222"]},
                    "task": {"type": "workerpool1", "index": 0}}
    tf_config = task.cluster_config({"CLUSTER_SPEC": json.dumps(cluster_spec)})
    assert task.strategy_kind(tf_config, n_gpus=1) == "multi_worker"
    assert not task.is_chief(tf_config)


def test_cmek_and_cpu_only_jobs():
    key = "projects/kms-p/locations/europe-west4/keyRings/lvmass/cryptoKeys/data"
    job = _message(vertex.custom_job_spec(replace(CONFIG, kms_key_name=key, accelerator_type=None,
                                                  machine_type="n2-standard-16")))
    assert job.encryption_spec.kms_key_name == key
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.machine_spec.accelerator_count == 0 and pool.machine_spec.machine_type == "n2-standard-16"


@pytest.mark.parametrize(("change", "message"), [
    ({"machine_type": "n1-standard-8"}, r"NVIDIA_L4 runs on g2-standard-\* machines. Received machine_type"),
    ({"accelerator_type": "NVIDIA_L5"}, r"accelerator_type must be one of .* Received: 'NVIDIA_L5'"),
    ({"base_output_dir": "/local/jobs"},
     r"base_output_dir must be a gs:// folder .* Received: '/local/jobs'"),
    ({"image_uri": "docker.io/lvmass/trainer:0.2.0"},
     r"image_uri must be in Artifact Registry in europe-west4"),
    ({"trainer_args": ("--model", "seg", "--train_data", "tensors/*.tfrecord.gz")},
     r"--train_data must be gs:// on Vertex AI"),
    ({"trainer_args": (*TRAIN_ARGS, "--job_dir", "gs://b/jobs/x")}, r"leave --job_dir out"),
    ({"trainer_args": ("--model", "sgm", "--train_data", "gs://b/t/*")}, r"trainer.task cannot parse"),
    ({"replica_count": 0}, r"replica_count must be >= 1. Received: 0"),
    ({"kms_key_name": "my-key"}, r"kms_key_name must be projects/.* Received: 'my-key'"),
])
def test_bad_configs_are_refused_with_the_bad_value(change, message):
    with pytest.raises(ValueError, match=message):
        vertex.custom_job_spec(replace(CONFIG, **change))


def _argv(*extra: str) -> list[str]:
    return ["--project", CONFIG.project, "--region", CONFIG.region, "--image", CONFIG.image_uri,
            "--base_output_dir", BASE, "--service_account", CONFIG.service_account, *extra, "--", *TRAIN_ARGS]


def test_launcher_submits_the_spec_to_the_region(capsys):
    client = RecordingJobClient()
    assert vertex.main(_argv("--label", "run=seg-1"), client=client) == 0
    ((parent, job),) = client.calls
    assert parent == "projects/my-lvmass-project/locations/europe-west4"
    assert job == _message(vertex.custom_job_spec(replace(CONFIG, labels={"run": "seg-1"})))
    printed = json.loads(capsys.readouterr().out)
    assert printed["custom_job"].endswith("/customJobs/123")
    assert printed["AIP_MODEL_DIR"] == f"{BASE}/model/"


def test_dry_run_prints_the_spec_and_submits_nothing(capsys):
    client = RecordingJobClient()
    assert vertex.main(_argv("--dry_run", "--accelerator_type", "none", "--machine_type", "n2-standard-8"),
                       client=client) == 0
    assert client.calls == []
    spec = json.loads(capsys.readouterr().out)
    assert spec == vertex.custom_job_spec(replace(CONFIG, accelerator_type=None,
                                                  machine_type="n2-standard-8"))


def test_launcher_reports_bad_options(capsys):
    assert vertex.main(_argv("--machine_type", "a2-highgpu-1g")) == 2
    assert "NVIDIA_L4 runs on g2-standard-* machines" in capsys.readouterr().err

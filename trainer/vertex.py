"""Train on Vertex AI: the custom-job spec for ``trainer.task`` and the launcher that submits it.

``python -m trainer.vertex --project P --region R --image IMAGE --base_output_dir gs://B/jobs/seg-1 \\
    --service_account SA [--machine_type g2-standard-12 --accelerator_type NVIDIA_L4] [--dry_run] \\
    -- --model seg --preset paper --train_data 'gs://B/tensors/tfrecords/*.tfrecord.gz' --epochs 50``

Everything after ``--`` is ``trainer.task``'s command line; it is parsed here, before anything is submitted,
so a typo fails on your machine rather than on a GPU. The job runs ``python -m trainer.task`` in the
trainer image (``docker/trainer/Dockerfile``). Vertex AI derives from ``baseOutputDirectory`` the
``AIP_MODEL_DIR`` (``<base>/model/``), ``AIP_CHECKPOINT_DIR`` (``<base>/checkpoints/``) and
``AIP_TENSORBOARD_LOG_DIR`` (``<base>/logs/``) that ``trainer.task`` writes to, and with several replicas
the ``CLUSTER_SPEC`` it turns into ``TF_CONFIG`` (a chief pool and a worker pool). ``--dry_run`` prints the
``CustomJob`` JSON instead of submitting it; the same JSON is what the tests check, parsed as the Vertex AI
API's own message type.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Machine families that carry each accelerator on Vertex AI custom training (Vertex AI docs, "Configure
# compute resources for custom training"). A mismatch is refused here rather than by the API later.
ACCELERATOR_MACHINE_PREFIXES: dict[str, tuple[str, ...]] = {
    "NVIDIA_L4": ("g2-standard-",),
    "NVIDIA_TESLA_T4": ("n1-",),
    "NVIDIA_TESLA_V100": ("n1-",),
    "NVIDIA_TESLA_P100": ("n1-",),
    "NVIDIA_TESLA_A100": ("a2-highgpu-", "a2-megagpu-"),
    "NVIDIA_A100_80GB": ("a2-ultragpu-",),
    "NVIDIA_H100_80GB": ("a3-highgpu-",),
}
TRAINER_COMMAND: tuple[str, ...] = ("python", "-m", "trainer.task")
AIP_SUBDIRS: dict[str, str] = {"AIP_MODEL_DIR": "model", "AIP_CHECKPOINT_DIR": "checkpoints",
                               "AIP_TENSORBOARD_LOG_DIR": "logs"}
DEFAULT_MACHINE_TYPE = "g2-standard-12"
DEFAULT_ACCELERATOR = "NVIDIA_L4"
_GCS = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$")
_KMS = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


@dataclass(frozen=True)
class VertexJobConfig:
    """One custom job: where, on what, as whom, and the ``trainer.task`` arguments."""

    project: str
    region: str
    image_uri: str
    base_output_dir: str
    service_account: str
    trainer_args: tuple[str, ...]
    display_name: str = "lvmass-train"
    machine_type: str = DEFAULT_MACHINE_TYPE
    accelerator_type: str | None = DEFAULT_ACCELERATOR
    accelerator_count: int = 1
    replica_count: int = 1
    boot_disk_gb: int = 100
    timeout_s: int = 3 * 24 * 3600
    kms_key_name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value; parse the trainer arguments as trainer.task would."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", self.project):
            raise ValueError(f"project must be a Google Cloud project ID. Received: {self.project!r}")
        if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]", self.region):
            raise ValueError(f"region must be a Cloud region such as europe-west4. Received: {self.region!r}")
        if not self.image_uri.startswith(f"{self.region}-docker.pkg.dev/"):
            raise ValueError(f"image_uri must be in Artifact Registry in {self.region} "
                             f"({self.region}-docker.pkg.dev/...). Received: {self.image_uri!r}")
        if not _GCS.match(self.base_output_dir) or self.base_output_dir.endswith("/"):
            raise ValueError(f"base_output_dir must be a gs:// folder without a trailing '/'. "
                             f"Received: {self.base_output_dir!r}")
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com", self.service_account):
            raise ValueError(f"service_account must be a service account email. "
                             f"Received: {self.service_account!r}")
        if self.accelerator_type is not None:
            prefixes = ACCELERATOR_MACHINE_PREFIXES.get(self.accelerator_type)
            if prefixes is None:
                raise ValueError(f"accelerator_type must be one of {sorted(ACCELERATOR_MACHINE_PREFIXES)} "
                                 f"or None. Received: {self.accelerator_type!r}")
            if not self.machine_type.startswith(prefixes):
                families = "/".join(p + "*" for p in prefixes)
                raise ValueError(f"{self.accelerator_type} runs on {families} machines. "
                                 f"Received machine_type: {self.machine_type!r}")
            if self.accelerator_count < 1:
                raise ValueError(f"accelerator_count must be >= 1. Received: {self.accelerator_count}")
        for name in ("replica_count", "boot_disk_gb", "timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1. Received: {getattr(self, name)}")
        if self.kms_key_name is not None and not _KMS.match(self.kms_key_name):
            raise ValueError(f"kms_key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K. "
                             f"Received: {self.kms_key_name!r}")
        check_trainer_args(self.trainer_args)


def check_trainer_args(args: Sequence[str]) -> None:
    """The arguments must parse as ``trainer.task``'s, and leave the output paths to Vertex AI."""
    from trainer.task import build_parser

    parser = build_parser()
    parser.exit_on_error = False
    try:
        parsed = parser.parse_args(list(args))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValueError(f"trainer.task cannot parse the job's arguments ({exc}). "
                         f"Received: {list(args)}") from None
    if parsed.job_dir is not None:
        raise ValueError(f"leave --job_dir out: on Vertex AI the output goes to base_output_dir "
                         f"(AIP_MODEL_DIR). Received: --job_dir {parsed.job_dir}")
    if not all(path.startswith("gs://") for path in parsed.train_data.split(",")):
        raise ValueError(f"--train_data must be gs:// on Vertex AI. Received: {parsed.train_data!r}")


def aip_directories(base_output_dir: str) -> dict[str, str]:
    """The ``AIP_*`` folders Vertex AI sets for a job with this ``baseOutputDirectory``."""
    base = base_output_dir.rstrip("/")
    return {name: f"{base}/{sub}/" for name, sub in AIP_SUBDIRS.items()}


def custom_job_spec(config: VertexJobConfig) -> dict[str, Any]:
    """The ``CustomJob`` resource (Vertex AI REST JSON) for ``config``."""
    config.validate()
    machine: dict[str, Any] = {"machineType": config.machine_type}
    if config.accelerator_type is not None:
        machine.update(acceleratorType=config.accelerator_type, acceleratorCount=config.accelerator_count)

    def pool(replicas: int) -> dict[str, Any]:
        return {
            "machineSpec": machine,
            "replicaCount": str(replicas),
            "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": config.boot_disk_gb},
            "containerSpec": {"imageUri": config.image_uri, "command": list(TRAINER_COMMAND),
                              "args": list(config.trainer_args)},
        }

    # One chief pool; more replicas go to a second pool (Vertex AI: workerpool0 is the chief).
    pools = [pool(1)] + ([pool(config.replica_count - 1)] if config.replica_count > 1 else [])
    job: dict[str, Any] = {
        "displayName": config.display_name,
        "labels": dict(config.labels),
        "jobSpec": {
            "workerPoolSpecs": pools,
            "serviceAccount": config.service_account,
            "baseOutputDirectory": {"outputUriPrefix": config.base_output_dir},
            "scheduling": {"timeout": f"{config.timeout_s}s", "restartJobOnWorkerRestart": True},
        },
    }
    if config.kms_key_name is not None:
        job["encryptionSpec"] = {"kmsKeyName": config.kms_key_name}
    return job


def submit(config: VertexJobConfig, client: Any = None) -> str:
    """Create the custom job; returns its resource name. ``client``: a ``JobServiceClient`` (tests pass a
    stand-in; by default one for the region's endpoint, with application-default credentials)."""
    from google.cloud import aiplatform_v1

    job = aiplatform_v1.CustomJob.from_json(json.dumps(custom_job_spec(config)))
    if client is None:
        client = aiplatform_v1.JobServiceClient(
            client_options={"api_endpoint": f"{config.region}-aiplatform.googleapis.com"})
    created = client.create_custom_job(parent=f"projects/{config.project}/locations/{config.region}",
                                       custom_job=job)
    return created.name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.vertex", description=__doc__.splitlines()[0],
                                epilog="Everything after -- is passed to python -m trainer.task.")
    p.add_argument("--project", required=True, help="Google Cloud project (terraform output project_id)")
    p.add_argument("--region", required=True, help="Vertex AI region (terraform output region)")
    p.add_argument("--image", required=True,
                   help="trainer image, REGION-docker.pkg.dev/PROJECT/REPO/trainer:TAG")
    p.add_argument("--base_output_dir", required=True,
                   help="gs:// folder of this job: model/, checkpoints/, logs/ go under it")
    p.add_argument("--service_account", required=True,
                   help="service account the job runs as (terraform output vertex_service_account)")
    p.add_argument("--display_name", default="lvmass-train", help="job name in the console")
    p.add_argument("--machine_type", default=DEFAULT_MACHINE_TYPE, help=f"default {DEFAULT_MACHINE_TYPE}")
    p.add_argument("--accelerator_type", default=DEFAULT_ACCELERATOR,
                   help=f"one of {sorted(ACCELERATOR_MACHINE_PREFIXES)}, or none "
                   f"(default {DEFAULT_ACCELERATOR})")
    p.add_argument("--accelerator_count", type=int, default=1, help="GPUs per replica (default 1)")
    p.add_argument("--replica_count", type=int, default=1,
                   help="machines; above 1, MultiWorkerMirroredStrategy across them (default 1)")
    p.add_argument("--boot_disk_gb", type=int, default=100, help="boot disk per replica (default 100)")
    p.add_argument("--timeout_hours", type=float, default=72.0,
                   help="the job is stopped after this (default 72)")
    p.add_argument("--kms_key_name", default=None, help="CMEK for the job (terraform output kms_key_name)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")
    p.add_argument("--dry_run", action="store_true", help="print the CustomJob JSON instead of submitting it")
    return p


def config_from_args(argv: Sequence[str]) -> tuple[VertexJobConfig, bool]:
    """Split ``argv`` at ``--`` into our options and trainer.task's: the (unchecked) config and whether
    this is a dry run."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, trainer_args = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(ours)
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label takes KEY=VALUE. Received: {item!r}")
        labels[key] = value
    accelerator = None if args.accelerator_type.lower() == "none" else args.accelerator_type
    return VertexJobConfig(
        project=args.project, region=args.region, image_uri=args.image, base_output_dir=args.base_output_dir,
        service_account=args.service_account, trainer_args=tuple(trainer_args),
        display_name=args.display_name, machine_type=args.machine_type, accelerator_type=accelerator,
        accelerator_count=args.accelerator_count, replica_count=args.replica_count,
        boot_disk_gb=args.boot_disk_gb, timeout_s=int(args.timeout_hours * 3600),
        kms_key_name=args.kms_key_name, labels=labels,
    ), args.dry_run


def main(argv: Sequence[str] | None = None, client: Any = None) -> int:
    try:
        config, dry_run = config_from_args(sys.argv[1:] if argv is None else argv)
        spec = custom_job_spec(config)
    except ValueError as exc:
        print(f"trainer.vertex: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        print(json.dumps(spec, indent=2))
        return 0
    name = submit(config, client=client)
    print(json.dumps({"custom_job": name, **aip_directories(config.base_output_dir)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

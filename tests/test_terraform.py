"""terraform/, checked offline: every ``.tf`` parses (python-hcl2) and the security settings hold.

No Terraform binary or provider registry is reachable here, so nothing is planned or applied. These tests
read the parsed HCL; ``make checkov`` scans the same files with checkov's policies (part of ``make test``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from lvmass.core.schema import ERRORS_MANIFEST, RESULTS_MANIFEST, RESULTS_PARTITION_COLUMNS
from lvmass.storage import bigquery

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
TF_FILES = sorted(TERRAFORM.glob("*.tf"))
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
IAM_TYPES = ("google_project_iam_member", "google_storage_bucket_iam_member",
             "google_bigquery_dataset_iam_member", "google_artifact_registry_repository_iam_member",
             "google_service_account_iam_member", "google_kms_crypto_key_iam_member")
# Authoritative IAM resources replace whatever else grants a role: never used here.
AUTHORITATIVE_IAM = re.compile(r"_iam_(policy|binding)$")
OUR_BUCKETS = {"results", "staging", "temp"}


def _clean(value: Any) -> Any:
    """python-hcl2 keeps literal quotes on strings and labels and marks blocks: strip both."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@cache
def _config() -> dict[str, dict[str, Any]]:
    """Every file merged: {"resource": {type: {name: body}}, "variable": {...}, "output": {...}, ...}."""
    merged: dict[str, dict[str, Any]] = {"resource": {}, "data": {}, "variable": {}, "output": {},
                                         "locals": {}}
    for path in TF_FILES:
        with path.open() as handle:
            parsed = _clean(hcl2.load(handle))
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in merged[kind].setdefault(rtype, {}), f"duplicate {rtype}.{name}"
                        merged[kind][rtype][name] = body
        for kind in ("variable", "output"):
            for entry in parsed.get(kind, []):
                merged[kind].update(entry)
        for entry in parsed.get("locals", []):
            merged["locals"].update(entry)
    return merged


def _resources(rtype: str) -> dict[str, Any]:
    return _config()["resource"].get(rtype, {})


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    (block,) = body[name]
    return block


def _dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in body.get("dynamic", []):
        if name in entry:
            return entry[name]
    raise AssertionError(f"no dynamic {name!r} block")


@pytest.mark.parametrize("path", TF_FILES, ids=[p.name for p in TF_FILES])
def test_every_tf_file_parses(path):
    with path.open() as handle:
        assert hcl2.load(handle)


def test_files_are_there():
    names = {p.name for p in TF_FILES}
    assert {"variables.tf", "storage.tf", "bigquery.tf", "iam.tf", "apis.tf", "artifact_registry.tf",
            "kms.tf", "outputs.tf", "versions.tf"} <= names
    assert (TERRAFORM / "README.md").is_file()


def test_variables_project_region_buckets_and_the_input_bucket():
    variables = _config()["variable"]
    for name in ("project_id", "region", "input_bucket", "results_bucket", "staging_bucket", "temp_bucket"):
        assert name in variables and "validation" in variables[name], name
        assert "default" not in variables[name], f"{name} must be chosen, not defaulted"
    assert variables["kms_key_name"]["default"] is None  # CMEK is optional
    assert variables["manage_input_bucket_iam"]["default"] is False


def test_buckets_are_private_uniform_and_protected():
    buckets = _resources("google_storage_bucket")
    assert set(buckets) == OUR_BUCKETS  # the input bucket is someone else's: never managed here
    for name, body in buckets.items():
        assert body["uniform_bucket_level_access"] is True, name
        assert body["public_access_prevention"] == "enforced", name
        assert body["location"] == "${var.region}", name
        encryption = _dynamic(body, "encryption")
        assert encryption["for_each"] == "${local.cmek_keys}", name
        assert _block(encryption, "content")["default_kms_key_name"] == "${encryption.value}"
    assert _config()["locals"]["cmek_keys"] == "${var.kms_key_name == null ? [] : [var.kms_key_name]}"

    results = buckets["results"]
    # versioned, or (results_retention_days > 0) a retention policy instead: never neither
    assert _block(results, "versioning")["enabled"] == "${var.results_retention_days == 0 ? true : false}"
    retention = _dynamic(results, "retention_policy")
    assert retention["for_each"] == "${var.results_retention_days > 0 ? [var.results_retention_days] : []}"
    assert results["force_destroy"] is False
    assert _block(buckets["staging"], "versioning")["enabled"] is True

    temp = buckets["temp"]
    rule = _block(temp, "lifecycle_rule")
    assert _block(rule, "condition")["age"] == "${var.temp_retention_days}"
    assert _block(rule, "action")["type"] == "Delete"


def test_bigquery_external_tables_over_the_parquet_and_the_view():
    datasets = _resources("google_bigquery_dataset")
    assert list(datasets) == ["lvmass"]
    encryption = _dynamic(datasets["lvmass"], "default_encryption_configuration")
    assert encryption["for_each"] == "${local.cmek_keys}"
    tables = _resources("google_bigquery_table")
    assert {body["table_id"] for body in tables.values()} == {
        bigquery.RESULTS_TABLE, bigquery.ERRORS_TABLE, bigquery.PARTICIPANT_VIEW}

    results = _block(tables["results"], "external_data_configuration")
    assert results["source_format"] == "PARQUET"
    assert results["source_uris"] == ["${local.results_output_uri}/" + RESULTS_MANIFEST]
    assert results["file_set_spec_type"] == "FILE_SET_SPEC_TYPE_NEW_LINE_DELIMITED_MANIFEST"
    hive = _block(results, "hive_partitioning_options")
    keys = "/".join(f"{{{name}:STRING}}" for name in RESULTS_PARTITION_COLUMNS)
    assert hive["mode"] == "CUSTOM"
    assert hive["source_uri_prefix"] == f"${{local.results_output_uri}}/lvmass/{keys}"
    for name in ("results", "errors"):
        config = _block(tables[name], "external_data_configuration")
        assert _block(config, "parquet_options")["enable_list_inference"] is True
    errors = _block(tables["errors"], "external_data_configuration")
    assert errors["source_uris"] == ["${local.results_output_uri}/" + ERRORS_MANIFEST]
    assert errors["file_set_spec_type"] == "FILE_SET_SPEC_TYPE_NEW_LINE_DELIMITED_MANIFEST"

    view = _block(tables["by_participant"], "view")
    assert view["use_legacy_sql"] is False
    match = re.search(r'templatefile\("\$\{path\.module\}/(\.\./[^"]+)"', view["query"])
    assert match, view["query"]
    sql_file = (TERRAFORM / match.group(1)).resolve()
    assert sql_file == bigquery.GENERATED_DIR / bigquery.VIEW_FILE
    assert sql_file.read_text() == bigquery.generated_files()[bigquery.VIEW_FILE]
    assert set(re.findall(r"\$\{(\w+)\}", sql_file.read_text())) == {"project", "dataset"}
    assert "project = var.project_id" in view["query"].replace('"', "")


def _grants() -> list[tuple[str, str, str, str]]:
    """(resource type, role, member expression, target expression) of every IAM grant."""
    grants = []
    for rtype in IAM_TYPES:
        for name, body in _resources(rtype).items():
            target = (body.get("bucket") or body.get("dataset_id") or body.get("repository")
                      or body.get("service_account_id") or body.get("crypto_key_id") or body.get("project"))
            grants.append((rtype, body["role"], body["member"], f"{name}:{target}"))
    return grants


def test_no_primitive_or_authoritative_iam():
    all_types = {rtype for rtype in _config()["resource"]}
    assert not {t for t in all_types if AUTHORITATIVE_IAM.search(t)}
    assert all_types & set(IAM_TYPES)
    iam_like = {t for t in all_types if "_iam_" in t} - set(IAM_TYPES) - {"google_project_iam_audit_config"}
    assert not iam_like, f"IAM resources this test does not inspect: {iam_like}"
    roles = {role for _, role, _, _ in _grants()}
    roles |= set(_config()["locals"]["operator_project_roles"])
    assert not roles & PRIMITIVE_ROLES
    assert all(role.startswith("roles/") for role in roles if "${" not in role)


def test_dataflow_workers_least_privilege():
    grants = {(rtype, role, target) for rtype, role, member, target in _grants()
              if member == "${local.dataflow_member}"}
    assert grants == {
        ("google_project_iam_member", "roles/dataflow.worker", "dataflow_worker:${var.project_id}"),
        ("google_storage_bucket_iam_member", "roles/storage.objectViewer",
         "dataflow_input_reader:${var.input_bucket}"),
        ("google_storage_bucket_iam_member", "roles/storage.objectAdmin",
         "dataflow_our_buckets:${each.value}"),
        ("google_bigquery_dataset_iam_member", "roles/bigquery.dataEditor",
         "dataflow_data_editor:${google_bigquery_dataset.lvmass.dataset_id}"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader",
         "dataflow_reader:${google_artifact_registry_repository.containers.name}"),
    }
    assert _resources("google_storage_bucket_iam_member")["dataflow_our_buckets"]["for_each"] == (
        "${local.our_buckets}")
    assert set(_config()["locals"]["our_buckets"]) == OUR_BUCKETS
    assert _config()["locals"]["dataflow_member"] == "serviceAccount:${google_service_account.dataflow.email}"


def test_vertex_training_least_privilege():
    grants = {(rtype, role, target) for rtype, role, member, target in _grants()
              if member == "${local.vertex_member}"}
    assert grants == {
        ("google_storage_bucket_iam_member", "roles/storage.objectAdmin", "vertex_our_buckets:${each.value}"),
        ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader",
         "vertex_reader:${google_artifact_registry_repository.containers.name}"),
    }
    assert set(_config()["locals"]["vertex_buckets"]) <= OUR_BUCKETS


def test_the_input_bucket_is_only_ever_read():
    on_input = [(role, target) for _, role, _, target in _grants() if "var.input_bucket" in target]
    assert on_input == [("roles/storage.objectViewer", "dataflow_input_reader:${var.input_bucket}")]
    grant = _resources("google_storage_bucket_iam_member")["dataflow_input_reader"]
    assert grant["count"] == "${var.manage_input_bucket_iam ? 1 : 0}"


def test_artifact_registry_apis_and_audit_logs():
    (repo,) = _resources("google_artifact_registry_repository").values()
    assert repo["format"] == "DOCKER" and repo["kms_key_name"] == "${var.kms_key_name}"
    assert _block(repo, "docker_config")["immutable_tags"] is True
    apis = str(_config()["locals"]["required_apis"])
    for api in ("dataflow", "bigquery", "storage", "artifactregistry", "aiplatform", "compute", "iam"):
        assert f"{api}.googleapis.com" in apis
    audit = _resources("google_project_iam_audit_config")["storage"]
    assert audit["service"] == "storage.googleapis.com"
    assert {c["log_type"] for c in audit["audit_log_config"]} == {"DATA_READ", "DATA_WRITE"}


def test_cmek_grants_only_encrypt_decrypt():
    kms = _resources("google_kms_crypto_key_iam_member")
    assert kms and {body["role"] for body in kms.values()} == {"roles/cloudkms.cryptoKeyEncrypterDecrypter"}
    assert all(body["crypto_key_id"] == "${var.kms_key_name}" for body in kms.values())


def test_outputs_cover_the_runbook():
    outputs = _config()["output"]
    runbook = (ROOT / "docs" / "cloud.md").read_text()
    used = set(re.findall(r"terraform -chdir=terraform output -raw (\w+)", runbook))
    assert used, "docs/cloud.md should take its values from terraform output"
    assert used <= set(outputs), f"outputs missing: {sorted(used - set(outputs))}"


CHECKOV_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z]+_\d+)(?::(.*))?")


def test_every_checkov_skip_gives_its_reason():
    skips = [(path.name, m.group(1), (m.group(2) or "").strip())
             for path in TF_FILES for m in CHECKOV_SKIP.finditer(path.read_text())]
    assert skips  # the skips are few and deliberate; each must say why
    for name, check, reason in skips:
        assert len(reason.split()) >= 6, f"{name}: checkov:skip={check} needs its reason beside it"

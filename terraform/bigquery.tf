# BigQuery over the pipeline's Parquet, queried in place: external tables over one run's output
# (gs://RESULTS_BUCKET/RESULTS_OUTPUT) and a view with one row per participant and instance.
# The same objects as DDL, and their expected schemas, are generated from lvmass.core.schema into
# lvmass/storage/sql/bigquery/ (python -m lvmass.storage.bigquery); the view's query is read from there.

locals {
  results_output_uri = "gs://${google_storage_bucket.results.name}/${var.results_output}"
}

resource "google_bigquery_dataset" "lvmass" {
  project                    = var.project_id
  dataset_id                 = var.dataset_id
  location                   = var.region
  description                = "lvmass: LV mass per participant, instance and method (external tables over the pipeline's Parquet)."
  delete_contents_on_destroy = false
  labels                     = var.labels

  dynamic "default_encryption_configuration" {
    for_each = local.cmek_keys
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.bigquery_agent]
}

# One row per participant x instance x method; `method` comes from the hive folders method=<m>/.
resource "google_bigquery_table" "results" {
  # checkov:skip=CKV_GCP_121: an external table holds no data to protect; it is re-pointed at each run (results_output), and the data lives in the versioned or retained results bucket
  # checkov:skip=CKV_GCP_80: an external table stores nothing in BigQuery to encrypt; the Parquet is encrypted in the results bucket (CMEK there when kms_key_name is set)
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.lvmass.dataset_id
  table_id            = "lvmass"
  description         = "Pipeline results: the OUTPUT/lvmass/method=<m>/*.parquet files of the output's last commit (schema: lvmass/storage/sql/bigquery/lvmass.schema.json)."
  deletion_protection = false
  labels              = var.labels

  # The files the output's last commit names (lvmass.storage.ledger rewrites the manifest after every
  # commit), never a wildcard over files a run is still writing.
  external_data_configuration {
    autodetect         = true
    source_format      = "PARQUET"
    source_uris        = ["${local.results_output_uri}/_ledger/bigquery/lvmass.manifest"]
    file_set_spec_type = "FILE_SET_SPEC_TYPE_NEW_LINE_DELIMITED_MANIFEST"

    hive_partitioning_options {
      mode                     = "CUSTOM"
      source_uri_prefix        = "${local.results_output_uri}/lvmass/{method:STRING}"
      require_partition_filter = false
    }

    parquet_options {
      enable_list_inference = true
      enum_as_string        = true
    }
  }
}

# Dead letters: one row per input that failed, with the stage and the reason.
resource "google_bigquery_table" "errors" {
  # checkov:skip=CKV_GCP_121: an external table holds no data to protect; it is re-pointed at each run (results_output), and the data lives in the versioned or retained results bucket
  # checkov:skip=CKV_GCP_80: an external table stores nothing in BigQuery to encrypt; the Parquet is encrypted in the results bucket (CMEK there when kms_key_name is set)
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.lvmass.dataset_id
  table_id            = "lvmass_errors"
  description         = "Dead letters: the OUTPUT/errors/*.parquet file of the output's last commit (schema: lvmass/storage/sql/bigquery/lvmass_errors.schema.json)."
  deletion_protection = false
  labels              = var.labels

  external_data_configuration {
    autodetect         = true
    source_format      = "PARQUET"
    source_uris        = ["${local.results_output_uri}/_ledger/bigquery/lvmass_errors.manifest"]
    file_set_spec_type = "FILE_SET_SPEC_TYPE_NEW_LINE_DELIMITED_MANIFEST"

    parquet_options {
      enable_list_inference = true
      enum_as_string        = true
    }
  }
}

# The methods side by side: one row per participant and instance.
resource "google_bigquery_table" "by_participant" {
  # checkov:skip=CKV_GCP_121: a view holds no data; it is recreated from the generated SQL
  # checkov:skip=CKV_GCP_80: a view stores nothing to encrypt; it reads the external table
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.lvmass.dataset_id
  table_id            = "lvmass_by_participant"
  description         = "One row per participant and instance, every method's mass, LVMI, LVH and QC side by side."
  deletion_protection = false
  labels              = var.labels

  view {
    query = templatefile("${path.module}/../lvmass/storage/sql/bigquery/lvmass_by_participant.sql", {
      project = var.project_id
      dataset = google_bigquery_dataset.lvmass.dataset_id
    })
    use_legacy_sql = false
  }

  depends_on = [google_bigquery_table.results]
}

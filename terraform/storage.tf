# Our three buckets. All: uniform bucket-level access (IAM only, no object ACLs), public access prevention
# enforced, optional CMEK. Object reads and writes are recorded by Data Access audit logs (iam.tf).

locals {
  cmek_keys = var.kms_key_name == null ? [] : [var.kms_key_name]
}

# Results: Parquet, summaries, tensors, trained models. Versioned (results_retention_days = 0), or under a
# retention policy: Cloud Storage allows one or the other.
resource "google_storage_bucket" "results" {
  # checkov:skip=CKV_GCP_62: access is recorded by Cloud Audit Logs Data Access logs (google_project_iam_audit_config.storage in iam.tf), not by usage-log buckets
  name                        = var.results_bucket
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = var.labels

  versioning {
    enabled = var.results_retention_days == 0 ? true : false
  }

  dynamic "retention_policy" {
    for_each = var.results_retention_days > 0 ? [var.results_retention_days] : []
    content {
      retention_period = retention_policy.value * 86400
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = local.cmek_keys
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.storage_agent]
}

# Staging: pipeline packages and protos staged by Dataflow, Flex Template specs, Vertex AI staging.
resource "google_storage_bucket" "staging" {
  # checkov:skip=CKV_GCP_62: access is recorded by Cloud Audit Logs Data Access logs (google_project_iam_audit_config.storage in iam.tf), not by usage-log buckets
  name                        = var.staging_bucket
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = var.labels

  versioning {
    enabled = true
  }

  # Staged files are rewritten per job: Beam warns that soft delete bills for every replaced file.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = local.cmek_keys
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.storage_agent]
}

# Temp: Dataflow's scratch (write shards before they are renamed into place). Deleted by age.
resource "google_storage_bucket" "temp" {
  # checkov:skip=CKV_GCP_62: access is recorded by Cloud Audit Logs Data Access logs (google_project_iam_audit_config.storage in iam.tf), not by usage-log buckets
  # checkov:skip=CKV_GCP_78: scratch files that the lifecycle rule deletes after temp_retention_days; keeping versions of them would only keep deleted scratch
  name                        = var.temp_bucket
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = var.labels

  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      age = var.temp_retention_days
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = local.cmek_keys
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.storage_agent]
}

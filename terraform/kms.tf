# Optional CMEK (kms_key_name). The key is yours; these grants let each Google service agent that writes
# data for us use it: Cloud Storage (bucket defaults), BigQuery (dataset default), Artifact Registry,
# Dataflow and Compute Engine (job state and worker disks) and Vertex AI (custom jobs).
# The Artifact Registry and Vertex AI agents appear when those APIs are first used; terraform/README.md says
# how to create them ahead of apply.

data "google_project" "this" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "gcs" {
  count   = var.kms_key_name == null ? 0 : 1
  project = var.project_id
}

data "google_bigquery_default_service_account" "bigquery" {
  count   = var.kms_key_name == null ? 0 : 1
  project = var.project_id
}

locals {
  project_number = data.google_project.this.number
  cmek_service_agents = var.kms_key_name == null ? {} : {
    artifact_registry = "serviceAccount:service-${local.project_number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
    dataflow          = "serviceAccount:service-${local.project_number}@dataflow-service-producer-prod.iam.gserviceaccount.com"
    compute           = "serviceAccount:service-${local.project_number}@compute-system.iam.gserviceaccount.com"
    vertex_ai         = "serviceAccount:service-${local.project_number}@gcp-sa-aiplatform.iam.gserviceaccount.com"
  }
}

resource "google_kms_crypto_key_iam_member" "storage_agent" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs[0].email_address}"
}

resource "google_kms_crypto_key_iam_member" "bigquery_agent" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_bigquery_default_service_account.bigquery[0].email}"
}

resource "google_kms_crypto_key_iam_member" "artifact_registry_agent" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = local.cmek_service_agents["artifact_registry"]
}

resource "google_kms_crypto_key_iam_member" "job_agents" {
  for_each      = { for name, member in local.cmek_service_agents : name => member if name != "artifact_registry" }
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}

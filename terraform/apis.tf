# The APIs this configuration and the jobs need. Left enabled on destroy: other work may use them.
locals {
  required_apis = toset(concat([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "storage.googleapis.com",
  ], var.kms_key_name == null ? [] : ["cloudkms.googleapis.com"]))
}

resource "google_project_service" "required" {
  for_each           = local.required_apis
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

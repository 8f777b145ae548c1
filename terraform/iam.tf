# Least privilege: two service accounts, each with the roles its jobs use and no more; roles are granted
# on the bucket, dataset or repository they are for wherever IAM allows, on the project only where it
# does not (dataflow.worker). No primitive roles (owner, editor, viewer) anywhere.

resource "google_service_account" "dataflow" {
  project      = var.project_id
  account_id   = "lvmass-dataflow"
  display_name = "lvmass Dataflow workers and Flex Template launcher"
  description  = "Reads the biobank input bucket; reads and writes our buckets; runs Dataflow work items."
  depends_on   = [google_project_service.required]
}

resource "google_service_account" "vertex" {
  project      = var.project_id
  account_id   = "lvmass-vertex"
  display_name = "lvmass Vertex AI training"
  description  = "Reads tensors and writes models, checkpoints and logs in our results and staging buckets."
  depends_on   = [google_project_service.required]
}

locals {
  dataflow_member = "serviceAccount:${google_service_account.dataflow.email}"
  vertex_member   = "serviceAccount:${google_service_account.vertex.email}"
  our_buckets = {
    results = google_storage_bucket.results.name
    staging = google_storage_bucket.staging.name
    temp    = google_storage_bucket.temp.name
  }
  vertex_buckets = {
    results = google_storage_bucket.results.name
    staging = google_storage_bucket.staging.name
  }
}

# --- Dataflow workers ------------------------------------------------------------------------------

# Run Dataflow work items (lease work, report progress, write logs and metrics): a project-level role.
resource "google_project_iam_member" "dataflow_worker" {
  project = var.project_id
  role    = "roles/dataflow.worker"
  member  = local.dataflow_member
}

# The biobank's bucket: read objects, nothing else. Granted here only when we administer that bucket;
# otherwise its owner grants the output input_bucket_reader_member the same role.
resource "google_storage_bucket_iam_member" "dataflow_input_reader" {
  count  = var.manage_input_bucket_iam ? 1 : 0
  bucket = var.input_bucket
  role   = "roles/storage.objectViewer"
  member = local.dataflow_member
}

resource "google_storage_bucket_iam_member" "dataflow_our_buckets" {
  for_each = local.our_buckets
  bucket   = each.value
  role     = "roles/storage.objectAdmin"
  member   = local.dataflow_member
}

resource "google_bigquery_dataset_iam_member" "dataflow_data_editor" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.lvmass.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.dataflow_member
}

resource "google_artifact_registry_repository_iam_member" "dataflow_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.containers.location
  repository = google_artifact_registry_repository.containers.name
  role       = "roles/artifactregistry.reader"
  member     = local.dataflow_member
}

# --- Vertex AI training ----------------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "vertex_our_buckets" {
  for_each = local.vertex_buckets
  bucket   = each.value
  role     = "roles/storage.objectAdmin"
  member   = local.vertex_member
}

resource "google_artifact_registry_repository_iam_member" "vertex_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.containers.location
  repository = google_artifact_registry_repository.containers.name
  role       = "roles/artifactregistry.reader"
  member     = local.vertex_member
}

# --- The people who launch jobs (operator_members) ------------------------------------------------

locals {
  operator_project_roles = ["roles/dataflow.developer", "roles/aiplatform.user", "roles/bigquery.jobUser"]
  operator_bindings      = { for pair in setproduct(var.operator_members, local.operator_project_roles) : "${pair[0]} ${pair[1]}" => pair }
  operator_sa_bindings = { for pair in setproduct(var.operator_members, ["dataflow", "vertex"]) : "${pair[0]} ${pair[1]}" => {
    member             = pair[0]
    service_account_id = pair[1] == "dataflow" ? google_service_account.dataflow.name : google_service_account.vertex.name
  } }
  operator_bucket_bindings = { for pair in setproduct(var.operator_members, ["results", "staging"]) : "${pair[0]} ${pair[1]}" => pair }
}

resource "google_project_iam_member" "operators" {
  for_each = local.operator_bindings
  project  = var.project_id
  member   = each.value[0]
  role     = each.value[1]
}

# Launch jobs that run as the two service accounts (and nothing else those accounts could do).
resource "google_service_account_iam_member" "operators_act_as" {
  for_each           = local.operator_sa_bindings
  service_account_id = each.value.service_account_id
  role               = "roles/iam.serviceAccountUser"
  member             = each.value.member
}

# Upload phenotypes and template specs, read results.
resource "google_storage_bucket_iam_member" "operators_buckets" {
  for_each = local.operator_bucket_bindings
  bucket   = local.our_buckets[each.value[1]]
  role     = "roles/storage.objectAdmin"
  member   = each.value[0]
}

resource "google_bigquery_dataset_iam_member" "operators_data_viewer" {
  for_each   = toset(var.operator_members)
  project    = var.project_id
  dataset_id = google_bigquery_dataset.lvmass.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}

# Push the worker, launcher and trainer images.
resource "google_artifact_registry_repository_iam_member" "operators_writer" {
  for_each   = toset(var.operator_members)
  project    = var.project_id
  location   = google_artifact_registry_repository.containers.location
  repository = google_artifact_registry_repository.containers.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}

# --- Audit ----------------------------------------------------------------------------------------

# Every object read and written in this project's buckets is logged (who, when, which object).
resource "google_project_iam_audit_config" "storage" {
  count   = var.data_access_audit_logs ? 1 : 0
  project = var.project_id
  service = "storage.googleapis.com"
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

# What the run commands use (docs/cloud.md): `terraform output -raw NAME`.

output "project_id" {
  value = var.project_id
}

output "region" {
  value = var.region
}

output "results_bucket_url" {
  description = "gs:// URL of the results bucket."
  value       = google_storage_bucket.results.url
}

output "results_output_uri" {
  description = "The run folder the BigQuery tables read: pass it as the pipeline's --output."
  value       = local.results_output_uri
}

output "staging_location" {
  description = "--staging_location for Dataflow, staging bucket of Vertex AI jobs."
  value       = "${google_storage_bucket.staging.url}/dataflow/staging"
}

output "template_location" {
  description = "Where the Flex Template spec file goes (gcloud dataflow flex-template build)."
  value       = "${google_storage_bucket.staging.url}/templates/lvmass.json"
}

output "temp_location" {
  description = "--temp_location for Dataflow."
  value       = "${google_storage_bucket.temp.url}/dataflow/temp"
}

output "dataflow_service_account" {
  description = "--service_account_email of Dataflow jobs (workers and Flex Template launcher)."
  value       = google_service_account.dataflow.email
}

output "vertex_service_account" {
  description = "Service account of Vertex AI custom jobs (python -m trainer.vertex --service_account)."
  value       = google_service_account.vertex.email
}

output "input_bucket_reader_member" {
  description = "Ask the input bucket's owner to grant this member roles/storage.objectViewer (unless manage_input_bucket_iam)."
  value       = local.dataflow_member
}

output "image_repository" {
  description = "Artifact Registry path of the images: REPO/worker, REPO/launcher, REPO/trainer."
  value       = "${google_artifact_registry_repository.containers.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.containers.repository_id}"
}

output "bigquery_dataset" {
  description = "PROJECT.DATASET of the external tables lvmass, lvmass_errors and the view lvmass_by_participant."
  value       = "${var.project_id}.${google_bigquery_dataset.lvmass.dataset_id}"
}

output "kms_key_name" {
  description = "The CMEK (or null): --dataflow_kms_key for Dataflow, --kms_key_name for trainer.vertex."
  value       = var.kms_key_name
}

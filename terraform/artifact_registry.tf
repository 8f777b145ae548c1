# Docker repository of the Dataflow worker, Flex Template launcher and Vertex AI trainer images.
# Tags are immutable: a released tag (0.2.0) always names the same image.
resource "google_artifact_registry_repository" "containers" {
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  description   = "lvmass containers: worker (Dataflow SDK), launcher (Flex Template), trainer (Vertex AI)."
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name
  labels        = var.labels

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.artifact_registry_agent]
}

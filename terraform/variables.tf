# Inputs. Bucket names are global in Cloud Storage: choose your own (terraform.tfvars.example).

variable "project_id" {
  description = "Google Cloud project that holds the buckets, dataset, registry, service accounts and jobs."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project ID (6-30 characters: lower-case letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the buckets, the BigQuery dataset, the registry, Dataflow and Vertex AI (keep it the input bucket's region: no egress)."
  type        = string
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Cloud region such as europe-west4 or us-central1 (not a multi-region)."
  }
}

variable "input_bucket" {
  description = "The biobank's bucket of participant zips (field 20209). Someone else's: this configuration only reads it."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", var.input_bucket))
    error_message = "input_bucket must be a bucket name, without gs://."
  }
}

variable "manage_input_bucket_iam" {
  description = "Grant the Dataflow workers object viewer on input_bucket from here. Needs storage admin on that bucket; when false, send its owner the output input_bucket_reader_member instead."
  type        = bool
  default     = false
}

variable "results_bucket" {
  description = "Our bucket for results (Parquet, summaries, tensors, trained models). Versioned, or under a retention policy."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.results_bucket))
    error_message = "results_bucket must be a bucket name (3-63 characters, lower case), without gs://."
  }
}

variable "staging_bucket" {
  description = "Our bucket for Dataflow staging files, Flex Template specs and Vertex AI staging."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.staging_bucket))
    error_message = "staging_bucket must be a bucket name (3-63 characters, lower case), without gs://."
  }
}

variable "temp_bucket" {
  description = "Our bucket for Dataflow temp files (write shards, shuffle spill): objects are deleted after temp_retention_days."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.temp_bucket))
    error_message = "temp_bucket must be a bucket name (3-63 characters, lower case), without gs://."
  }
}

variable "temp_retention_days" {
  description = "Days before objects in temp_bucket are deleted."
  type        = number
  default     = 7
  validation {
    condition     = var.temp_retention_days >= 1 && var.temp_retention_days <= 365
    error_message = "temp_retention_days must be between 1 and 365."
  }
}

variable "results_retention_days" {
  description = "0: the results bucket is versioned (overwritten or deleted objects stay as noncurrent versions). Above 0: a retention policy of this many days instead (no object can be deleted or replaced before then). Cloud Storage does not allow both."
  type        = number
  default     = 0
  validation {
    condition     = var.results_retention_days >= 0 && var.results_retention_days <= 3650
    error_message = "results_retention_days must be between 0 and 3650."
  }
}

variable "noncurrent_version_days" {
  description = "Days a noncurrent (overwritten or deleted) version is kept in the versioned buckets."
  type        = number
  default     = 90
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "results_output" {
  description = "The run folder in results_bucket that the BigQuery external tables read (the pipeline's --output is gs://RESULTS_BUCKET/RESULTS_OUTPUT)."
  type        = string
  default     = "runs/current"
  validation {
    condition     = can(regex("^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$", var.results_output))
    error_message = "results_output must be a relative folder such as runs/2026-11, without leading or trailing '/'."
  }
}

variable "dataset_id" {
  description = "BigQuery dataset of the external tables and the view."
  type        = string
  default     = "lvmass"
  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]{0,1023}$", var.dataset_id))
    error_message = "dataset_id must hold only letters, digits and underscores."
  }
}

variable "repository_id" {
  description = "Artifact Registry Docker repository of the worker, launcher and trainer images."
  type        = string
  default     = "lvmass"
}

variable "kms_key_name" {
  description = "Optional CMEK: projects/P/locations/REGION/keyRings/R/cryptoKeys/K. When set, buckets, dataset and registry default to it, and the run commands pass it to Dataflow and Vertex AI. null: Google-managed keys."
  type        = string
  default     = null
  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must be null or projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "operator_members" {
  description = "Principals who launch the jobs (e.g. user:you@example.org, group:lvmass@example.org): they may run Dataflow and Vertex AI jobs as the two service accounts."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.operator_members : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "operator_members must be IAM members: user:..., group:..., serviceAccount:... or domain:...."
  }
}

variable "data_access_audit_logs" {
  description = "Record every object read and write in Cloud Storage (Data Access audit logs) for this project."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels put on every resource that takes labels."
  type        = map(string)
  default     = { app = "lvmass" }
}

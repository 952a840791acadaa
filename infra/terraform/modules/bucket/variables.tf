variable "bucket_name" {
  description = "Exact bucket name. Leave null to have AWS append a unique suffix to bucket_prefix."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 characters of lowercase letters, digits, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "bucket_prefix" {
  description = "Prefix of the generated bucket name, used when bucket_name is null."
  type        = string
  default     = "gallery-search-"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{0,36}$", var.bucket_prefix))
    error_message = "bucket_prefix must be 1-37 characters of lowercase letters, digits, '.' and '-'."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Keep false for real galleries."
  type        = bool
  default     = false
}

variable "temporary_prefixes" {
  description = "Key prefixes (ending in '/') whose objects are temporary and expire after temporary_expiration_days."
  type        = list(string)
  default     = ["tmp/"]

  validation {
    condition     = alltrue([for p in var.temporary_prefixes : can(regex("^[A-Za-z0-9._-][A-Za-z0-9._/-]*/$", p))])
    error_message = "Each temporary prefix must be a relative key prefix ending in '/', e.g. \"tmp/\"."
  }
}

variable "temporary_expiration_days" {
  description = "Days after which objects under temporary_prefixes are deleted (1-365)."
  type        = number
  default     = 7

  validation {
    condition     = var.temporary_expiration_days >= 1 && var.temporary_expiration_days <= 365
    error_message = "temporary_expiration_days must be from 1 to 365."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days to keep overwritten or deleted object versions before they are removed for good (1-3650). This is the window in which a bad snapshot can be rolled back."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be from 1 to 3650."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which unfinished multipart uploads (e.g. from a killed enrollment job) are aborted (1-30)."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && var.abort_incomplete_multipart_upload_days <= 30
    error_message = "abort_incomplete_multipart_upload_days must be from 1 to 30."
  }
}

variable "kms_key_deletion_window_days" {
  description = "Waiting period (7-30 days) before the bucket's KMS key is deleted after `terraform destroy`. Objects encrypted with it are unreadable once it is gone."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days must be from 7 to 30."
  }
}

variable "access_log_bucket" {
  description = "Name of an existing bucket to receive S3 server access logs. Null disables access logging."
  type        = string
  default     = null
}

variable "access_log_prefix" {
  description = "Key prefix for S3 server access logs in access_log_bucket."
  type        = string
  default     = "s3-access/gallery-search/"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

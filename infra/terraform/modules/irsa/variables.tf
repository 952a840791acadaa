variable "role_name" {
  description = "Name of the IAM role (1-64 characters)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.role_name))
    error_message = "role_name must be 1-64 characters of letters, digits and +=,.@_-."
  }
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC identity provider."
  type        = string
}

variable "oidc_issuer_url" {
  description = "Issuer URL of the cluster's OIDC provider, with or without the https:// scheme."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the service account allowed to assume the role."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label."
  }
}

variable "service_account" {
  description = "Name of the Kubernetes service account allowed to assume the role."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.service_account))
    error_message = "service_account must be a DNS-1123 subdomain."
  }
}

variable "bucket_arn" {
  description = "ARN of the only bucket the role may reach."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the bucket; the role may use it only through S3."
  type        = string
}

variable "s3_access" {
  description = <<-EOT
    Key prefixes (each ending in '/') the role may use, by kind of access:
    read (list and get), read_write (list, get, put, delete) and append_only (put only:
    the role can add audit records but can neither read nor delete them).
  EOT
  type = object({
    read        = optional(list(string), [])
    read_write  = optional(list(string), [])
    append_only = optional(list(string), [])
  })

  validation {
    condition = alltrue([
      for p in concat(var.s3_access.read, var.s3_access.read_write, var.s3_access.append_only) :
      can(regex("^[A-Za-z0-9._-][A-Za-z0-9._/-]*/$", p))
    ])
    error_message = "Each prefix must be a relative key prefix ending in '/' without wildcards, e.g. \"gallery/\"."
  }

  validation {
    condition     = length(concat(var.s3_access.read, var.s3_access.read_write, var.s3_access.append_only)) > 0
    error_message = "s3_access must grant at least one prefix."
  }
}

variable "tags" {
  description = "Tags added to the role."
  type        = map(string)
  default     = {}
}

variable "repository_name" {
  description = "Name of the ECR repository."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", var.repository_name)) && length(var.repository_name) <= 256
    error_message = "repository_name must be a valid ECR repository name (lowercase, digits, '.', '_', '-', '/')."
  }
}

variable "kms_key_arn" {
  description = "KMS key to encrypt images with. Null uses the AWS-managed aws/ecr key."
  type        = string
  default     = null
}

variable "keep_images" {
  description = "Number of most recent images to keep; older ones are expired (1-1000)."
  type        = number
  default     = 30

  validation {
    condition     = var.keep_images >= 1 && var.keep_images <= 1000
    error_message = "keep_images must be from 1 to 1000."
  }
}

variable "force_delete" {
  description = "Let `terraform destroy` delete the repository while it still holds images."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to the repository."
  type        = map(string)
  default     = {}
}

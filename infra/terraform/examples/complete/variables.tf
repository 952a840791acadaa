variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Availability zones of region to use (2 to 4)."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "gateway_certificate_arn" {
  description = "ACM certificate (in region) for the gateway's TLS listener, covering the name clients will use."
  type        = string
}

variable "operator_cidrs" {
  description = "CIDR blocks of the operators' network: allowed to reach the Kubernetes API and the gateway."
  type        = list(string)
}

variable "shards" {
  description = "Number of index shards; one GPU node each."
  type        = number
  default     = 2

  validation {
    condition     = var.shards >= 1 && var.shards <= 64
    error_message = "shards must be from 1 to 64."
  }
}

variable "enrollment_gpu_nodes" {
  description = "Extra GPU nodes for the embedders of a running enrollment job (RayJob replicas); 0 between jobs."
  type        = number
  default     = 0

  validation {
    condition     = var.enrollment_gpu_nodes >= 0 && var.enrollment_gpu_nodes <= 32
    error_message = "enrollment_gpu_nodes must be from 0 to 32."
  }
}

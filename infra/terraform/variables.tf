variable "name" {
  description = "Name of the deployment: the EKS cluster, and the prefix of the VPC, bucket, roles and load balancer."
  type        = string
  default     = "gallery-search"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2-21 characters of lowercase letters, digits and '-', starting with a letter (it prefixes names AWS limits to 32 characters)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# Network

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC, a /16 to /18."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "2 to 4 availability zones of the provider's region for subnets and nodes, e.g. [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]. Listed explicitly so that subnets never move when AWS adds a zone; check that your GPU instance type is offered in each (`aws ec2 describe-instance-type-offerings --location-type availability-zone`)."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway shared by all zones (about 32 USD a month each, plus data) instead of one per zone."
  type        = bool
  default     = true
}

# Cluster

variable "kubernetes_version" {
  description = "Kubernetes minor version of EKS, e.g. \"1.33\"."
  type        = string
  default     = "1.33"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the Kubernetes API over the internet. Empty (the default) keeps the API private to the VPC."
  type        = list(string)
  default     = []
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles or users made cluster admins (the identity running Terraform is one already)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Days to keep EKS control-plane logs and VPC flow logs in CloudWatch Logs (a value CloudWatch accepts, e.g. 30, 90, 365)."
  type        = number
  default     = 365
}

variable "system_node_group" {
  description = <<-EOT
    CPU node group for add-ons, the KubeRay operator and the Ray head pod (which runs the gateway):
    instance_types, ami_type (e.g. AL2023_x86_64_STANDARD), capacity_type (ON_DEMAND or SPOT),
    min_size <= desired_size <= max_size (min_size >= 1), disk_size_gib.
  EOT
  type = object({
    instance_types = optional(list(string), ["m6i.2xlarge"])
    ami_type       = optional(string, "AL2023_x86_64_STANDARD")
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = optional(number, 2)
    desired_size   = optional(number, 2)
    max_size       = optional(number, 4)
    disk_size_gib  = optional(number, 50)
  })
  default = {}
}

variable "gpu_node_group" {
  description = <<-EOT
    GPU node group for the shard actors (one GPU each) and enrollment workers: instance_types (g4dn, g5, g6, g6e,
    gr6, p3, p4d, p5 families), ami_type (BOTTLEROCKET_x86_64_NVIDIA or AL2023_x86_64_NVIDIA), capacity_type
    (ON_DEMAND or SPOT), 0 <= min_size <= desired_size <= max_size, disk_size_gib (>= 80). With one GPU per node,
    desired_size should equal the number of shards.
  EOT
  type = object({
    instance_types = optional(list(string), ["g5.xlarge"])
    ami_type       = optional(string, "BOTTLEROCKET_x86_64_NVIDIA")
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = optional(number, 0)
    desired_size   = optional(number, 2)
    max_size       = optional(number, 4)
    disk_size_gib  = optional(number, 150)
  })
  default = {}
}

# Storage

variable "bucket_name" {
  description = "Exact name of the gallery bucket. Null generates a unique name starting with \"<name>-\"."
  type        = string
  default     = null
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its galleries in it. Keep false outside experiments."
  type        = bool
  default     = false
}

variable "store_prefix" {
  description = "Key prefix (ending in '/') of the gallery store inside the bucket; `gallery serve --store` gets s3://BUCKET/<prefix without the slash>."
  type        = string
  default     = "gallery/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-][A-Za-z0-9._/-]*/$", var.store_prefix))
    error_message = "store_prefix must be a relative key prefix ending in '/', e.g. \"gallery/\"."
  }
}

variable "temporary_prefixes" {
  description = "Key prefixes (ending in '/') of temporary data, deleted after temporary_expiration_days."
  type        = list(string)
  default     = ["tmp/"]
}

variable "temporary_expiration_days" {
  description = "Days after which objects under temporary_prefixes are deleted (1-365)."
  type        = number
  default     = 7
}

variable "noncurrent_version_expiration_days" {
  description = "Days old object versions are kept, i.e. how far back a snapshot can be restored (1-3650)."
  type        = number
  default     = 90
}

variable "s3_access_log_bucket" {
  description = "Existing bucket for S3 server access logs of the gallery bucket. Null disables them."
  type        = string
  default     = null
}

# Workloads

variable "kubernetes_namespace" {
  description = "Namespace of the Ray pods; must match infra/k8s (\"gallery\" there)."
  type        = string
  default     = "gallery"
}

variable "service_accounts" {
  description = <<-EOT
    Kubernetes service accounts (in kubernetes_namespace) that get an IAM role, with the bucket prefixes each may
    read, read and write, or only append to. Nothing else in AWS is granted. The defaults match infra/k8s:
    gallery-ray (gateway and shards) cannot read raw manifests; gallery-enroll (enrollment jobs) can.
  EOT
  type = map(object({
    read        = optional(list(string), [])
    read_write  = optional(list(string), [])
    append_only = optional(list(string), [])
  }))
  default = {
    "gallery-ray" = {
      read_write  = ["gallery/", "segments/"]
      append_only = ["audit/"]
    }
    "gallery-enroll" = {
      read        = ["manifests/"]
      read_write  = ["gallery/", "segments/", "tmp/"]
      append_only = ["audit/"]
    }
  }

  validation {
    condition     = length(var.service_accounts) > 0 && alltrue([for k in keys(var.service_accounts) : can(regex("^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$", k))])
    error_message = "service_accounts keys must be Kubernetes names of at most 42 characters (they become role-name suffixes)."
  }
}

variable "ecr_repository_name" {
  description = "Name of the ECR repository for the gallery-search image. Null uses name."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "Image tag the generated Kubernetes settings (gallery_env output) point at; tags are immutable, so push a new tag per release."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid image tag."
  }
}

# Gateway

variable "gateway" {
  description = <<-EOT
    Load balancer in front of the gRPC gateway. certificate_arn: an ACM certificate; or domain_name plus
    route53_zone_id to have one issued and an alias record made. internal: reachable only from the VPC (default)
    or from the internet. allowed_cidrs: who may connect (empty: the VPC). listener_port: TLS port (443).
    node_port: the gateway Service's NodePort, must match infra/k8s (30051). deletion_protection, access_logs_bucket.
  EOT
  type = object({
    certificate_arn     = optional(string)
    domain_name         = optional(string)
    route53_zone_id     = optional(string)
    internal            = optional(bool, true)
    allowed_cidrs       = optional(list(string), [])
    listener_port       = optional(number, 443)
    node_port           = optional(number, 30051)
    deletion_protection = optional(bool, true)
    access_logs_bucket  = optional(string)
  })

  validation {
    condition     = var.gateway.certificate_arn != null || (var.gateway.domain_name != null && var.gateway.route53_zone_id != null)
    error_message = "gateway needs certificate_arn, or domain_name and route53_zone_id to issue a certificate."
  }

  validation {
    condition     = var.gateway.internal || length(var.gateway.allowed_cidrs) > 0
    error_message = "An internet-facing gateway (internal = false) needs explicit allowed_cidrs."
  }

  validation {
    condition     = !contains(var.gateway.allowed_cidrs, "0.0.0.0/0")
    error_message = "gateway.allowed_cidrs must not contain 0.0.0.0/0: the gateway returns face matches and has to be fenced off."
  }
}

variable "name" {
  description = "Name of the EKS cluster; also the prefix of its node groups, roles and keys."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 characters of lowercase letters, digits and '-', starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and nodes, e.g. \"1.33\". Pick one in EKS standard support; older versions bill extended support."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version from 1.28 to 1.39, e.g. \"1.33\"."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the cluster runs in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the control plane's network interfaces and the nodes, in at least two availability zones."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two subnets (EKS requires two availability zones)."
  }
}

variable "endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the Kubernetes API from the internet. Empty keeps the API private to the VPC (reach it through a VPN, a bastion or a peered network)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "endpoint_public_access_cidrs must be valid IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "admin_principal_arns" {
  description = "IAM users or roles granted cluster-admin through EKS access entries, besides the identity that creates the cluster."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "admin_principal_arns must be IAM role or user ARNs."
  }
}

variable "log_retention_days" {
  description = "Days to keep control-plane logs in CloudWatch Logs; one of the values CloudWatch accepts (e.g. 30, 90, 365)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts."
  }
}

variable "addons" {
  description = "EKS managed add-ons to install at their default version for the cluster's Kubernetes version."
  type        = list(string)
  default     = ["vpc-cni", "kube-proxy", "coredns"]
}

variable "system_node_group" {
  description = <<-EOT
    CPU node group for cluster add-ons, the KubeRay operator and the Ray head pod (which runs the gRPC gateway).
    instance_types: EC2 types, first one preferred; ami_type: an EKS AMI type (AL2023_x86_64_STANDARD, BOTTLEROCKET_x86_64, ...);
    capacity_type: ON_DEMAND or SPOT; min_size <= desired_size <= max_size; disk_size_gib: root (or Bottlerocket data) volume size.
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

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group sizes must satisfy 1 <= min_size <= desired_size <= max_size."
  }

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.system_node_group.capacity_type)
    error_message = "system_node_group.capacity_type must be ON_DEMAND or SPOT."
  }

  validation {
    condition     = length(var.system_node_group.instance_types) > 0 && var.system_node_group.disk_size_gib >= 20
    error_message = "system_node_group needs at least one instance type and disk_size_gib >= 20."
  }
}

variable "gpu_node_group" {
  description = <<-EOT
    GPU node group for the shard actors (one GPU per shard) and enrollment workers. Nodes carry the taint
    nvidia.com/gpu=true:NoSchedule and the label gallery-search/pool=gpu.
    instance_types: GPU EC2 types (g4dn, g5, g6, g6e, gr6, p3, p4d, p4de, p5, p5e, p5en families); ami_type: an NVIDIA AMI
    (BOTTLEROCKET_x86_64_NVIDIA ships the NVIDIA device plugin; AL2023_x86_64_NVIDIA needs it installed); capacity_type:
    ON_DEMAND or SPOT; 0 <= min_size <= desired_size <= max_size; disk_size_gib: volume for images and snapshots (>= 80).
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

  validation {
    condition     = var.gpu_node_group.min_size >= 0 && var.gpu_node_group.min_size <= var.gpu_node_group.desired_size && var.gpu_node_group.desired_size <= var.gpu_node_group.max_size && var.gpu_node_group.max_size >= 1
    error_message = "gpu_node_group sizes must satisfy 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }

  validation {
    condition     = length(var.gpu_node_group.instance_types) > 0 && alltrue([for t in var.gpu_node_group.instance_types : can(regex("^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en)\\.[0-9a-z]+$", t))])
    error_message = "gpu_node_group.instance_types must be x86 NVIDIA GPU types (g4dn, g5, g6, g6e, gr6, p3, p3dn, p4d, p4de, p5, p5e, p5en)."
  }

  validation {
    condition     = contains(["BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA"], var.gpu_node_group.ami_type)
    error_message = "gpu_node_group.ami_type must be BOTTLEROCKET_x86_64_NVIDIA or AL2023_x86_64_NVIDIA."
  }

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_node_group.capacity_type)
    error_message = "gpu_node_group.capacity_type must be ON_DEMAND or SPOT."
  }

  validation {
    condition     = var.gpu_node_group.disk_size_gib >= 80
    error_message = "gpu_node_group.disk_size_gib must be at least 80: the CUDA image alone takes about 15 GiB unpacked."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

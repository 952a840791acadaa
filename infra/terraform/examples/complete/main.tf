provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "gallery-search"
      ManagedBy = "terraform"
    }
  }
}

module "gallery" {
  source = "../../"

  name               = "gallery-search"
  availability_zones = var.availability_zones

  # Operators run kubectl and helm from their own network; the API stays closed to everyone else.
  cluster_endpoint_public_access_cidrs = var.operator_cidrs

  gpu_node_group = {
    instance_types = ["g5.xlarge"]
    min_size       = 0
    desired_size   = var.shards + var.enrollment_gpu_nodes
    max_size       = var.shards + var.enrollment_gpu_nodes + 2
  }

  gateway = {
    certificate_arn = var.gateway_certificate_arn
    internal        = false
    allowed_cidrs   = var.operator_cidrs
  }
}

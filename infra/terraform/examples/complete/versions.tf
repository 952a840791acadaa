terraform {
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }

  # Keep state out of the working tree for real deployments, e.g.:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "gallery-search/terraform.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
}

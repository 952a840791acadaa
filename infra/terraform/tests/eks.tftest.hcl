# EKS: private API by default, encrypted secrets, hardened nodes, and a GPU node group sized by its variables.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name       = "gallery-search"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  gpu_node_group = {
    instance_types = ["g6.2xlarge"]
    capacity_type  = "SPOT"
    min_size       = 1
    desired_size   = 3
    max_size       = 5
    disk_size_gib  = 200
  }
}

run "gpu_node_group_is_sized_by_variables" {
  command = apply

  module {
    source = "./modules/eks"
  }

  assert {
    condition = (
      aws_eks_node_group.this["gpu"].scaling_config[0].min_size == 1 &&
      aws_eks_node_group.this["gpu"].scaling_config[0].desired_size == 3 &&
      aws_eks_node_group.this["gpu"].scaling_config[0].max_size == 5
    )
    error_message = "GPU node group sizes must come from var.gpu_node_group."
  }

  assert {
    condition     = aws_eks_node_group.this["gpu"].instance_types == tolist(["g6.2xlarge"]) && aws_eks_node_group.this["gpu"].capacity_type == "SPOT"
    error_message = "GPU instance types and capacity type must come from var.gpu_node_group."
  }

  assert {
    condition     = aws_eks_node_group.this["gpu"].ami_type == "BOTTLEROCKET_x86_64_NVIDIA"
    error_message = "GPU nodes default to the NVIDIA Bottlerocket AMI, which ships the device plugin."
  }

  assert {
    condition     = one(aws_launch_template.this["gpu"].block_device_mappings).ebs[0].volume_size == 200 && one(aws_launch_template.this["gpu"].block_device_mappings).device_name == "/dev/xvdb"
    error_message = "The GPU nodes' data volume must be disk_size_gib on Bottlerocket's data device."
  }

  assert {
    condition = (
      length(aws_eks_node_group.this["gpu"].taint) == 1 &&
      one(aws_eks_node_group.this["gpu"].taint).key == "nvidia.com/gpu" &&
      one(aws_eks_node_group.this["gpu"].taint).effect == "NO_SCHEDULE" &&
      length(aws_eks_node_group.this["system"].taint) == 0
    )
    error_message = "Only GPU nodes are tainted nvidia.com/gpu:NoSchedule, so only GPU pods land there."
  }

  assert {
    condition     = aws_eks_node_group.this["gpu"].labels["gallery-search/pool"] == "gpu" && aws_eks_node_group.this["system"].labels["gallery-search/pool"] == "system"
    error_message = "Node groups must carry the gallery-search/pool labels used by infra/k8s node selectors."
  }

  assert {
    condition = (
      aws_eks_node_group.this["system"].scaling_config[0].desired_size == 2 &&
      aws_eks_node_group.this["system"].instance_types == tolist(["m6i.2xlarge"])
    )
    error_message = "The system node group keeps its defaults when only the GPU group is set."
  }
}

run "cluster_and_nodes_are_hardened" {
  command = apply

  module {
    source = "./modules/eks"
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_public_access == false && aws_eks_cluster.this.vpc_config[0].endpoint_private_access
    error_message = "The Kubernetes API must be private unless public CIDRs are given."
  }

  assert {
    condition     = one(aws_eks_cluster.this.encryption_config).resources == toset(["secrets"]) && one(one(aws_eks_cluster.this.encryption_config).provider).key_arn == aws_kms_key.secrets.arn
    error_message = "Kubernetes secrets must be envelope-encrypted with the module's KMS key."
  }

  assert {
    condition     = length(setsubtract(["api", "audit", "authenticator", "controllerManager", "scheduler"], aws_eks_cluster.this.enabled_cluster_log_types)) == 0
    error_message = "All control-plane log types must be enabled."
  }

  assert {
    condition = alltrue([
      for lt in aws_launch_template.this :
      lt.metadata_options[0].http_tokens == "required" && lt.metadata_options[0].http_put_response_hop_limit == 1
    ])
    error_message = "Nodes must require IMDSv2 with a hop limit of 1, so pods cannot borrow the node role."
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.this : alltrue([for b in lt.block_device_mappings : b.ebs[0].encrypted == "true"])])
    error_message = "Node volumes must be encrypted."
  }

  assert {
    condition     = aws_iam_openid_connect_provider.this.url == "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE" && aws_iam_openid_connect_provider.this.client_id_list == toset(["sts.amazonaws.com"])
    error_message = "The OIDC provider must be the cluster's issuer with the STS audience."
  }
}

run "public_api_only_for_listed_cidrs" {
  command = apply

  module {
    source = "./modules/eks"
  }

  variables {
    endpoint_public_access_cidrs = ["203.0.113.0/24"]
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_public_access && aws_eks_cluster.this.vpc_config[0].public_access_cidrs == toset(["203.0.113.0/24"])
    error_message = "The public endpoint must open only to the listed CIDRs."
  }
}

run "rejects_api_open_to_the_world" {
  command = plan

  module {
    source = "./modules/eks"
  }

  variables {
    endpoint_public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.endpoint_public_access_cidrs]
}

run "rejects_cpu_instances_in_gpu_group" {
  command = plan

  module {
    source = "./modules/eks"
  }

  variables {
    gpu_node_group = { instance_types = ["m6i.xlarge"] }
  }

  expect_failures = [var.gpu_node_group]
}

run "rejects_desired_above_max" {
  command = plan

  module {
    source = "./modules/eks"
  }

  variables {
    gpu_node_group = { min_size = 0, desired_size = 6, max_size = 4 }
  }

  expect_failures = [var.gpu_node_group]
}

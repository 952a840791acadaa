# Values for computed attributes that the AWS provider validates (ARNs) or that the modules index into.
# Everything not listed here gets a random string from the mock provider.

mock_data "aws_partition" {
  defaults = {
    partition = "aws"
  }
}

mock_data "aws_region" {
  defaults = {
    name = "eu-west-1"
  }
}

mock_resource "aws_iam_role" {
  defaults = {
    arn = "arn:aws:iam::111122223333:role/mock-role"
  }
}

mock_resource "aws_kms_key" {
  defaults = {
    arn = "arn:aws:kms:eu-west-1:111122223333:key/11111111-2222-3333-4444-555555555555"
  }
}

mock_resource "aws_s3_bucket" {
  defaults = {
    arn = "arn:aws:s3:::gallery-search-test"
    id  = "gallery-search-test"
  }
}

mock_resource "aws_cloudwatch_log_group" {
  defaults = {
    arn = "arn:aws:logs:eu-west-1:111122223333:log-group:/mock"
  }
}

mock_resource "aws_eks_cluster" {
  defaults = {
    arn      = "arn:aws:eks:eu-west-1:111122223333:cluster/gallery-search"
    endpoint = "https://EXAMPLED539D4633E53DE1B71EXAMPLE.gr7.eu-west-1.eks.amazonaws.com"
    identity = [{ oidc = [{ issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE" }] }]

    certificate_authority = [{ data = "bW9jay1jYQ==" }]
  }
}

mock_resource "aws_iam_openid_connect_provider" {
  defaults = {
    arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
  }
}

mock_resource "aws_launch_template" {
  defaults = {
    id             = "lt-0123456789abcdef0"
    arn            = "arn:aws:ec2:eu-west-1:111122223333:launch-template/lt-0123456789abcdef0"
    latest_version = 1
  }
}

mock_resource "aws_eks_node_group" {
  defaults = {
    arn       = "arn:aws:eks:eu-west-1:111122223333:nodegroup/gallery-search/mock/00000000-0000-0000-0000-000000000000"
    resources = [{ autoscaling_groups = [{ name = "eks-mock-asg" }], remote_access_security_group_id = "" }]
  }
}

mock_resource "aws_lb" {
  defaults = {
    arn      = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:loadbalancer/net/gallery-search-gw/0123456789abcdef"
    dns_name = "gallery-search-gw-0123456789abcdef.elb.eu-west-1.amazonaws.com"
  }
}

mock_resource "aws_lb_target_group" {
  defaults = {
    arn = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/gw-0123/0123456789abcdef"
  }
}

mock_resource "aws_ecr_repository" {
  defaults = {
    arn            = "arn:aws:ecr:eu-west-1:111122223333:repository/gallery-search"
    repository_url = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/gallery-search"
  }
}

data "aws_region" "current" {}

locals {
  store_uri = "s3://${module.bucket.s3_bucket_id}/${trimsuffix(var.store_prefix, "/")}"
  image     = "${module.ecr.repository_url}:${var.image_tag}"
}

module "vpc" {
  source = "./modules/vpc"

  name                    = var.name
  cidr                    = var.vpc_cidr
  availability_zones      = var.availability_zones
  single_nat_gateway      = var.single_nat_gateway
  flow_log_retention_days = var.log_retention_days
  tags                    = var.tags
}

module "eks" {
  source = "./modules/eks"

  name                         = var.name
  kubernetes_version           = var.kubernetes_version
  vpc_id                       = module.vpc.vpc_id
  subnet_ids                   = module.vpc.private_subnet_ids
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  admin_principal_arns         = var.cluster_admin_principal_arns
  log_retention_days           = var.log_retention_days
  system_node_group            = var.system_node_group
  gpu_node_group               = var.gpu_node_group
  tags                         = var.tags
}

module "bucket" {
  source = "./modules/bucket"

  bucket_name                        = var.bucket_name
  bucket_prefix                      = "${var.name}-"
  force_destroy                      = var.bucket_force_destroy
  temporary_prefixes                 = var.temporary_prefixes
  temporary_expiration_days          = var.temporary_expiration_days
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  access_log_bucket                  = var.s3_access_log_bucket
  tags                               = var.tags
}

module "irsa" {
  source   = "./modules/irsa"
  for_each = var.service_accounts

  role_name         = "${var.name}-${each.key}"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer_url   = module.eks.oidc_issuer_url
  namespace         = var.kubernetes_namespace
  service_account   = each.key
  bucket_arn        = module.bucket.s3_bucket_arn
  kms_key_arn       = module.bucket.kms_key_arn
  s3_access         = each.value
  tags              = var.tags
}

module "ecr" {
  source = "./modules/ecr"

  repository_name = coalesce(var.ecr_repository_name, var.name)
  tags            = var.tags
}

module "gateway" {
  source = "./modules/gateway-nlb"

  name                   = "${var.name}-gw"
  vpc_id                 = module.vpc.vpc_id
  subnet_ids             = var.gateway.internal ? module.vpc.private_subnet_ids : module.vpc.public_subnet_ids
  internal               = var.gateway.internal
  allowed_cidrs          = length(var.gateway.allowed_cidrs) > 0 ? var.gateway.allowed_cidrs : [module.vpc.vpc_cidr_block]
  listener_port          = var.gateway.listener_port
  node_port              = var.gateway.node_port
  node_security_group_id = module.eks.node_security_group_id
  autoscaling_group_name = module.eks.node_group_autoscaling_group_names["system"]
  certificate_arn        = var.gateway.certificate_arn
  domain_name            = var.gateway.domain_name
  route53_zone_id        = var.gateway.route53_zone_id
  deletion_protection    = var.gateway.deletion_protection
  access_logs_bucket     = var.gateway.access_logs_bucket
  tags                   = var.tags
}

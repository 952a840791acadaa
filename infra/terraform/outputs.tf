output "region" {
  description = "AWS region everything was created in."
  value       = data.aws_region.current.name
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "URL of the Kubernetes API server."
  value       = module.eks.cluster_endpoint
}

output "kubeconfig_command" {
  description = "Command that adds the cluster to ~/.kube/config."
  value       = "aws eks update-kubeconfig --region ${data.aws_region.current.name} --name ${module.eks.cluster_name}"
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the nodes."
  value       = module.vpc.private_subnet_ids
}

output "nat_public_ips" {
  description = "Public IPs of the cluster's outbound traffic."
  value       = module.vpc.nat_public_ips
}

output "s3_bucket_id" {
  description = "Name of the bucket for galleries, manifests, segments and audit logs."
  value       = module.bucket.s3_bucket_id
}

output "s3_bucket_arn" {
  description = "ARN of the gallery bucket."
  value       = module.bucket.s3_bucket_arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the gallery bucket."
  value       = module.bucket.kms_key_arn
}

output "store_uri" {
  description = "Value for `gallery serve --store` and `jobs.enroll --store`."
  value       = local.store_uri
}

output "iam_role_arns" {
  description = "IRSA role ARN for each Kubernetes service account, for the eks.amazonaws.com/role-arn annotation."
  value       = { for sa, m in module.irsa : sa => m.iam_role_arn }
}

output "ecr_repository_url" {
  description = "Repository to push the gallery-search image to."
  value       = module.ecr.repository_url
}

output "gateway_endpoint" {
  description = "host:port of the gRPC gateway, TLS."
  value       = module.gateway.endpoint
}

output "gateway_lb_dns_name" {
  description = "DNS name of the gateway load balancer (point a CNAME or alias at it if Terraform manages no DNS)."
  value       = module.gateway.lb_dns_name
}

output "gateway_node_port" {
  description = "NodePort the load balancer forwards to; the gateway Service in infra/k8s must use it."
  value       = var.gateway.node_port
}

output "node_group_labels" {
  description = "Labels of the system and gpu node groups, for pod node selectors."
  value       = module.eks.node_group_labels
}

output "gallery_env" {
  description = "Settings for infra/k8s, in env-file form: `terraform output -raw gallery_env > infra/k8s/config/gallery.env`."
  value = join("\n", concat(
    [
      "AWS_REGION=${data.aws_region.current.name}",
      "GALLERY_BUCKET=${module.bucket.s3_bucket_id}",
      "GALLERY_STORE=${local.store_uri}",
      "GALLERY_IMAGE=${local.image}",
      "GALLERY_GATEWAY=gallery-gateway.${var.kubernetes_namespace}.svc.cluster.local:50051",
    ],
    [for sa, m in module.irsa : "ROLE_ARN_${upper(replace(sa, "-", "_"))}=${m.iam_role_arn}"],
    [""],
  ))
}

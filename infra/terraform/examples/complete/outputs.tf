output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.gallery.cluster_name
}

output "kubeconfig_command" {
  description = "Command that adds the cluster to ~/.kube/config."
  value       = module.gallery.kubeconfig_command
}

output "s3_bucket_id" {
  description = "Gallery bucket."
  value       = module.gallery.s3_bucket_id
}

output "store_uri" {
  description = "Value for --store."
  value       = module.gallery.store_uri
}

output "iam_role_arns" {
  description = "IRSA role ARN per service account."
  value       = module.gallery.iam_role_arns
}

output "ecr_repository_url" {
  description = "Where to push the image."
  value       = module.gallery.ecr_repository_url
}

output "gateway_endpoint" {
  description = "host:port of the gRPC gateway (TLS)."
  value       = module.gallery.gateway_endpoint
}

output "gateway_lb_dns_name" {
  description = "Point the certificate's DNS name at this (CNAME)."
  value       = module.gallery.gateway_lb_dns_name
}

output "gallery_env" {
  description = "Settings file for infra/k8s/config/gallery.env."
  value       = module.gallery.gallery_env
}

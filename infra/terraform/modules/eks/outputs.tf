output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the EKS cluster."
  value       = aws_eks_cluster.this.arn
}

output "cluster_endpoint" {
  description = "URL of the Kubernetes API server."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API server."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "cluster_security_group_id" {
  description = "Security group EKS created for the control plane and nodes."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "node_security_group_id" {
  description = "Extra security group on every node; add ingress rules for node ports here."
  value       = aws_security_group.node.id
}

output "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider that IRSA roles trust."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer_url" {
  description = "Issuer URL of the cluster's OIDC provider."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_iam_role_arn" {
  description = "ARN of the IAM role of the nodes."
  value       = aws_iam_role.node.arn
}

output "node_group_autoscaling_group_names" {
  description = "Auto Scaling group behind each node group, by node group key (system, gpu)."
  value       = { for k, g in aws_eks_node_group.this : k => g.resources[0].autoscaling_groups[0].name }
}

output "node_group_labels" {
  description = "Kubernetes labels of each node group's nodes, by node group key; use them as pod node selectors."
  value       = { for k, g in aws_eks_node_group.this : k => g.labels }
}

output "node_group_taints" {
  description = "Taints of each node group's nodes, by node group key; GPU pods need matching tolerations."
  value       = { for k, g in local.node_groups : k => g.taints }
}

output "iam_role_arn" {
  description = "ARN of the role; annotate the service account with it (eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.this.arn
}

output "iam_role_name" {
  description = "Name of the role."
  value       = aws_iam_role.this.name
}

output "iam_role_policy" {
  description = "The role's inline S3 policy (JSON)."
  value       = aws_iam_role_policy.this.policy
}

output "s3_bucket_id" {
  description = "Name of the bucket."
  value       = aws_s3_bucket.this.id
}

output "s3_bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "s3_bucket_region" {
  description = "Region of the bucket."
  value       = aws_s3_bucket.this.region
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the bucket."
  value       = aws_kms_key.this.arn
}

output "s3_bucket_policy" {
  description = "The bucket policy (JSON) as applied."
  value       = aws_s3_bucket_policy.this.policy
}

# Security properties of the gallery bucket, checked against a mocked AWS provider.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  bucket_prefix = "gallery-search-"
}

run "bucket_is_private_encrypted_and_tls_only" {
  command = apply

  module {
    source = "./modules/bucket"
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.this.block_public_acls,
      aws_s3_bucket_public_access_block.this.block_public_policy,
      aws_s3_bucket_public_access_block.this.ignore_public_acls,
      aws_s3_bucket_public_access_block.this.restrict_public_buckets,
    ])
    error_message = "All four public access blocks must be on."
  }

  assert {
    condition     = one(aws_s3_bucket_ownership_controls.this.rule).object_ownership == "BucketOwnerEnforced"
    error_message = "ACLs must be disabled (BucketOwnerEnforced) so that only policies grant access."
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_server_side_encryption_configuration.this.rule :
      one(r.apply_server_side_encryption_by_default).sse_algorithm == "aws:kms" &&
      one(r.apply_server_side_encryption_by_default).kms_master_key_id == aws_kms_key.this.arn
    ]) && length(aws_s3_bucket_server_side_encryption_configuration.this.rule) == 1
    error_message = "Default encryption must be SSE-KMS with the module's own key."
  }

  assert {
    condition     = aws_kms_key.this.enable_key_rotation
    error_message = "The bucket key must rotate."
  }

  assert {
    condition     = one(aws_s3_bucket_versioning.this.versioning_configuration).status == "Enabled"
    error_message = "Versioning must be enabled."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.this.policy).Statement :
      s.Effect == "Deny" && s.Principal == "*" && s.Action == "s3:*" &&
      try(s.Condition.Bool["aws:SecureTransport"], "") == "false" &&
      toset(s.Resource) == toset([aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"])
    ])
    error_message = "The bucket policy must deny every request made without TLS, on the bucket and all its objects."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.this.policy).Statement :
      s.Effect == "Deny" && try(s.Condition.NumericLessThan["s3:TlsVersion"], "") == "1.2"
    ])
    error_message = "The bucket policy must deny TLS versions below 1.2."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_s3_bucket_policy.this.policy).Statement : s.Effect == "Deny"])
    error_message = "The bucket policy must grant nothing; access comes only from the IRSA roles."
  }
}

run "temporary_data_expires" {
  command = apply

  module {
    source = "./modules/bucket"
  }

  variables {
    temporary_prefixes        = ["tmp/", "scratch/"]
    temporary_expiration_days = 2
  }

  assert {
    condition = length([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule : r
      if try(contains(["tmp/", "scratch/"], one(r.filter).prefix) && one(r.expiration).days == 2 && r.status == "Enabled", false)
    ]) == 2
    error_message = "Each temporary prefix must expire after temporary_expiration_days."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule :
      try(length(r.abort_incomplete_multipart_upload) == 1 && length(r.noncurrent_version_expiration) == 1, false)
    ])
    error_message = "Unfinished multipart uploads must be aborted and old versions expired."
  }
}

run "rejects_prefix_without_trailing_slash" {
  command = plan

  module {
    source = "./modules/bucket"
  }

  variables {
    temporary_prefixes = ["tmp"]
  }

  expect_failures = [var.temporary_prefixes]
}

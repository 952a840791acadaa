# The IRSA roles reach only the gallery bucket, only the granted prefixes, and only from one service account.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  role_name         = "gallery-search-gallery-ray"
  oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
  oidc_issuer_url   = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
  namespace         = "gallery"
  service_account   = "gallery-ray"
  bucket_arn        = "arn:aws:s3:::gallery-search-test"
  kms_key_arn       = "arn:aws:kms:eu-west-1:111122223333:key/11111111-2222-3333-4444-555555555555"
  s3_access = {
    read        = ["manifests/"]
    read_write  = ["gallery/", "segments/"]
    append_only = ["audit/"]
  }
}

run "policy_is_scoped_to_the_bucket" {
  command = apply

  module {
    source = "./modules/irsa"
  }

  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [
        for r in flatten([s.Resource]) :
        r == var.bucket_arn || startswith(r, "${var.bucket_arn}/") || r == var.kms_key_arn
      ]
    ]))
    error_message = "Every statement must name the gallery bucket, its objects or its KMS key, nothing else."
  }

  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [
        for r in flatten([s.Resource]) : !strcontains(trimsuffix(r, "*"), "*") && r != "${var.bucket_arn}/*"
      ]
    ]))
    error_message = "Object resources must be limited to granted prefixes (no bucket-wide or mid-string wildcards)."
  }

  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [
        for a in flatten([s.Action]) : !strcontains(a, "*")
      ]
    ]))
    error_message = "Actions must be listed one by one, never with wildcards."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Effect == "Allow"])
    error_message = "The role policy only allows; denies live in the bucket policy."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement :
      try(s.Condition.StringEquals["kms:ViaService"], "") == "s3.eu-west-1.amazonaws.com"
      if contains(flatten([s.Resource]), var.kms_key_arn)
    ])
    error_message = "The KMS key may be used only through S3 in the bucket's region."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement :
      length(setsubtract(s.Condition.StringLike["s3:prefix"], ["manifests/", "manifests/*", "gallery/", "gallery/*", "segments/", "segments/*"])) == 0
      if contains(flatten([s.Action]), "s3:ListBucket")
    ])
    error_message = "Listing must be limited to the readable prefixes."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement :
      !contains(flatten([s.Resource]), "${var.bucket_arn}/audit/*") || length(setintersection(flatten([s.Action]), ["s3:GetObject", "s3:DeleteObject", "s3:GetObjectVersion"])) == 0
    ])
    error_message = "Audit records are append-only: no read or delete on audit/."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement :
      !contains(flatten([s.Resource]), "${var.bucket_arn}/manifests/*") || length(setintersection(flatten([s.Action]), ["s3:PutObject", "s3:DeleteObject"])) == 0
    ])
    error_message = "Read-only prefixes must not be writable."
  }
}

run "trust_is_limited_to_one_service_account" {
  command = apply

  module {
    source = "./modules/irsa"
  }

  assert {
    condition = (
      length(jsondecode(aws_iam_role.this.assume_role_policy).Statement) == 1 &&
      one(jsondecode(aws_iam_role.this.assume_role_policy).Statement).Principal.Federated == var.oidc_provider_arn &&
      one(jsondecode(aws_iam_role.this.assume_role_policy).Statement).Action == "sts:AssumeRoleWithWebIdentity"
    )
    error_message = "Only the cluster's OIDC provider may assume the role."
  }

  assert {
    condition = one(jsondecode(aws_iam_role.this.assume_role_policy).Statement).Condition.StringEquals == {
      "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE:sub" = "system:serviceaccount:gallery:gallery-ray"
      "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE:aud" = "sts.amazonaws.com"
    }
    error_message = "The trust policy must pin the exact namespace, service account and audience."
  }
}

run "rejects_wildcard_prefix" {
  command = plan

  module {
    source = "./modules/irsa"
  }

  variables {
    s3_access = { read_write = ["*"] }
  }

  expect_failures = [var.s3_access]
}

run "rejects_empty_grant" {
  command = plan

  module {
    source = "./modules/irsa"
  }

  variables {
    s3_access = {}
  }

  expect_failures = [var.s3_access]
}

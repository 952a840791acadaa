data "aws_region" "current" {}

locals {
  issuer = trimprefix(var.oidc_issuer_url, "https://")

  listable = distinct(concat(var.s3_access.read, var.s3_access.read_write))
  readable = distinct(concat(var.s3_access.read, var.s3_access.read_write))

  statements = concat(
    length(local.listable) == 0 ? [] : [{
      Sid       = "ListGrantedPrefixes"
      Effect    = "Allow"
      Action    = ["s3:ListBucket", "s3:ListBucketVersions"]
      Resource  = var.bucket_arn
      Condition = { StringLike = { "s3:prefix" = flatten([for p in local.listable : [p, "${p}*"]]) } }
    }],
    length(local.readable) == 0 ? [] : [{
      Sid      = "ReadObjects"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:GetObjectVersion"]
      Resource = [for p in local.readable : "${var.bucket_arn}/${p}*"]
    }],
    length(var.s3_access.read_write) == 0 ? [] : [{
      Sid      = "WriteObjects"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
      Resource = [for p in var.s3_access.read_write : "${var.bucket_arn}/${p}*"]
    }],
    length(var.s3_access.append_only) == 0 ? [] : [{
      Sid      = "AppendOnly"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
      Resource = [for p in var.s3_access.append_only : "${var.bucket_arn}/${p}*"]
    }],
    [
      {
        # boto3 asks for the bucket's region before its first request.
        Sid      = "LocateBucket"
        Effect   = "Allow"
        Action   = "s3:GetBucketLocation"
        Resource = var.bucket_arn
      },
      {
        Sid       = "UseBucketKeyThroughS3"
        Effect    = "Allow"
        Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource  = var.kms_key_arn
        Condition = { StringEquals = { "kms:ViaService" = "s3.${data.aws_region.current.name}.amazonaws.com" } }
      },
    ],
  )
}

resource "aws_iam_role" "this" {
  name = var.role_name

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = var.oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.issuer}:sub" = "system:serviceaccount:${var.namespace}:${var.service_account}"
          "${local.issuer}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })

  tags = var.tags
}

resource "aws_iam_role_policy" "this" {
  name = "gallery-bucket-access"
  role = aws_iam_role.this.id

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.statements
  })
}

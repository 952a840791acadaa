# The whole deployment wired together: roles point at this bucket, the gateway at the system nodes,
# and the settings handed to infra/k8s match.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  gateway = {
    certificate_arn = "arn:aws:acm:eu-west-1:111122223333:certificate/00000000-0000-0000-0000-000000000000"
  }
}

run "deployment_is_wired_together" {
  command = apply

  assert {
    condition     = toset(keys(output.iam_role_arns)) == toset(["gallery-ray", "gallery-enroll"])
    error_message = "There must be one IRSA role per service account in infra/k8s."
  }

  assert {
    condition = alltrue(flatten([
      for sa, m in module.irsa : [
        for s in jsondecode(m.iam_role_policy).Statement : [
          for r in flatten([s.Resource]) :
          r == module.bucket.s3_bucket_arn || startswith(r, "${module.bucket.s3_bucket_arn}/") || r == module.bucket.kms_key_arn
        ]
      ]
    ]))
    error_message = "Every IRSA role must reach only the gallery bucket and its key."
  }

  assert {
    condition = !anytrue([
      for s in jsondecode(module.irsa["gallery-ray"].iam_role_policy).Statement :
      contains(flatten([s.Resource]), "${module.bucket.s3_bucket_arn}/manifests/*")
    ])
    error_message = "The serving role must not read raw enrollment manifests."
  }

  assert {
    condition = alltrue([
      for line in [
        "GALLERY_BUCKET=gallery-search-test",
        "GALLERY_STORE=s3://gallery-search-test/gallery",
        "GALLERY_IMAGE=111122223333.dkr.ecr.eu-west-1.amazonaws.com/gallery-search:0.1.0",
        "GALLERY_GATEWAY=gallery-gateway.gallery.svc.cluster.local:50051",
        "ROLE_ARN_GALLERY_RAY=arn:aws:iam::111122223333:role/mock-role",
        "ROLE_ARN_GALLERY_ENROLL=arn:aws:iam::111122223333:role/mock-role",
        "AWS_REGION=eu-west-1",
      ] : contains(split("\n", output.gallery_env), line)
    ])
    error_message = "gallery_env must carry every setting infra/k8s reads."
  }

  assert {
    condition     = output.store_uri == "s3://gallery-search-test/gallery"
    error_message = "store_uri must be s3://BUCKET/gallery."
  }

  assert {
    condition     = output.gateway_node_port == 30051 && endswith(output.gateway_endpoint, ":443")
    error_message = "The gateway must listen on 443 and forward to NodePort 30051."
  }

  assert {
    condition     = output.node_group_labels["gpu"]["gallery-search/pool"] == "gpu"
    error_message = "GPU nodes must be labelled for the shard pods' node selector."
  }
}

run "rejects_gateway_without_certificate" {
  command = plan

  variables {
    gateway = {}
  }

  expect_failures = [var.gateway]
}

run "rejects_gateway_open_to_the_world" {
  command = plan

  variables {
    gateway = {
      certificate_arn = "arn:aws:acm:eu-west-1:111122223333:certificate/00000000-0000-0000-0000-000000000000"
      internal        = false
      allowed_cidrs   = ["0.0.0.0/0"]
    }
  }

  expect_failures = [var.gateway]
}

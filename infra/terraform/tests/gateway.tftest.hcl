# The gateway load balancer terminates TLS 1.2+ with HTTP/2 (gRPC) and admits only the allowed networks.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name                   = "gallery-search-gw"
  vpc_id                 = "vpc-0123456789abcdef0"
  subnet_ids             = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  allowed_cidrs          = ["10.40.0.0/16", "203.0.113.0/24"]
  node_security_group_id = "sg-0123456789abcdef0"
  autoscaling_group_name = "eks-system-asg"
  certificate_arn        = "arn:aws:acm:eu-west-1:111122223333:certificate/00000000-0000-0000-0000-000000000000"
}

run "listener_is_tls_with_http2" {
  command = apply

  module {
    source = "./modules/gateway-nlb"
  }

  assert {
    condition     = aws_lb_listener.this.protocol == "TLS" && aws_lb_listener.this.port == 443 && aws_lb_listener.this.certificate_arn == var.certificate_arn
    error_message = "The listener must terminate TLS on 443 with the given certificate."
  }

  assert {
    condition     = startswith(aws_lb_listener.this.ssl_policy, "ELBSecurityPolicy-TLS13-1-2")
    error_message = "The listener must refuse TLS below 1.2."
  }

  assert {
    condition     = aws_lb_listener.this.alpn_policy == "HTTP2Only"
    error_message = "gRPC needs HTTP/2 negotiated by ALPN."
  }

  assert {
    condition     = aws_lb.this.load_balancer_type == "network" && aws_lb.this.internal && aws_lb.this.enable_deletion_protection
    error_message = "The load balancer must be an internal, deletion-protected NLB by default."
  }

  assert {
    condition     = aws_lb_target_group.this.port == 30051 && aws_lb_target_group.this.target_type == "instance"
    error_message = "Targets must be the nodes' gateway NodePort (30051)."
  }
}

run "only_allowed_networks_get_in" {
  command = apply

  module {
    source = "./modules/gateway-nlb"
  }

  assert {
    condition = toset([for r in aws_vpc_security_group_ingress_rule.listener : r.cidr_ipv4]) == toset(var.allowed_cidrs) && alltrue([
      for r in aws_vpc_security_group_ingress_rule.listener : r.from_port == 443 && r.to_port == 443 && r.ip_protocol == "tcp"
    ])
    error_message = "The load balancer must admit exactly allowed_cidrs, on the TLS port only."
  }

  assert {
    condition = (
      aws_vpc_security_group_egress_rule.targets.referenced_security_group_id == var.node_security_group_id &&
      aws_vpc_security_group_egress_rule.targets.from_port == 30051 && aws_vpc_security_group_egress_rule.targets.to_port == 30051
    )
    error_message = "The load balancer may only reach the nodes' gateway port."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.nodes.security_group_id == var.node_security_group_id &&
      aws_vpc_security_group_ingress_rule.nodes.referenced_security_group_id == aws_security_group.this.id &&
      aws_vpc_security_group_ingress_rule.nodes.from_port == 30051
    )
    error_message = "Nodes must admit the gateway port from the load balancer's security group only."
  }
}

run "needs_a_certificate_or_dns" {
  command = plan

  module {
    source = "./modules/gateway-nlb"
  }

  variables {
    certificate_arn = null
  }

  expect_failures = [aws_lb_listener.this]
}

locals {
  manage_dns         = var.domain_name != null && var.route53_zone_id != null
  create_certificate = var.certificate_arn == null && local.manage_dns
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "gRPC gateway load balancer ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "listener" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "gRPC over TLS from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.listener_port
  to_port           = var.listener_port
}

resource "aws_vpc_security_group_egress_rule" "targets" {
  security_group_id            = aws_security_group.this.id
  description                  = "Forward to the gateway node port"
  referenced_security_group_id = var.node_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.node_port
  to_port                      = var.node_port
}

resource "aws_vpc_security_group_ingress_rule" "nodes" {
  security_group_id            = var.node_security_group_id
  description                  = "gRPC and health checks from the gateway load balancer"
  referenced_security_group_id = aws_security_group.this.id
  ip_protocol                  = "tcp"
  from_port                    = var.node_port
  to_port                      = var.node_port
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need a bucket whose policy admits the log delivery service; they are on when access_logs_bucket is set, and the gateway writes its own audit log to S3.
  name                             = var.name
  load_balancer_type               = "network"
  internal                         = var.internal
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.this.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]

    content {
      bucket  = access_logs.value
      prefix  = "nlb/${var.name}"
      enabled = true
    }
  }

  tags = var.tags
}

# Instance targets on a NodePort need no in-cluster load balancer controller. With the Service's
# externalTrafficPolicy Local, only the node running the gateway passes the health check.
resource "aws_lb_target_group" "this" {
  name_prefix          = "gw-"
  port                 = var.node_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_autoscaling_attachment" "this" {
  #checkov:skip=CKV2_AWS_15:EKS owns this Auto Scaling group and its health checks; ELB health checks would replace every node not running the gateway pod, since with externalTrafficPolicy Local only that node passes.
  autoscaling_group_name = var.autoscaling_group_name
  lb_target_group_arn    = aws_lb_target_group.this.arn
}

resource "aws_acm_certificate" "this" {
  count = local.create_certificate ? 1 : 0

  domain_name       = var.domain_name
  validation_method = "DNS"

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "validation" {
  count = local.create_certificate ? 1 : 0

  zone_id = var.route53_zone_id
  name    = one(aws_acm_certificate.this[0].domain_validation_options).resource_record_name
  type    = one(aws_acm_certificate.this[0].domain_validation_options).resource_record_type
  records = [one(aws_acm_certificate.this[0].domain_validation_options).resource_record_value]
  ttl     = 300
}

resource "aws_acm_certificate_validation" "this" {
  count = local.create_certificate ? 1 : 0

  certificate_arn         = aws_acm_certificate.this[0].arn
  validation_record_fqdns = [aws_route53_record.validation[0].fqdn]
}

# TLS ends here; ALPN h2 is what gRPC clients require.
resource "aws_lb_listener" "this" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.listener_port
  protocol          = "TLS"
  certificate_arn   = local.create_certificate ? aws_acm_certificate_validation.this[0].certificate_arn : var.certificate_arn
  ssl_policy        = var.ssl_policy
  alpn_policy       = "HTTP2Only"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.certificate_arn != null || local.manage_dns
      error_message = "Set certificate_arn, or domain_name and route53_zone_id so that a certificate can be requested and validated."
    }
  }
}

resource "aws_route53_record" "this" {
  count = local.manage_dns ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}

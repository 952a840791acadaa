output "lb_arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "lb_dns_name" {
  description = "DNS name AWS assigned to the load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_zone_id" {
  description = "Route 53 zone of the load balancer, for alias records."
  value       = aws_lb.this.zone_id
}

output "security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.this.id
}

output "target_group_arn" {
  description = "ARN of the target group (the system nodes' gateway node port)."
  value       = aws_lb_target_group.this.arn
}

output "certificate_arn" {
  description = "ARN of the certificate the listener presents."
  value       = aws_lb_listener.this.certificate_arn
}

output "endpoint" {
  description = "host:port for gRPC clients (TLS). Uses domain_name when set, which must match the certificate."
  value       = "${coalesce(var.domain_name, aws_lb.this.dns_name)}:${var.listener_port}"
}

variable "name" {
  description = "Name of the load balancer (at most 32 characters) and prefix of its security group and target group."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,23}$", var.name))
    error_message = "name must be 1-24 letters, digits or '-' (the target group name adds a suffix within AWS's 32-character limit)."
  }
}

variable "vpc_id" {
  description = "ID of the VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets for the load balancer: private subnets when internal, public subnets when internet-facing."
  type        = list(string)
}

variable "internal" {
  description = "Internal load balancer (reachable only inside the VPC and networks routed to it) instead of internet-facing."
  type        = bool
  default     = true
}

variable "allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to connect to the gateway's TLS port."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must list at least one valid IPv4 CIDR block."
  }
}

variable "listener_port" {
  description = "TLS port clients connect to (1-65535)."
  type        = number
  default     = 443

  validation {
    condition     = var.listener_port >= 1 && var.listener_port <= 65535
    error_message = "listener_port must be from 1 to 65535."
  }
}

variable "node_port" {
  description = "Kubernetes NodePort of the gateway Service (30000-32767); the load balancer forwards decrypted gRPC to it."
  type        = number
  default     = 30051

  validation {
    condition     = var.node_port >= 30000 && var.node_port <= 32767
    error_message = "node_port must be in the Kubernetes NodePort range 30000-32767."
  }
}

variable "node_security_group_id" {
  description = "Security group of the nodes; the module adds a rule admitting the load balancer on node_port."
  type        = string
}

variable "autoscaling_group_name" {
  description = "Auto Scaling group whose instances are registered as targets (the node group that runs the Ray head pod)."
  type        = string
}

variable "certificate_arn" {
  description = "ARN of an ACM certificate for the listener. Null requests one for domain_name, validated through route53_zone_id."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "DNS name clients use for the gateway, e.g. gallery.example.com. With route53_zone_id, an alias record is created."
  type        = string
  default     = null
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone for domain_name (alias record and certificate validation). Null manages no DNS."
  type        = string
  default     = null
}

variable "ssl_policy" {
  description = "TLS negotiation policy of the listener; the default allows only TLS 1.2 and 1.3."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-(TLS13-1-[23]-|TLS-1-2-|FS-1-2-)", var.ssl_policy))
    error_message = "ssl_policy must be an ELB policy that refuses TLS 1.0 and 1.1 (ELBSecurityPolicy-TLS13-1-2-*, -TLS13-1-3-*, -TLS-1-2-*, -FS-1-2-*)."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the load balancer until this is turned off."
  type        = bool
  default     = true
}

variable "access_logs_bucket" {
  description = "Existing bucket for the load balancer's TLS access logs. Null disables access logs."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

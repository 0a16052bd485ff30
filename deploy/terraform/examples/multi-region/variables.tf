variable "regions" {
  description = "The three regions: AWS region, meridian region name (node.region) and a VPC CIDR that overlaps no other."
  type = object({
    a = object({ aws_region = string, meridian_region = string, vpc_cidr = string })
    b = object({ aws_region = string, meridian_region = string, vpc_cidr = string })
    c = object({ aws_region = string, meridian_region = string, vpc_cidr = string })
  })
  default = {
    a = { aws_region = "eu-west-1", meridian_region = "eu-west", vpc_cidr = "10.10.0.0/16" }
    b = { aws_region = "us-east-1", meridian_region = "us-east", vpc_cidr = "10.20.0.0/16" }
    c = { aws_region = "ap-south-1", meridian_region = "ap-south", vpc_cidr = "10.30.0.0/16" }
  }
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "meridian"
}

variable "instance_type" {
  description = "EC2 instance type of every node."
  type        = string
  default     = "t3.small"
}

variable "nodes_per_region" {
  description = "Nodes in each region."
  type        = number
  default     = 3
}

variable "zones_per_region" {
  description = "Availability zones (private subnets) used in each region; nodes spread across them."
  type        = number
  default     = 3
}

variable "package_url" {
  description = "The meridian .deb (make package): s3://bucket/key or https:// URL, reachable from every region."
  type        = string
}

variable "keyring_secret_name" {
  description = "Secrets Manager secret holding the cluster keyring, present (replicated) in all three regions under this name."
  type        = string
  default     = "meridian/cluster-keyring"
}

variable "admin_token_secret_name" {
  description = "Secrets Manager secret holding the admin token, present (replicated) in all three regions under this name."
  type        = string
  default     = "meridian/admin-token"
}

variable "secrets_kms_key_arns" {
  description = "Customer KMS key of the secrets in each region (keys a, b, c); leave empty for the AWS-managed key."
  type        = map(string)
  default     = {}
}

variable "proxy_ingress_cidrs" {
  description = "Who may reach the proxy port (8080) on the nodes, e.g. a load balancer's subnets or [\"0.0.0.0/0\"]."
  type        = list(string)
  default     = []
}

variable "admin_ingress_cidrs" {
  description = "Operator CIDRs (VPN, bastion) allowed to reach the admin API (9901)."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "EC2 key pair name for SSH, present in all three regions; null for none."
  type        = string
  default     = null
}

variable "extra_config_yaml" {
  description = "Upstreams, routes and consumers appended to every node's config."
  type        = string
  default     = ""
}

# Inputs of one meridian region. The AWS region is the provider's; `meridian_region` is the
# name the nodes report (node.region) and that routes and rate limits refer to.

variable "name" {
  description = "Prefix for the names of every resource (e.g. meridian-eu-west)."
  type        = string
  default     = "meridian"
}

variable "meridian_region" {
  description = "meridian region name written to node.region (e.g. eu-west)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.meridian_region))
    error_message = "meridian_region must be a plain name: letters, digits, '.', '_' or '-'."
  }
}

variable "vpc_id" {
  description = "VPC the nodes run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone; nodes and the seed NLB spread across them."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "Give at least one subnet (one per zone is the point)."
  }
}

variable "node_count" {
  description = "Nodes in this region (the auto-scaling group's min, max and desired size)."
  type        = number
  default     = 3
}

variable "health_check_type" {
  description = "How the auto-scaling group judges a node: ELB (the seed NLB's TCP check on the gossip port; a node whose cluster listener stops answering is replaced) or EC2 (instance status only)."
  type        = string
  default     = "ELB"

  validation {
    condition     = contains(["ELB", "EC2"], var.health_check_type)
    error_message = "health_check_type is ELB or EC2."
  }
}

variable "instance_type" {
  description = "EC2 instance type of a node."
  type        = string
  default     = "t3.small"
}

variable "ami_id" {
  description = "AMI to boot; null picks the newest official Debian 12 amd64 image (the .deb is built for Debian 12)."
  type        = string
  default     = null
}

variable "key_name" {
  description = "EC2 key pair for SSH; null for none."
  type        = string
  default     = null
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume, which also holds /var/lib/meridian (RocksDB)."
  type        = number
  default     = 20
}

variable "package_url" {
  description = "Where cloud-init gets the meridian .deb: s3://bucket/key (read through the instance role) or an https:// URL."
  type        = string

  validation {
    condition     = can(regex("^(s3://[^/]+/.+|https?://.+)$", var.package_url))
    error_message = "package_url must be s3://BUCKET/KEY or an http(s) URL."
  }
}

variable "keyring_secret_name" {
  description = "Secrets Manager secret (name or ARN, in this AWS region) whose SecretString is the cluster keyring: base64 keys, one a line, the first primary."
  type        = string
}

variable "admin_token_secret_name" {
  description = "Secrets Manager secret (name or ARN, in this AWS region) whose SecretString is the admin bearer token (16 characters or more)."
  type        = string
}

variable "secrets_kms_key_arn" {
  description = "Customer-managed KMS key the two secrets are encrypted with; null when they use the AWS-managed key."
  type        = string
  default     = null
}

variable "seeds" {
  description = "Gossip addresses (host:port) of other regions' seeds, e.g. their seed_addresses outputs. Retried with backoff until joined."
  type        = list(string)
  default     = []
}

variable "peer_cidrs" {
  description = "CIDRs of the other regions' nodes (their VPCs or subnets), allowed to reach gossip 7946 UDP+TCP."
  type        = list(string)
  default     = []
}

variable "proxy_ingress_cidrs" {
  description = "CIDRs allowed to reach the proxy port, e.g. [\"0.0.0.0/0\"] for the world or a load balancer's subnets."
  type        = list(string)
  default     = []
}

variable "proxy_ingress_security_group_ids" {
  description = "Security groups (of a load balancer, say) allowed to reach the proxy port."
  type        = list(string)
  default     = []
}

variable "admin_ingress_cidrs" {
  description = "Operator CIDRs allowed to reach the admin API (9901). Empty: only from the node itself."
  type        = list(string)
  default     = []
}

variable "proxy_port" {
  description = "listen.proxy port."
  type        = number
  default     = 8080
}

variable "admin_port" {
  description = "listen.admin port."
  type        = number
  default     = 9901
}

variable "gossip_port" {
  description = "cluster.bind port, UDP (gossip) and TCP (state sync)."
  type        = number
  default     = 7946
}

variable "seed_ip_host_number" {
  description = "The seed NLB takes this host number in each subnet (cidrhost) as its fixed private address."
  type        = number
  default     = 10
}

variable "workers" {
  description = "node.workers: proxy worker threads, 0 = one per core."
  type        = number
  default     = 0
}

variable "log_level" {
  description = "log.level of the nodes."
  type        = string
  default     = "info"
}

variable "extra_config_yaml" {
  description = "YAML appended to every node's config: upstreams, routes, consumers, jwt, limits (top-level sections not written by the module)."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# One meridian region on AWS: an auto-scaling group of nodes across the region's zones, a
# fixed-address internal NLB on the gossip port as the region's stable seed, security groups,
# a minimal instance role, and cloud-init that installs the .deb and writes the node config.
#
# Why an auto-scaling group, not aws_instance: a failed node is replaced without an operator,
# a new package_url rolls through the region as an instance refresh (one node at a time), and
# zones are balanced by AWS. Node ids are instance ids, so a replacement joins as a new member
# and the old one is declared dead by the cluster. What an ASG takes away, fixed node addresses,
# is what seeds need; the seed NLB gives that back (see below).
#
# Why an NLB as the seed, not an Elastic IP or a secondary ENI: a seed only has to reach *some*
# live member ("any reachable members"), which is exactly what a load balancer does. The NLB
# takes a fixed private address in every subnet (cidrhost(subnet, seed_ip_host_number)), forwards
# UDP and TCP on the gossip port (TCP_UDP listener, client IP preserved) to healthy nodes, and
# survives the loss of a zone or any one node. An address that one instance must claim at boot
# needs extra IAM (ec2:AssignPrivateIpAddresses), is tied to one zone and is gone while that
# instance is. Once joined, members talk to each other's advertised private addresses directly.

data "aws_partition" "current" {}

data "aws_subnet" "node" {
  count = length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

# The newest official Debian 12 image (owner: Debian), or the AMI given in ami_id.
data "aws_ami" "node" {
  most_recent = true
  owners      = var.ami_id == null ? ["136693071363"] : null

  filter {
    name   = var.ami_id == null ? "name" : "image-id"
    values = [var.ami_id == null ? "debian-12-amd64-*" : var.ami_id]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

# Only metadata (the ARN) is read here: secret values never enter the Terraform state.
data "aws_secretsmanager_secret" "keyring" {
  arn  = startswith(var.keyring_secret_name, "arn:") ? var.keyring_secret_name : null
  name = startswith(var.keyring_secret_name, "arn:") ? null : var.keyring_secret_name
}

data "aws_secretsmanager_secret" "admin_token" {
  arn  = startswith(var.admin_token_secret_name, "arn:") ? var.admin_token_secret_name : null
  name = startswith(var.admin_token_secret_name, "arn:") ? null : var.admin_token_secret_name
}

locals {
  tags = merge({ "meridian:region" = var.meridian_region, ManagedBy = "terraform" }, var.tags)

  # The seed NLB's fixed address in each subnet, in subnet_ids order.
  seed_ips       = [for s in data.aws_subnet.node : cidrhost(s.cidr_block, var.seed_ip_host_number)]
  seed_addresses = [for ip in local.seed_ips : "${ip}:${var.gossip_port}"]

  # s3://bucket/key -> the object's ARN, which the instance role may read; null for https.
  package_s3         = try(regex("^s3://([^/]+)/(.+)$", var.package_url), null)
  package_object_arn = local.package_s3 == null ? null : "arn:${data.aws_partition.current.partition}:s3:::${local.package_s3[0]}/${local.package_s3[1]}"

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    package_url            = var.package_url
    meridian_region        = var.meridian_region
    keyring_secret_arn     = data.aws_secretsmanager_secret.keyring.arn
    admin_token_secret_arn = data.aws_secretsmanager_secret.admin_token.arn
    seeds                  = var.seeds
    proxy_port             = var.proxy_port
    admin_port             = var.admin_port
    gossip_port            = var.gossip_port
    workers                = var.workers
    log_level              = var.log_level
    extra_config_b64       = base64encode(var.extra_config_yaml)
  })
}

# ---------------------------------------------------------------------------------------------
# IAM: the nodes may read the two secrets (and decrypt them with their KMS key, if it is a
# customer key) and the package object when it is in S3. Nothing else.

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "node" {
  statement {
    sid     = "ReadClusterSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      data.aws_secretsmanager_secret.keyring.arn,
      data.aws_secretsmanager_secret.admin_token.arn,
    ]
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = "DecryptClusterSecrets"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringLike"
        variable = "kms:ViaService"
        values   = ["secretsmanager.*.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.package_object_arn == null ? [] : [local.package_object_arn]
    content {
      sid       = "ReadPackage"
      actions   = ["s3:GetObject"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.name}-node-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "node" {
  name   = "meridian-node"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "${var.name}-node-"
  role        = aws_iam_role.node.name
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------------
# Security group. Gossip (UDP and TCP on one port) only from: members of this region (the group
# itself), the other regions' node CIDRs, and this region's seed NLB addresses (its TCP health
# checks come from them). Proxy from the given CIDRs / load balancer groups; admin from the
# operator CIDRs. Rules use count, not for_each, so addresses unknown until apply are fine.

resource "aws_security_group" "node" {
  name_prefix = "${var.name}-node-"
  description = "meridian nodes of region ${var.meridian_region}"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-node" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "gossip_from_members" {
  count                        = 2
  security_group_id            = aws_security_group.node.id
  description                  = "gossip ${count.index == 0 ? "udp" : "tcp"} between members of ${var.meridian_region}"
  ip_protocol                  = count.index == 0 ? "udp" : "tcp"
  from_port                    = var.gossip_port
  to_port                      = var.gossip_port
  referenced_security_group_id = aws_security_group.node.id
}

resource "aws_vpc_security_group_ingress_rule" "gossip_from_peers" {
  count             = 2 * length(var.peer_cidrs)
  security_group_id = aws_security_group.node.id
  description       = "gossip ${count.index % 2 == 0 ? "udp" : "tcp"} from another region's nodes"
  ip_protocol       = count.index % 2 == 0 ? "udp" : "tcp"
  from_port         = var.gossip_port
  to_port           = var.gossip_port
  cidr_ipv4         = strcontains(var.peer_cidrs[floor(count.index / 2)], ":") ? null : var.peer_cidrs[floor(count.index / 2)]
  cidr_ipv6         = strcontains(var.peer_cidrs[floor(count.index / 2)], ":") ? var.peer_cidrs[floor(count.index / 2)] : null
}

resource "aws_vpc_security_group_ingress_rule" "gossip_health_from_seed" {
  count             = length(var.subnet_ids)
  security_group_id = aws_security_group.node.id
  description       = "seed NLB health checks (tcp) on the gossip port"
  ip_protocol       = "tcp"
  from_port         = var.gossip_port
  to_port           = var.gossip_port
  cidr_ipv4         = "${local.seed_ips[count.index]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "proxy_from_cidrs" {
  count             = length(var.proxy_ingress_cidrs)
  security_group_id = aws_security_group.node.id
  description       = "proxy"
  ip_protocol       = "tcp"
  from_port         = var.proxy_port
  to_port           = var.proxy_port
  cidr_ipv4         = strcontains(var.proxy_ingress_cidrs[count.index], ":") ? null : var.proxy_ingress_cidrs[count.index]
  cidr_ipv6         = strcontains(var.proxy_ingress_cidrs[count.index], ":") ? var.proxy_ingress_cidrs[count.index] : null
}

resource "aws_vpc_security_group_ingress_rule" "proxy_from_security_groups" {
  count                        = length(var.proxy_ingress_security_group_ids)
  security_group_id            = aws_security_group.node.id
  description                  = "proxy from a load balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.proxy_port
  to_port                      = var.proxy_port
  referenced_security_group_id = var.proxy_ingress_security_group_ids[count.index]
}

resource "aws_vpc_security_group_ingress_rule" "admin_from_operators" {
  count             = length(var.admin_ingress_cidrs)
  security_group_id = aws_security_group.node.id
  description       = "admin API from operators"
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
  cidr_ipv4         = strcontains(var.admin_ingress_cidrs[count.index], ":") ? null : var.admin_ingress_cidrs[count.index]
  cidr_ipv6         = strcontains(var.admin_ingress_cidrs[count.index], ":") ? var.admin_ingress_cidrs[count.index] : null
}

# Out: gossip to other regions, upstreams (anywhere), and at boot the Debian mirror, the package
# and Secrets Manager. Narrow this in a VPC whose upstreams and endpoints are known.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.node.id
  description       = "upstreams, gossip to peers, package and secrets at boot"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# ---------------------------------------------------------------------------------------------
# The region's stable seed: an internal NLB with a fixed private address per subnet.

resource "aws_lb" "seed" {
  internal                         = true
  load_balancer_type               = "network"
  enable_cross_zone_load_balancing = true
  tags                             = merge(local.tags, { Name = "${var.name}-seed" })

  dynamic "subnet_mapping" {
    for_each = range(length(var.subnet_ids))
    content {
      subnet_id            = var.subnet_ids[subnet_mapping.value]
      private_ipv4_address = local.seed_ips[subnet_mapping.value]
    }
  }
}

resource "aws_lb_target_group" "gossip" {
  port                 = var.gossip_port
  protocol             = "TCP_UDP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  preserve_client_ip   = "true"
  deregistration_delay = 30
  tags                 = local.tags

  # The node's TCP state-sync listener on the gossip port answers once it runs with a cluster
  # section. The ASG uses this check too, so a node that stops answering is replaced.
  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "gossip" {
  load_balancer_arn = aws_lb.seed.arn
  port              = var.gossip_port
  protocol          = "TCP_UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gossip.arn
  }
}

# ---------------------------------------------------------------------------------------------
# Nodes.

resource "aws_launch_template" "node" {
  name_prefix            = "${var.name}-"
  description            = "meridian node, region ${var.meridian_region}"
  image_id               = data.aws_ami.node.id
  instance_type          = var.instance_type
  key_name               = var.key_name
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.node.id]
  user_data              = base64encode(local.user_data)
  tags                   = local.tags

  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }

  # IMDSv2 only, not reachable from containers on the host.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = data.aws_ami.node.root_device_name
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-node" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-node" })
  }
}

resource "aws_autoscaling_group" "nodes" {
  name_prefix               = "${var.name}-"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.node_count
  max_size                  = var.node_count
  desired_capacity          = var.node_count
  target_group_arns         = [aws_lb_target_group.gossip.arn]
  health_check_type         = var.health_check_type
  health_check_grace_period = 300
  wait_for_capacity_timeout = "15m"

  launch_template {
    id      = aws_launch_template.node.id
    version = aws_launch_template.node.latest_version
  }

  # A new launch template version (new package_url, AMI, seeds, config) replaces the nodes one
  # at a time: the rolling upgrade of docs/operations.md.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 66
      instance_warmup        = 180
    }
  }

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  # The NLB claims its fixed addresses before any node can be handed one of them.
  depends_on = [aws_lb_listener.gossip]
}

# The nodes as of this apply (an ASG's members change without Terraform; see the outputs).
data "aws_instances" "nodes" {
  instance_tags = {
    "aws:autoscaling:groupName" = aws_autoscaling_group.nodes.name
  }
  instance_state_names = ["pending", "running"]
  depends_on           = [aws_autoscaling_group.nodes]
}

# Three meridian regions, each an auto-scaling group behind its own seed NLB, in three peered
# VPCs. Each region's seeds are the other two regions' seed addresses: a new node joins through
# whichever other region answers first, then learns its own region's members by gossip. Nothing
# here waits for the peering to be up: nodes retry their seeds with backoff until they join.

locals {
  tags = { Project = var.name }
}

# --- networks (one VPC per region) and the peering mesh between them ------------------------

module "network_a" {
  source     = "./network"
  providers  = { aws = aws.a }
  name       = "${var.name}-${var.regions.a.meridian_region}"
  cidr       = var.regions.a.vpc_cidr
  zone_count = var.zones_per_region
  tags       = local.tags
}

module "network_b" {
  source     = "./network"
  providers  = { aws = aws.b }
  name       = "${var.name}-${var.regions.b.meridian_region}"
  cidr       = var.regions.b.vpc_cidr
  zone_count = var.zones_per_region
  tags       = local.tags
}

module "network_c" {
  source     = "./network"
  providers  = { aws = aws.c }
  name       = "${var.name}-${var.regions.c.meridian_region}"
  cidr       = var.regions.c.vpc_cidr
  zone_count = var.zones_per_region
  tags       = local.tags
}

module "peering_a_b" {
  source    = "./peering"
  providers = { aws.requester = aws.a, aws.accepter = aws.b }
  name      = "${var.name}-a-b"
  requester = { vpc_id = module.network_a.vpc_id, cidr = module.network_a.cidr, route_table_id = module.network_a.private_route_table_id }
  accepter  = { vpc_id = module.network_b.vpc_id, cidr = module.network_b.cidr, route_table_id = module.network_b.private_route_table_id, aws_region = var.regions.b.aws_region }
  tags      = local.tags
}

module "peering_a_c" {
  source    = "./peering"
  providers = { aws.requester = aws.a, aws.accepter = aws.c }
  name      = "${var.name}-a-c"
  requester = { vpc_id = module.network_a.vpc_id, cidr = module.network_a.cidr, route_table_id = module.network_a.private_route_table_id }
  accepter  = { vpc_id = module.network_c.vpc_id, cidr = module.network_c.cidr, route_table_id = module.network_c.private_route_table_id, aws_region = var.regions.c.aws_region }
  tags      = local.tags
}

module "peering_b_c" {
  source    = "./peering"
  providers = { aws.requester = aws.b, aws.accepter = aws.c }
  name      = "${var.name}-b-c"
  requester = { vpc_id = module.network_b.vpc_id, cidr = module.network_b.cidr, route_table_id = module.network_b.private_route_table_id }
  accepter  = { vpc_id = module.network_c.vpc_id, cidr = module.network_c.cidr, route_table_id = module.network_c.private_route_table_id, aws_region = var.regions.c.aws_region }
  tags      = local.tags
}

# --- meridian, one module per region ---------------------------------------------------------

module "region_a" {
  source    = "../../modules/meridian-region"
  providers = { aws = aws.a }

  name                    = "${var.name}-${var.regions.a.meridian_region}"
  meridian_region         = var.regions.a.meridian_region
  vpc_id                  = module.network_a.vpc_id
  subnet_ids              = module.network_a.private_subnet_ids
  node_count              = var.nodes_per_region
  instance_type           = var.instance_type
  key_name                = var.key_name
  package_url             = var.package_url
  keyring_secret_name     = var.keyring_secret_name
  admin_token_secret_name = var.admin_token_secret_name
  secrets_kms_key_arn     = lookup(var.secrets_kms_key_arns, "a", null)
  seeds                   = concat(module.region_b.seed_addresses, module.region_c.seed_addresses)
  peer_cidrs              = [var.regions.b.vpc_cidr, var.regions.c.vpc_cidr]
  proxy_ingress_cidrs     = var.proxy_ingress_cidrs
  admin_ingress_cidrs     = var.admin_ingress_cidrs
  extra_config_yaml       = var.extra_config_yaml
  tags                    = local.tags
}

module "region_b" {
  source    = "../../modules/meridian-region"
  providers = { aws = aws.b }

  name                    = "${var.name}-${var.regions.b.meridian_region}"
  meridian_region         = var.regions.b.meridian_region
  vpc_id                  = module.network_b.vpc_id
  subnet_ids              = module.network_b.private_subnet_ids
  node_count              = var.nodes_per_region
  instance_type           = var.instance_type
  key_name                = var.key_name
  package_url             = var.package_url
  keyring_secret_name     = var.keyring_secret_name
  admin_token_secret_name = var.admin_token_secret_name
  secrets_kms_key_arn     = lookup(var.secrets_kms_key_arns, "b", null)
  seeds                   = concat(module.region_a.seed_addresses, module.region_c.seed_addresses)
  peer_cidrs              = [var.regions.a.vpc_cidr, var.regions.c.vpc_cidr]
  proxy_ingress_cidrs     = var.proxy_ingress_cidrs
  admin_ingress_cidrs     = var.admin_ingress_cidrs
  extra_config_yaml       = var.extra_config_yaml
  tags                    = local.tags
}

module "region_c" {
  source    = "../../modules/meridian-region"
  providers = { aws = aws.c }

  name                    = "${var.name}-${var.regions.c.meridian_region}"
  meridian_region         = var.regions.c.meridian_region
  vpc_id                  = module.network_c.vpc_id
  subnet_ids              = module.network_c.private_subnet_ids
  node_count              = var.nodes_per_region
  instance_type           = var.instance_type
  key_name                = var.key_name
  package_url             = var.package_url
  keyring_secret_name     = var.keyring_secret_name
  admin_token_secret_name = var.admin_token_secret_name
  secrets_kms_key_arn     = lookup(var.secrets_kms_key_arns, "c", null)
  seeds                   = concat(module.region_a.seed_addresses, module.region_b.seed_addresses)
  peer_cidrs              = [var.regions.a.vpc_cidr, var.regions.b.vpc_cidr]
  proxy_ingress_cidrs     = var.proxy_ingress_cidrs
  admin_ingress_cidrs     = var.admin_ingress_cidrs
  extra_config_yaml       = var.extra_config_yaml
  tags                    = local.tags
}

output "regions" {
  description = "Per region: the auto-scaling group, the stable seed addresses and the nodes' admin URLs as of this apply."
  value = {
    (var.regions.a.meridian_region) = {
      aws_region      = var.regions.a.aws_region
      asg_name        = module.region_a.asg_name
      seed_addresses  = module.region_a.seed_addresses
      admin_endpoints = module.region_a.admin_endpoints
    }
    (var.regions.b.meridian_region) = {
      aws_region      = var.regions.b.aws_region
      asg_name        = module.region_b.asg_name
      seed_addresses  = module.region_b.seed_addresses
      admin_endpoints = module.region_b.admin_endpoints
    }
    (var.regions.c.meridian_region) = {
      aws_region      = var.regions.c.aws_region
      asg_name        = module.region_c.asg_name
      seed_addresses  = module.region_c.seed_addresses
      admin_endpoints = module.region_c.admin_endpoints
    }
  }
}

output "gossip_endpoints" {
  description = "Every node's advertised gossip address, all regions, as of this apply."
  value = concat(
    module.region_a.gossip_endpoints,
    module.region_b.gossip_endpoints,
    module.region_c.gossip_endpoints,
  )
}

output "cluster_health_command" {
  description = "Asks one node of region a for the cluster's health (run it from an admin_ingress_cidrs host)."
  value       = "curl -s -H \"Authorization: Bearer $(aws secretsmanager get-secret-value --region ${var.regions.a.aws_region} --secret-id ${var.admin_token_secret_name} --query SecretString --output text)\" ${try(module.region_a.admin_endpoints[0], "http://NODE:9901")}/cluster/health"
}

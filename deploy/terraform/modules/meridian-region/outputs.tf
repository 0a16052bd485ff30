output "asg_name" {
  description = "The region's auto-scaling group; `aws autoscaling describe-auto-scaling-groups` lists its current nodes."
  value       = aws_autoscaling_group.nodes.name
}

output "seed_addresses" {
  description = "Stable gossip addresses (host:port) of this region: the seed NLB's fixed private address in each subnet. Give them to the other regions as seeds."
  value       = local.seed_addresses
}

output "seed_dns_name" {
  description = "DNS name of the seed NLB (resolves to seed_addresses)."
  value       = aws_lb.seed.dns_name
}

output "node_private_ips" {
  description = "Private addresses of the nodes as of the last apply."
  value       = data.aws_instances.nodes.private_ips
}

output "gossip_endpoints" {
  description = "Each node's advertised gossip address (cluster.advertise) as of the last apply."
  value       = [for ip in data.aws_instances.nodes.private_ips : "${ip}:${var.gossip_port}"]
}

output "admin_endpoints" {
  description = "Each node's admin API base URL as of the last apply (reachable from admin_ingress_cidrs)."
  value       = [for ip in data.aws_instances.nodes.private_ips : "http://${ip}:${var.admin_port}"]
}

output "security_group_id" {
  description = "The nodes' security group (allow it as a source on upstreams)."
  value       = aws_security_group.node.id
}

output "node_role_arn" {
  description = "The nodes' IAM role."
  value       = aws_iam_role.node.arn
}

output "launch_template_id" {
  description = "Launch template of the nodes; every change makes a new version and an instance refresh."
  value       = aws_launch_template.node.id
}

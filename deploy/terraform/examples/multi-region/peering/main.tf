# Cross-region VPC peering between two of the example's regions, with routes both ways, so
# nodes reach each other's private addresses and seed NLBs on the gossip port.

terraform {
  required_providers {
    aws = {
      source                = "hashicorp/aws"
      configuration_aliases = [aws.requester, aws.accepter]
    }
  }
}

variable "name" {
  type = string
}

variable "requester" {
  description = "The requesting side: vpc_id, cidr, route_table_id."
  type        = object({ vpc_id = string, cidr = string, route_table_id = string })
}

variable "accepter" {
  description = "The accepting side: vpc_id, cidr, route_table_id, aws_region."
  type        = object({ vpc_id = string, cidr = string, route_table_id = string, aws_region = string })
}

variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_vpc_peering_connection" "this" {
  provider    = aws.requester
  vpc_id      = var.requester.vpc_id
  peer_vpc_id = var.accepter.vpc_id
  peer_region = var.accepter.aws_region
  auto_accept = false
  tags        = merge(var.tags, { Name = var.name })
}

resource "aws_vpc_peering_connection_accepter" "this" {
  provider                  = aws.accepter
  vpc_peering_connection_id = aws_vpc_peering_connection.this.id
  auto_accept               = true
  tags                      = merge(var.tags, { Name = var.name })
}

resource "aws_route" "requester_to_accepter" {
  provider                  = aws.requester
  route_table_id            = var.requester.route_table_id
  destination_cidr_block    = var.accepter.cidr
  vpc_peering_connection_id = aws_vpc_peering_connection.this.id
  depends_on                = [aws_vpc_peering_connection_accepter.this]
}

resource "aws_route" "accepter_to_requester" {
  provider                  = aws.accepter
  route_table_id            = var.accepter.route_table_id
  destination_cidr_block    = var.requester.cidr
  vpc_peering_connection_id = aws_vpc_peering_connection_accepter.this.id
}

output "id" {
  value = aws_vpc_peering_connection.this.id
}

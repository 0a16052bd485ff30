terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_vpc_security_group_*_rule and TCP_UDP target groups with static NLB addresses.
      version = ">= 5.30, < 7.0"
    }
  }
}

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30, < 7.0"
    }
  }
}

# One provider per region: Terraform cannot loop over providers, so the three regions are
# spelled out as a, b and c (var.regions says which AWS and meridian region each one is).
provider "aws" {
  alias  = "a"
  region = var.regions.a.aws_region
}

provider "aws" {
  alias  = "b"
  region = var.regions.b.aws_region
}

provider "aws" {
  alias  = "c"
  region = var.regions.c.aws_region
}

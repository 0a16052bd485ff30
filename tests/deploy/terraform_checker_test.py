#!/usr/bin/env python3
"""The Terraform checker rejects tests/deploy/fixtures/broken and names every problem in it.

Usage: terraform_checker_test.py REPO_DIR
"""
import os
import subprocess
import sys

repo = sys.argv[1]
fixture = os.path.join(repo, "tests", "deploy", "fixtures", "broken")
proc = subprocess.run([sys.executable, os.path.join(repo, "scripts", "check_terraform.py"), fixture],
                      capture_output=True, text=True, cwd=repo, timeout=120)
print(proc.stdout, end="")
print(proc.stderr, end="", file=sys.stderr)

expected = {
    "undeclared variable": "main.tf:3: aws_launch_template.node: var.instance_type is used but not declared",
    "missing module source": "main.tf:7: module 'seed': source './modules/does-not-exist' does not exist",
    "argument the module does not declare": "module 'region' passes 'colour', which ./child does not declare",
    "required variable not set": "module 'region' does not set 'region', which ./child requires",
    "dangling output (resource)": "outputs.tf:6: output 'asg_name' refers to something undefined: "
                                  "aws_autoscaling_group.nodes",
    "dangling output (module output)": "outputs.tf:10: output 'seed' refers to something undefined: "
                                       "module.region.seed_address",
    "unparsable file": "unparsable/main.tf:1: does not parse: ",
}
failures = []
if proc.returncode != 1:
    failures.append(f"checker exit code {proc.returncode}, want 1")
for what, text in expected.items():
    if text not in proc.stdout:
        failures.append(f"{what} not reported (want a line containing: {text})")
problem_lines = [l for l in proc.stdout.splitlines() if l.strip()]
if len(problem_lines) != len(expected):
    failures.append(f"{len(problem_lines)} problems reported, want exactly {len(expected)}")
for f in failures:
    print("FAIL:", f, file=sys.stderr)
sys.exit(1 if failures else 0)

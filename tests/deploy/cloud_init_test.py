#!/usr/bin/env python3
"""The module's cloud-init writes a node config that `meridian validate` accepts.

Renders modules/meridian-region/cloud-init.yaml.tftpl the way templatefile() does for the
interpolations it uses (a plain name, and join() for the seed list), checks that it uses only
names main.tf passes, checks the shell scripts it installs with `bash -n`, then runs the script's
config-writing lines with sample instance metadata and validates the result with the real binary.

Usage: cloud_init_test.py REPO_DIR MERIDIAN_BINARY
"""
import base64
import os
import re
import subprocess
import sys
import tempfile

repo, meridian = sys.argv[1], sys.argv[2]
module = os.path.join(repo, "deploy", "terraform", "modules", "meridian-region")
template = open(os.path.join(module, "cloud-init.yaml.tftpl"), encoding="utf-8").read()
main_tf = open(os.path.join(module, "main.tf"), encoding="utf-8").read()
failures = []

# Names main.tf passes to templatefile().
call = re.search(r'templatefile\("\$\{path\.module\}/cloud-init\.yaml\.tftpl",\s*\{(.*?)\n\s*\}\)',
                 main_tf, re.S)
passed = set(re.findall(r"^\s*(\w+)\s*=", call.group(1), re.M)) if call else set()
if not passed:
    failures.append("main.tf: no templatefile() call for cloud-init.yaml.tftpl found")

extra = "upstreams:\n  - name: users\n    targets: [10.10.20.5:9001]\nroutes:\n  - {name: users, upstream: users}\n"
values = {
    "package_url": "s3://artifacts/meridian_0.1.0_amd64.deb",
    "meridian_region": "eu-west",
    "keyring_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:meridian/keys-AbCdEf",
    "admin_token_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:meridian/token-AbCdEf",
    "seeds": ["10.20.10.10:7946", "10.20.11.10:7946", "10.30.10.10:7946"],
    "proxy_port": 8080, "admin_port": 9901, "gossip_port": 7946, "workers": 0, "log_level": "info",
    "extra_config_b64": base64.b64encode(extra.encode()).decode(),
}


def render(match):
    expr = match.group(1).strip()
    m = re.fullmatch(r'join\("([^"]*)",\s*(\w+)\)', expr)
    name = m.group(2) if m else expr
    if name not in passed:
        failures.append(f"template uses '{name}', which main.tf does not pass to templatefile()")
    if name not in values:
        failures.append(f"template uses '{name}', which this test does not know")
        return ""
    return m.group(1).join(values[name]) if m else str(values[name])


if "%{" in template:
    failures.append("template uses %{ } directives, which this test does not render")
rendered = re.sub(r"(?<!\$)\$\{([^}]*)\}", render, template).replace("$${", "${")
for name in passed - {n for n in values}:
    failures.append(f"main.tf passes '{name}', which this test does not know")

if not rendered.startswith("#cloud-config\n"):
    failures.append("rendered user data does not start with #cloud-config")


def script(path):
    """Returns the de-indented `content: |` block of the write_files entry for path."""
    lines = rendered.splitlines()
    start = lines.index(f"  - path: {path}")
    i = start + 1
    while not lines[i].strip().startswith("content: |"):
        i += 1
    body = []
    for line in lines[i + 1:]:
        if line.strip() and not line.startswith("      "):
            break
        body.append(line[6:])
    return "\n".join(body).rstrip() + "\n"


with tempfile.TemporaryDirectory() as tmp:
    scripts = {}
    for path in ("/usr/local/sbin/meridian-bootstrap", "/usr/local/sbin/meridian-fetch-secrets"):
        try:
            scripts[path] = script(path)
        except ValueError:
            failures.append(f"write_files has no {path}")
            continue
        check = subprocess.run(["bash", "-n"], input=scripts[path], text=True, capture_output=True)
        if check.returncode != 0:
            failures.append(f"{path}: bash -n: {check.stderr.strip()}")

    bootstrap = scripts.get("/usr/local/sbin/meridian-bootstrap", "")
    m = re.search(r"^cat >/etc/meridian/meridian\.yaml\.new <<CONFIG\n.*?^CONFIG\n.*?base64 -d >>/etc/meridian/meridian\.yaml\.new\n",
                  bootstrap, re.S | re.M)
    if not m:
        failures.append("bootstrap script: config heredoc and extra-config line not found")
    else:
        config = os.path.join(tmp, "meridian.yaml")
        snippet = ("instance_id=i-0123456789abcdef0 private_ip=10.10.11.23 zone=eu-west-1b\n"
                   + m.group(0).replace("/etc/meridian/meridian.yaml.new", config))
        run = subprocess.run(["bash", "-euo", "pipefail"], input=snippet, text=True, capture_output=True)
        if run.returncode != 0:
            failures.append(f"config lines failed: {run.stderr.strip()}")
        else:
            text = open(config, encoding="utf-8").read()
            print(text)
            for want in ("id: i-0123456789abcdef0", "region: eu-west", "zone: eu-west-1b",
                         "advertise: 10.10.11.23:7946",
                         "seeds: [10.20.10.10:7946, 10.20.11.10:7946, 10.30.10.10:7946]",
                         "keyring_file: /etc/meridian/cluster.keys",
                         "token_file: /etc/meridian/admin.token", "name: users"):
                if want not in text:
                    failures.append(f"written config lacks '{want}'")
            v = subprocess.run([meridian, "validate", config], capture_output=True, text=True)
            if v.returncode != 0 or v.stdout.strip() != "ok":
                failures.append(f"meridian validate: exit {v.returncode}: {v.stdout}{v.stderr}")

for f in failures:
    print("FAIL:", f, file=sys.stderr)
sys.exit(1 if failures else 0)

#!/usr/bin/env python3
"""The Debian package holds the binary, a hardened systemd unit and a config that validates.

Builds the package with cpack into a temporary directory (the build tree's own package is left
alone), unpacks it with dpkg-deb and runs the unpacked /usr/bin/meridian on the unpacked
/etc/meridian/meridian.yaml, with and without its commented cluster and traffic examples.

Usage: package_test.py BUILD_DIR VERSION MERIDIAN_BINARY
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

build_dir, version, built = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []
if not os.access(built, os.X_OK):
    sys.exit(f"FAIL: {built} is not built; build the meridian target first")


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


with tempfile.TemporaryDirectory(prefix="meridian-package-test-") as tmp:
    out = os.path.join(tmp, "out")
    cp = run("cpack", "--config", os.path.join(build_dir, "CPackConfig.cmake"), "-B", out)
    if cp.returncode != 0:
        print(cp.stdout, cp.stderr, file=sys.stderr)
        sys.exit("FAIL: cpack failed")
    debs = glob.glob(os.path.join(out, "*.deb"))
    want_name = f"meridian_{version}_amd64.deb"
    if [os.path.basename(d) for d in debs] != [want_name]:
        sys.exit(f"FAIL: cpack made {debs}, want one {want_name}")
    deb = debs[0]

    root = os.path.join(tmp, "root")
    control = os.path.join(tmp, "control")
    for cmd in (("dpkg-deb", "-x", deb, root), ("dpkg-deb", "-e", deb, control)):
        r = run(*cmd)
        if r.returncode != 0:
            sys.exit(f"FAIL: {' '.join(cmd)}: {r.stderr}")

    binary = os.path.join(root, "usr", "bin", "meridian")
    config = os.path.join(root, "etc", "meridian", "meridian.yaml")
    unit = os.path.join(root, "lib", "systemd", "system", "meridian.service")
    for path in (binary, config, unit):
        if not os.path.isfile(path):
            failures.append(f"package lacks /{os.path.relpath(path, root)}")
    if failures:
        sys.exit("FAIL: " + "; ".join(failures))

    v = run(binary, "validate", config)
    print(f"unpacked meridian validate /etc/meridian/meridian.yaml: {v.stdout.strip()}")
    if v.returncode != 0 or v.stdout.strip() != "ok":
        failures.append(f"packaged config does not validate: {v.stdout}{v.stderr}")

    text = open(config, encoding="utf-8").read()
    for want in ("data_dir: /var/lib/meridian", "token_file: /var/lib/meridian/admin.token"):
        if want not in text:
            failures.append(f"packaged config lacks '{want}'")
    if re.search(r"^cluster:", text, re.M):
        failures.append("packaged config has an active cluster section; it must be commented out")
    # The commented examples are meant to be uncommented: they must validate too.
    uncommented = re.sub(r"^# ((?:cluster|upstreams|routes):.*|\s+\S.*)$", r"\1", text, flags=re.M)
    if uncommented.count("\ncluster:") != 1:
        failures.append("packaged config has no commented cluster example")
    example = os.path.join(tmp, "example.yaml")
    with open(example, "w", encoding="utf-8") as fh:
        fh.write(uncommented)
    v = run(binary, "validate", example)
    if v.returncode != 0 or v.stdout.strip() != "ok":
        failures.append(f"packaged config with its examples uncommented does not validate: {v.stdout}{v.stderr}")

    unit_text = open(unit, encoding="utf-8").read()
    directives = set(l.strip() for l in unit_text.splitlines())
    for want in ("ExecStart=/usr/bin/meridian run --config /etc/meridian/meridian.yaml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "LimitNOFILE=65536",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=meridian",
                 "KillSignal=SIGTERM", "TimeoutStopSec=30", "WantedBy=multi-user.target"):
        if want not in directives:
            failures.append(f"meridian.service lacks '{want}'")
    if "User=meridian" not in directives and "DynamicUser=yes" not in directives:
        failures.append("meridian.service runs as root (no User=meridian or DynamicUser=yes)")

    conffiles = open(os.path.join(control, "conffiles"), encoding="utf-8").read().split()
    if "/etc/meridian/meridian.yaml" not in conffiles:
        failures.append("/etc/meridian/meridian.yaml is not a conffile")
    fields = open(os.path.join(control, "control"), encoding="utf-8").read()
    depends = re.search(r"^Depends: (.*)$", fields, re.M)
    if not depends or "libc6" not in depends.group(1) or "adduser" not in depends.group(1):
        failures.append(f"Depends is not computed by dpkg-shlibdeps plus adduser: {depends and depends.group(1)}")
    for script in ("postinst", "prerm", "postrm"):
        path = os.path.join(control, script)
        if not os.access(path, os.X_OK):
            failures.append(f"maintainer script {script} missing or not executable")
        else:
            r = run("sh", "-n", path)
            if r.returncode != 0:
                failures.append(f"{script}: sh -n: {r.stderr}")

for f in failures:
    print("FAIL:", f, file=sys.stderr)
sys.exit(1 if failures else 0)

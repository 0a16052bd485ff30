#!/usr/bin/env python3
"""Static checks for meridian's Terraform, without providers or network.

Usage: scripts/check_terraform.py [DIR...]      (default: deploy/terraform)

Every directory below DIR that holds .tf files is a module. Each file is parsed by HashiCorp's
HCL parser (npm package @cdktf/hcl2json, installed by scripts/setup.sh; scripts/hcl2json.js is
the bridge), then, per module:

  - every file parses;
  - every var.X, local.X, data.T.N, module.M and resource T.N used is declared in the module
    (outputs included: an output must refer to something that is defined);
  - every local module `source` exists, the call passes only variables the module declares and
    every variable it requires, and module.M.OUT names an output of M;
  - every file read with file()/templatefile() under path.module exists.

Prints every problem as `FILE:LINE: message` (LINE is where the name first appears) and exits 1,
or prints `ok: ...` and exits 0. Exit 2: the parser is not installed.
"""
import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PREFIX = "/opt/meridian-tools/hcl2json"  # scripts/setup.sh installs here
BRIDGE = os.path.join(REPO, "scripts", "hcl2json.js")

# References that name no declaration of the module.
BUILTIN_ROOTS = {"each", "count", "path", "self", "terraform"}
# Arguments of a module block that are not the module's variables.
MODULE_META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}


def find_modules(roots):
    """Returns {module_dir: [tf files]} for every directory under roots holding .tf files."""
    modules = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".terraform")
            files = sorted(os.path.join(dirpath, f) for f in filenames if f.endswith(".tf"))
            if files:
                modules[os.path.normpath(dirpath)] = files
    return modules


def parse_all(files):
    """Returns {file: {"body", "refs"} | {"error"}} from one run of the node bridge."""
    prefix = os.environ.get("MERIDIAN_HCL2JSON_PREFIX", DEFAULT_PREFIX)
    node_modules = os.path.join(prefix, "node_modules")
    if not shutil.which("node") or not os.path.isdir(os.path.join(node_modules, "@cdktf", "hcl2json")):
        sys.stderr.write(
            f"check_terraform: node or @cdktf/hcl2json under {node_modules} is missing; "
            "run scripts/setup.sh (or set MERIDIAN_HCL2JSON_PREFIX)\n")
        sys.exit(2)
    env = dict(os.environ, NODE_PATH=node_modules)
    proc = subprocess.run(["node", BRIDGE, *files], env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(2)
    return json.loads(proc.stdout)


class Module:
    """The declarations of one module directory, gathered from its parsed files."""

    def __init__(self, directory, files, parsed):
        self.dir = directory
        self.files = files
        self.parsed = {f: parsed[f] for f in files}
        self.variables = {}  # name -> (file, block)
        self.locals = {}
        self.resources = {}  # "type.name" -> file
        self.data = {}  # "data.type.name" -> file
        self.modules = {}  # name -> (file, block)
        self.outputs = {}  # name -> (file, block)
        self.iterators = set()  # dynamic block iterator names
        self.parse_errors = []
        for f in files:
            p = self.parsed[f]
            if "error" in p:
                self.parse_errors.append((f, p["error"]))
                continue
            body = p["body"]
            for name, blocks in body.get("variable", {}).items():
                self.variables[name] = (f, blocks[0])
            for block in body.get("locals", []):
                for name in block:
                    self.locals[name] = f
            for rtype, by_name in body.get("resource", {}).items():
                for name in by_name:
                    self.resources[f"{rtype}.{name}"] = f
            for dtype, by_name in body.get("data", {}).items():
                for name in by_name:
                    self.data[f"data.{dtype}.{name}"] = f
            for name, blocks in body.get("module", {}).items():
                self.modules[name] = (f, blocks[0])
            for name, blocks in body.get("output", {}).items():
                self.outputs[name] = (f, blocks[0])
            collect_iterators(body, self.iterators)


def collect_iterators(node, out):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "dynamic" and isinstance(value, dict):
                for name, blocks in value.items():
                    for b in blocks if isinstance(blocks, list) else [blocks]:
                        it = b.get("iterator", name) if isinstance(b, dict) else name
                        out.add(it.strip("${}") if isinstance(it, str) else name)
            collect_iterators(value, out)
    elif isinstance(node, list):
        for v in node:
            collect_iterators(v, out)


def line_of(path, needle):
    """Returns the 1-based line where needle first appears as a whole name, or 1."""
    pattern = re.compile(r"(?<![\w.-])" + re.escape(needle) + r"(?![\w-])")
    try:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if pattern.search(line):
                    return i
    except OSError:
        pass
    return 1


def where(path):
    """Describes a position in a parsed body: ['output', 'x', 0, 'value'] -> "output 'x'"."""
    if len(path) >= 2 and path[0] in ("output", "variable", "module"):
        return f"{path[0]} '{path[1]}'"
    if len(path) >= 3 and path[0] in ("resource", "data"):
        prefix = "data " if path[0] == "data" else ""
        return f"{prefix}{path[1]}.{path[2]}"
    if len(path) >= 3 and path[0] == "locals":
        return f"local '{path[2]}'"
    return "/".join(str(p) for p in path)


def local_source_dir(module, source):
    if not isinstance(source, str) or not source.startswith(("./", "../")):
        return None
    return os.path.normpath(os.path.join(module.dir, source))


def check_module(module, all_modules, problems):
    def report(f, needle, message):
        problems.append((f, line_of(f, needle) if needle else 1, message))

    for f, error in module.parse_errors:
        m = re.search(r":(\d+),\d+", error)
        problems.append((f, int(m.group(1)) if m else 1, f"does not parse: {error}"))

    # Module calls: the source exists, arguments match the callee's variables.
    children = {}
    for name, (f, block) in module.modules.items():
        source = block.get("source")
        target = local_source_dir(module, source)
        if target is None:
            continue  # registry or git source: not checked offline
        if target not in all_modules:
            report(f, source, f"module '{name}': source '{source}' does not exist "
                   f"(no .tf files in {os.path.relpath(target, REPO)})")
            continue
        child = all_modules[target]
        children[name] = child
        if child.parse_errors:
            continue
        for arg in block:
            if arg not in MODULE_META_ARGS and arg not in child.variables:
                report(f, arg, f"module '{name}' passes '{arg}', which {source} does not declare")
        for var, (_, vblock) in child.variables.items():
            if "default" not in vblock and var not in block:
                report(f, name, f"module '{name}' does not set '{var}', which {source} requires")

    # References.
    for f in module.files:
        p = module.parsed[f]
        if "error" in p:
            continue
        for path, message in p.get("expr_errors", []):
            problems.append((f, 1, f"{where(path)}: cannot read expression: {message}"))
        for path, ref in p["refs"]:
            parts = ref.split(".")
            root = parts[0]
            context = where(path)
            missing = None
            if len(parts) < 2 or root in BUILTIN_ROOTS or root in module.iterators:
                continue
            # Provider references (provider = aws.a, providers = {...}, configuration_aliases),
            # and addresses that need not exist (moved.from, removed.from).
            if path and (path[0] in ("terraform", "moved", "removed") or path[-1] == "provider"
                         or "providers" in path):
                continue
            if root == "var":
                if parts[1] not in module.variables:
                    missing = f"var.{parts[1]} is used but not declared"
            elif root == "local":
                if parts[1] not in module.locals:
                    missing = f"local.{parts[1]} is used but not defined"
            elif root == "module":
                name = parts[1]
                if name not in module.modules:
                    missing = f"module.{name} is used but not defined"
                elif len(parts) > 2 and name in children and not children[name].parse_errors:
                    if parts[2] not in children[name].outputs:
                        missing = (f"module.{name}.{parts[2]}: module '{name}' has no output "
                                   f"'{parts[2]}'")
            elif root == "data":
                key = ".".join(parts[:3])
                if len(parts) >= 3 and key not in module.data:
                    missing = f"{key} is used but not defined"
            elif len(parts) >= 2:
                key = f"{parts[0]}.{parts[1]}"
                if key not in module.resources:
                    missing = f"{key} is used but no such resource is defined"
            if missing:
                if path and path[0] == "output":
                    missing = f"output '{path[1]}' refers to something undefined: {missing}"
                else:
                    missing = f"{context}: {missing}"
                report(f, ref, missing)

    # Outputs need a value; files read from path.module exist.
    for name, (f, block) in module.outputs.items():
        if "value" not in block:
            report(f, name, f"output '{name}' has no value")
    for f in module.files:
        try:
            text = open(f, encoding="utf-8").read()
        except OSError:
            continue
        for m in re.finditer(r'(?:templatefile|file)\(\s*"\$\{path\.module\}/([^"]+)"', text):
            if not os.path.isfile(os.path.join(module.dir, m.group(1))):
                report(f, m.group(1), f"reads {m.group(1)}, which does not exist in the module")


def main(argv):
    roots = argv[1:] or [os.path.join(REPO, "deploy", "terraform")]
    for r in roots:
        if not os.path.isdir(r):
            sys.stderr.write(f"check_terraform: {r} is not a directory\n")
            return 2
    module_files = find_modules(roots)
    if not module_files:
        sys.stderr.write(f"check_terraform: no .tf files under {' '.join(roots)}\n")
        return 2
    parsed = parse_all([f for files in module_files.values() for f in files])
    modules = {d: Module(d, files, parsed) for d, files in module_files.items()}
    # Local modules called from outside the roots are read (not checked) to check the calls.
    callees = dict(modules)
    pending = list(modules.values())
    while pending:
        extra = {}
        for module in pending:
            for _, block in module.modules.values():
                target = local_source_dir(module, block.get("source"))
                if target and target not in callees and target not in extra:
                    extra.update(find_modules([target]) if os.path.isdir(target) else {})
        extra = {d: f for d, f in extra.items() if d not in callees}
        if extra:
            more = parse_all([f for files in extra.values() for f in files])
            pending = [Module(d, files, more) for d, files in extra.items()]
            callees.update({m.dir: m for m in pending})
        else:
            pending = []
    problems = []
    for module in modules.values():
        check_module(module, callees, problems)
    for f, line, message in sorted(set(problems)):
        print(f"{os.path.relpath(f)}:{line}: {message}")
    if problems:
        return 1
    nfiles = sum(len(v) for v in module_files.values())
    print(f"ok: {nfiles} files in {len(modules)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

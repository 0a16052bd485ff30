#!/usr/bin/env node
// Parses Terraform files with @cdktf/hcl2json (HashiCorp's HCL parser compiled to wasm) and
// prints one JSON object on stdout:
//   {"<file>": {"body": <hcl2json>, "refs": [[path, ref]...], "expr_errors": [[path, msg]...]}}
//   or {"<file>": {"error": "<parser message>"}}.
// `path` is where an expression sits in the body (["output", "x", 0, "value"]); `ref` is a
// reference it makes ("var.x", "module.m.y", "aws_lb.seed", "data.aws_ami.debian"), with
// for-expression variables already left out.
//
// Usage: node scripts/hcl2json.js FILE...   (module found through NODE_PATH; see
// scripts/check_terraform.py, which calls this once for all files).
"use strict";
const fs = require("fs");
const hcl = require("@cdktf/hcl2json");

// Returns the "${...}" interpolations of a template string, outermost only ("$${" is a literal).
function interpolations(text) {
  const out = [];
  for (let i = 0; i < text.length - 1; i++) {
    if (text[i] === "$" && text[i + 1] === "$") {
      i++;
      continue;
    }
    if (text[i] !== "$" || text[i + 1] !== "{") continue;
    let depth = 0;
    let j = i + 1;
    for (; j < text.length; j++) {
      if (text[j] === "{") depth++;
      else if (text[j] === "}" && --depth === 0) break;
    }
    out.push(text.slice(i, j + 1));
    i = j;
  }
  return out;
}

async function collect(node, path, out, file) {
  if (typeof node === "string") {
    if (!node.includes("${") && !node.includes("%{")) return;
    let refs;
    try {
      refs = await hcl.getReferencesInExpression(file, node);
    } catch (e) {
      // hcl2json hands templates back with their quotes unescaped ("Bearer \"x\"" becomes
      // 'Bearer "x"'), which does not re-parse as a whole: read each interpolation alone.
      refs = [];
      try {
        for (const part of interpolations(node)) {
          refs.push(...(await hcl.getReferencesInExpression(file, part)));
        }
      } catch (e2) {
        out.exprErrors.push([path, String(e2 && e2.message ? e2.message : e2)]);
      }
    }
    for (const r of refs) out.refs.push([path, r.value]);
  } else if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) await collect(node[i], path.concat([i]), out, file);
  } else if (node && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) await collect(v, path.concat([k]), out, file);
  }
}

async function main() {
  const out = {};
  for (const file of process.argv.slice(2)) {
    try {
      const body = await hcl.parse(file, fs.readFileSync(file, "utf8"));
      const found = { refs: [], exprErrors: [] };
      await collect(body, [], found, file);
      out[file] = { body, refs: found.refs, expr_errors: found.exprErrors };
    } catch (e) {
      out[file] = { error: String(e && e.message ? e.message : e) };
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(`hcl2json: ${e}\n`);
  process.exit(2);
});

#!/usr/bin/env python3
"""Cut the operations endor calls out of a forge's published API description, for the
conformance tests (tests/conformance.rs). Standard library only.

    npm pack @octokit/openapi@23.0.2 && tar xzf octokit-openapi-23.0.2.tgz
    scripts/forge-api-descriptions.py github package/generated/api.github.com.deref.json \
        > tests/fixtures/forge-api/github.json

Each operation keeps its parameters (path-level ones merged in), its JSON request body schema
and its JSON response schemas, dereferenced, with OpenAPI 3.0's `nullable: true` written as
JSON Schema (`type: [T, "null"]`, and null added to a nullable enum) so a plain JSON Schema
validator reads them right.
"""
import json
import sys

# The operations endor calls, by forge: (method, path template of the description).
OPERATIONS = {
    "github": [
        ("get", "/user"),
        ("get", "/app"),
        ("get", "/repos/{owner}/{repo}/installation"),
        ("post", "/app/installations/{installation_id}/access_tokens"),
        ("get", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
        ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
        ("patch", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
        ("delete", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
        ("post", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
        ("post", "/repos/{owner}/{repo}/statuses/{sha}"),
        ("get", "/repos/{owner}/{repo}/commits/{ref}/statuses"),
        ("get", "/repos/{owner}/{repo}/deployments"),
        ("post", "/repos/{owner}/{repo}/deployments"),
        ("post", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"),
        ("post", "/app-manifests/{code}/conversions"),
        ("post", "/repos/{owner}/{repo}/hooks"),
        ("patch", "/repos/{owner}/{repo}/hooks/{hook_id}"),
        ("delete", "/repos/{owner}/{repo}/hooks/{hook_id}"),
        ("post", "/repos/{owner}/{repo}/check-runs"),
        ("patch", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
        ("get", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ],
}

# Keywords that only describe: dropped to keep the fixture small.
DROP = {"description", "summary", "examples", "example", "externalDocs", "x-github",
        "x-githubEnterpriseOverlays", "x-octokit", "title", "tags"}


def clean(node):
    if isinstance(node, list):
        return [clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in DROP:
            continue
        if k in ("properties", "patternProperties") and isinstance(v, dict):
            # Names of properties, not keywords: every one is kept.
            out[k] = {name: clean(s) for name, s in v.items()}
        else:
            out[k] = clean(v)
    if out.pop("nullable", False):
        # A nullable enum takes null too (GitHub answers `"conclusion": null` for a check
        # run in progress, which its own examples show).
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
        elif t is None and ("anyOf" in out or "oneOf" in out or "allOf" in out or "properties" in out):
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def json_schema(content):
    for mime, media in (content or {}).items():
        if "json" in mime and "schema" in media:
            return clean(media["schema"])
    return None


def json_example(content):
    """The description's own example answer (the fake forges answer in its shape)."""
    for mime, media in (content or {}).items():
        if "json" not in mime:
            continue
        if "example" in media:
            return media["example"]
        for ex in (media.get("examples") or {}).values():
            if isinstance(ex, dict) and "value" in ex:
                return ex["value"]
    return None


def main():
    forge, path = sys.argv[1], sys.argv[2]
    doc = json.load(open(path))
    ops = []
    for method, template in OPERATIONS[forge]:
        item = doc["paths"][template]
        op = item[method]
        params = {(p["name"], p["in"]): p for p in item.get("parameters", [])}
        params.update({(p["name"], p["in"]): p for p in op.get("parameters", [])})
        body = op.get("requestBody")
        ops.append({
            "method": method.upper(),
            "path": template,
            "operationId": op.get("operationId"),
            "parameters": [
                {"name": p["name"], "in": p["in"], "required": p.get("required", False),
                 "schema": clean(p.get("schema", {}))}
                for p in params.values()
            ],
            "requestBody": body and {
                "required": body.get("required", False),
                "schema": json_schema(body.get("content")),
            },
            "responses": {
                status: json_schema(r.get("content"))
                for status, r in op.get("responses", {}).items()
                if status.startswith("2")
            },
            "examples": {
                status: json_example(r.get("content"))
                for status, r in op.get("responses", {}).items()
                if status.startswith("2") and json_example(r.get("content")) is not None
            },
        })
    json.dump({
        "source": "npm @octokit/openapi 23.0.2, generated/api.github.com.deref.json "
                  "(GitHub's REST API description, github/rest-api-description, as republished by octokit/openapi)",
        "license": "MIT (Copyright (c) 2020 Octokit contributors)",
        "api_version": doc["info"]["version"],
        "cut_by": "scripts/forge-api-descriptions.py " + forge,
        "operations": ops,
    }, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

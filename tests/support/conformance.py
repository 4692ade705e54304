#!/usr/bin/env python3
"""Hold the requests endor made (recorded by the fake forges) to a forge's published API
description, as cut into tests/fixtures/forge-api/ by scripts/forge-api-descriptions.py.

    conformance.py DESCRIPTION.json RECORDS.json

RECORDS is a list of {"method", "path" (with its query), "body", "form", "status", "response"},
paths relative to the API's root; `form` marks a form-encoded body (its fields as strings). Every request must name an operation the description has for its
method, send only declared query parameters and every required one, and send a body the
operation's request schema accepts (none when it takes none), form-encoded only where the
description's `request_bodies` names `application/x-www-form-urlencoded` (its fields then read
as the schema types them, as the server does). Every 2xx answer the fake gave
must match the operation's response schema for that status. One line per mismatch; exit 1 if
there is any. Needs `jsonschema` (installed with openapi-spec-validator by scripts/api-tools.sh).
"""
import json
import re
import sys
from urllib.parse import parse_qsl, urlsplit

import jsonschema


def compile_template(t):
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", re.escape(t).replace(r"\{", "{").replace(r"\}", "}")) + "$")


def typed(schema, fields):
    """A form's string fields as the schema's types read them; a field that does not read
    stays a string, so the schema refuses it."""
    props = schema.get("properties", {})
    out = {}
    for k, v in fields.items():
        t = props.get(k, {}).get("type")
        try:
            if t == "integer":
                v = int(v)
            elif t == "number":
                v = float(v)
            elif t == "boolean" and v in ("true", "false"):
                v = v == "true"
        except ValueError:
            pass
        out[k] = v
    return out


def main():
    desc = json.load(open(sys.argv[1]))
    records = json.load(open(sys.argv[2]))
    ops = [(o, compile_template(o["path"])) for o in desc["operations"]]
    problems = []
    checked = set()
    for r in records:
        url = urlsplit(r["path"])
        what = f'{r["method"]} {r["path"]}'
        matches = [o for o, rx in ops if o["method"] == r["method"] and rx.match(url.path)]
        if not matches:
            problems.append(f"{what}: no such operation in the description")
            continue
        # The most literal template wins (`/issues/comments/{id}` over `/issues/{n}/comments`).
        op = max(matches, key=lambda o: len(re.sub(r"\{[^}]+\}", "", o["path"])))
        checked.add(op["operationId"])
        query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
        sent = [k for k, _ in parse_qsl(url.query, keep_blank_values=True)]
        for k in sent:
            if k not in query:
                problems.append(f"{what}: query parameter `{k}` is not declared by {op['operationId']}")
        for name, p in query.items():
            if p["required"] and name not in sent:
                problems.append(f"{what}: required query parameter `{name}` is missing")
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            if k in query:
                schema = query[k]["schema"]
                value = v
                if schema.get("type") == "integer":
                    try:
                        value = int(v)
                    except ValueError:
                        pass
                for err in jsonschema.Draft4Validator(schema).iter_errors(value):
                    problems.append(f"{what}: query `{k}`: {err.message}")
        body = op.get("requestBody")
        if r["body"] is not None and r["body"] != {}:
            if not body or body.get("schema") is None:
                problems.append(f"{what}: sends a body {op['operationId']} does not take")
            elif r.get("form") and "application/x-www-form-urlencoded" not in desc.get("request_bodies", ["application/json"]):
                problems.append(f"{what}: sends a form-encoded body, which the description does not take")
            else:
                sent_body = typed(body["schema"], r["body"]) if r.get("form") else r["body"]
                for err in jsonschema.Draft202012Validator(body["schema"]).iter_errors(sent_body):
                    problems.append(f"{what}: body {list(err.path)}: {err.message}")
        elif body and body.get("required"):
            problems.append(f"{what}: {op['operationId']} needs a body")
        status = str(r["status"])
        if status.startswith("2") and r.get("response") is not None:
            schema = op["responses"].get(status)
            if status not in op["responses"]:
                problems.append(f"{what}: answered {status}, which {op['operationId']} does not list")
            elif schema is not None:
                for err in jsonschema.Draft202012Validator(schema).iter_errors(r["response"]):
                    problems.append(f"{what}: answer {list(err.path)}: {err.message}")
    for p in problems:
        print(p)
    print(f"{len(records)} requests, {len(checked)} operations checked, {len(problems)} mismatches", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

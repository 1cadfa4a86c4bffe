#!/usr/bin/env python3
"""Offline check of Kubernetes manifests, as strict as `kubectl apply --server-side`
(which rejects unknown fields by default).

Built-in kinds are checked with kubernetes-validate's strict schemas for the given
Kubernetes version. Kinds defined by a CRD file given with --crd are checked against that
CRD's openAPIV3Schema, made strict the way the API server treats a structural schema:
unknown fields are errors unless the schema preserves them. A kind with neither is an error,
unless named with --unchecked (it is then reported as not checked).

Run with the Python of the test venv (scripts/test-deps.sh), which has kubernetes-validate
and jsonschema. Prints one line per object; exit status 1 if anything failed.
"""
import argparse
import copy
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """Disallow fields a structural schema does not declare, recursively."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas(paths):
    schemas = {}
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    api_version = f"{spec['group']}/{version['name']}"
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    # metadata is checked by the API server itself, not by the CRD.
                    schema.get("properties", {}).pop("metadata", None)
                    if "metadata" in schema.get("required", []):
                        schema["required"].remove("metadata")
                    schemas[(api_version, spec["names"]["kind"])] = strict(schema)
    return schemas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--crd", action="append", default=[], help="a file of CustomResourceDefinitions")
    parser.add_argument("--unchecked", action="append", default=[], help="a kind with no schema here")
    args = parser.parse_args()
    schemas = crd_schemas(args.crd)
    failed = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"ERROR {path}: no objects")
            failed += 1
        for doc in docs:
            kind, api_version = doc.get("kind", "?"), doc.get("apiVersion", "?")
            name = f"{path}: {kind} {doc.get('metadata', {}).get('name', '?')}"
            if not doc.get("metadata", {}).get("name"):
                print(f"ERROR {name}: metadata.name is missing")
                failed += 1
                continue
            schema = schemas.get((api_version, kind))
            try:
                if schema is not None:
                    jsonschema.validators.Draft7Validator(schema).validate(
                        {k: v for k, v in doc.items() if k != "metadata"}
                    )
                    print(f"ok    {name} (CRD schema)")
                elif kind in args.unchecked:
                    print(f"SKIP  {name}: no schema available offline")
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                    print(f"ok    {name} (Kubernetes {args.kubernetes_version}, strict)")
            except jsonschema.ValidationError as e:
                where = ".".join(str(p) for p in e.absolute_path) or "(top)"
                print(f"ERROR {name}: {where}: {e.message}")
                failed += 1
            except kubernetes_validate.SchemaNotFoundError:
                print(f"ERROR {name}: no schema for {api_version} {kind}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

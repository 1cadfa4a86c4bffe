#!/usr/bin/env python3
"""Validates CycloneDX JSON documents against the published schema of their specVersion,
strictly (no unknown fields), with CycloneDX's own Python library. Prints one line per
file; exits 1 if any is invalid."""
import json
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def main(paths):
    ok = True
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            spec = json.loads(text)["specVersion"]
            version = SchemaVersion.from_version(spec)
        except (ValueError, KeyError, TypeError) as e:
            print(f"{path}: not a CycloneDX JSON document ({e!r})")
            ok = False
            continue
        error = JsonStrictValidator(version).validate_str(text)
        if error is None:
            print(f"{path}: valid CycloneDX {spec}")
        else:
            # The schema error's first line says what and where; the rest quotes the schema.
            detail = getattr(error.data, "message", None) or str(error).splitlines()[0]
            where = "/".join(str(p) for p in getattr(error.data, "absolute_path", []))
            print(f"{path}: INVALID CycloneDX {spec}: {detail} (at /{where})")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

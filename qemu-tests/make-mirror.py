#!/usr/bin/env python3
"""Builds the artifact mirror of test doubles the QEMU tests boot with.

Upstream Kubernetes binaries cannot be downloaded on the development machines, so every
file in artifacts.lock is replaced by a small stand-in at the same upstream path under
OUT/mirror/<host>/<path>, and OUT/artifacts.lock pins the stand-ins' digests (with the same
names, install paths and URLs). kubestick then runs unchanged with
`--lock OUT/artifacts.lock --mirror OUT/mirror`: the product does not know it is tested.

The doubles record how they were called (one line per call in
/var/log/kubestick-doubles.log on the node) and succeed; containerd tells systemd it is
ready so its unit starts like the real one.

Usage: make-mirror.py REPO_ROOT OUT_DIR
"""
import hashlib
import io
import os
import sys
import tarfile
import tomllib

RECORDER = """#!/bin/sh
# kubestick test double for {name} {version}: records the call, succeeds.
echo "$(date +%s) {name} $*" >> /var/log/kubestick-doubles.log
{extra}exit 0
"""

EXTRA = {
    "containerd": 'command -v systemd-notify >/dev/null && systemd-notify --ready\nexec sleep infinity\n',
    "kubectl": 'case "$1" in version) echo "Client Version: v{version} (kubestick test double)";; esac\n',
    # init/join also record the digest of the --config file, so a test can tell that the
    # node ran kubeadm with exactly the configuration kubestick rendered for it.
    "kubeadm": 'case "$1" in version) echo "kubeadm version: v{version} (kubestick test double)";;\n'
    'init|join) prev=; for a do [ "$prev" = --config ] && echo "$(date +%s) kubeadm $1 config $a sha256=$(sha256sum < "$a" | cut -d" " -f1)" >> /var/log/kubestick-doubles.log; prev=$a; done;;\n'
    'esac\n',
}


def script(name, version):
    extra = EXTRA.get(name, "").format(version=version)
    return RECORDER.format(name=name, version=version, extra=extra).encode()


def tarball(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def double(artifact):
    name, version, kind = artifact["name"], artifact["version"], artifact["kind"]
    if kind == "binary":
        return script(name, version)
    if kind == "manifest":
        return f"# kubestick test double for {name} {version}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kubestick-double-{name.replace('.', '-').lower()}\n  namespace: default\ndata:\n  double: \"true\"\n".encode()
    if name == "crictl":
        return tarball([("crictl", script("crictl", version))])
    if name == "cni-plugins":
        return tarball([(f"./{p}", script(p, version)) for p in ("bridge", "host-local", "loopback", "portmap", "flannel")])
    if name == "containerd":
        return tarball([(f"bin/{p}", script(p, version)) for p in ("containerd", "containerd-shim-runc-v2", "ctr")])
    raise SystemExit(f"no test double for archive {name}")


def toml_value(v):
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def main():
    repo, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(repo, "artifacts.lock"), "rb") as f:
        lock = tomllib.load(f)
    lines = ["# Test doubles for the QEMU tests (made by qemu-tests/make-mirror.py). Never for real use.", f"format = {lock['format']}", ""]
    for version, release in lock["kubernetes"].items():
        lines.append(f'[kubernetes."{version}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in release.items()]
        lines.append("")
    lines.append("[images]")
    lines += [f"{k} = {toml_value(v)}" for k, v in lock["images"].items()]
    lines.append("")
    for artifact in lock["artifact"]:
        data = double(artifact)
        host_path = artifact["url"].split("://", 1)[1]
        path = os.path.join(out, "mirror", host_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        entry = dict(artifact)
        entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        entry["size"] = len(data)
        entry["source"] = "kubestick test double"
        entry.pop("checksum_url", None)
        entry.pop("unpinned", None)
        lines.append("[[artifact]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    with open(os.path.join(out, "artifacts.lock"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds the artifact mirror and lock of the REAL components qemu-tests/real/build.sh built.

The counterpart of qemu-tests/make-mirror.py (the doubles): every file the rehearsal
cluster needs is written at its upstream path under OUT/mirror/<host>/<path>, in upstream's
form (plain binaries; crictl, the CNI plugins and containerd as the .tar.gz upstream
publishes), and every image it runs is an OCI image in the OCI image layout OUT/mirror
(oci-layout, index.json, blobs/sha256/), named and tagged as kubeadm and the rendered
add-ons ask for. OUT/artifacts.lock pins all of it by digest, so kubestick runs unchanged
with `--lock OUT/artifacts.lock --mirror OUT/mirror`.

Only what a cluster without [storage] and [ingress] needs is in the lock: the Kubernetes
release's files and images, flannel's two images, and agnhost (the test workload, carried
on every node like an add-on image, since the VMs reach no registry).

Images that run a shell command or need netfilter tools (kube-proxy: iptables; flannel:
iptables and cp; flannel's CNI plugin image: cp) get a Debian base layer (BASE_TAR, a
tarball of a minimal root filesystem with iptables, nftables and conntrack), shared by all
of them and stored once; the others hold only their binary, as upstream's distroless
images do.

Usage: make-mirror.py REPO_ROOT BIN_DIR BASE_TAR OUT_DIR
  BIN_DIR: the bin/ directory of a build.sh output (kubeadm, ..., cni/bridge, ...)
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tomllib

VERSION = "1.36.4"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def targz(members, level=6):
    """A reproducible .tar.gz of (path, bytes, mode) members."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for path, data, mode in members:
            parts = path.strip("./").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return plain, gzip.compress(plain, compresslevel=level, mtime=0)


class Layout:
    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        self.manifests = []

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.root, "blobs", "sha256", digest)
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.rename(path + ".tmp", path)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def image(self, reference, layers, config):
        """layers: (plain tar, gzip'd tar) pairs, bottom first."""
        layer_descs = [self.blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip") for _, gz in layers]
        diff_ids = ["sha256:" + hashlib.sha256(plain).hexdigest() for plain, _ in layers]
        cfg = {"architecture": "amd64", "os": "linux", "config": config,
               "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cfg_desc = self.blob(json.dumps(cfg, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg_desc, "layers": layer_descs}
        desc = self.blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        self.manifests.append({**desc, "annotations": {"org.opencontainers.image.ref.name": reference}})
        return desc["digest"]

    def finish(self):
        with open(os.path.join(self.root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}\n')
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": self.manifests}, f, indent=1)


def toml_value(v):
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def main():
    repo, bin_dir, base_tar, out = sys.argv[1:5]
    with open(os.path.join(repo, "artifacts.lock"), "rb") as f:
        lock = tomllib.load(f)
    versions = dict(line.split("\t")[:2] for line in open(os.path.join(bin_dir, "..", "VERSIONS"))
                    if not line.startswith("#"))
    b = lambda name: read(os.path.join(bin_dir, name))
    mirror = os.path.join(out, "mirror")
    layout = Layout(mirror)
    lines = ["# Real components built from Go modules by qemu-tests/real/build.sh (made by",
             "# qemu-tests/real/make-mirror.py), for the QEMU rehearsal. Not upstream's bytes.",
             f"format = {lock['format']}", "", f'[kubernetes."{VERSION}"]']
    lines += [f"{k} = {toml_value(v)}" for k, v in lock["kubernetes"][VERSION].items()]
    lines.append("")

    # --- files ------------------------------------------------------------------------
    files = {
        "kubeadm": lambda: b("kubeadm"),
        "kubelet": lambda: b("kubelet"),
        "kubectl": lambda: b("kubectl"),
        "runc": lambda: b("runc"),
        "crictl": lambda: targz([("crictl", b("crictl"), 0o755)])[1],
        "cni-plugins": lambda: targz([(f"./{p}", b(f"cni/{p}"), 0o755)
                                      for p in ("bridge", "host-local", "loopback", "portmap")])[1],
        "containerd": lambda: targz([(f"bin/{p}", b(p), 0o755)
                                     for p in ("containerd", "containerd-shim-runc-v2", "ctr")])[1],
    }
    built_version = {"crictl": versions["crictl"], "cni-plugins": versions["cni/bridge"],
                     "containerd": versions["containerd"], "runc": versions["runc"]}
    for artifact in lock["artifact"]:
        if artifact.get("needs") or artifact.get("kubernetes") not in (None, VERSION):
            continue
        name = artifact["name"]
        data = files[name]()
        host_path = artifact["url"].split("://", 1)[1]
        path = os.path.join(mirror, host_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)
        entry = dict(artifact)
        entry["version"] = built_version.get(name, entry["version"]).lstrip("v")
        entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        entry["size"] = len(data)
        entry["source"] = f"built from Go modules by qemu-tests/real/build.sh ({versions.get(name, built_version.get(name))})"
        entry.pop("checksum_url", None)
        entry.pop("unpinned", None)
        lines.append("[[artifact]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")

    # --- images ---------------------------------------------------------------------------
    base = (read(base_tar), None)
    base = (base[0], gzip.compress(base[0], compresslevel=6, mtime=0))
    only = lambda members: targz(members)
    env = {"Env": [PATH_ENV]}
    images = {
        "kube-apiserver": ([only([("usr/local/bin/kube-apiserver", b("kube-apiserver"), 0o755)])],
                           {**env, "Entrypoint": ["/usr/local/bin/kube-apiserver"]}),
        "kube-controller-manager": ([only([("usr/local/bin/kube-controller-manager", b("kube-controller-manager"), 0o755)])],
                                    {**env, "Entrypoint": ["/usr/local/bin/kube-controller-manager"]}),
        "kube-scheduler": ([only([("usr/local/bin/kube-scheduler", b("kube-scheduler"), 0o755)])],
                           {**env, "Entrypoint": ["/usr/local/bin/kube-scheduler"]}),
        "kube-proxy": ([base, only([("usr/local/bin/kube-proxy", b("kube-proxy"), 0o755)])],
                       {**env, "Entrypoint": ["/usr/local/bin/kube-proxy"]}),
        "etcd": ([only([("usr/local/bin/etcd", b("etcd"), 0o755), ("usr/local/bin/etcdctl", b("etcdctl"), 0o755)])],
                 {**env, "Entrypoint": ["/usr/local/bin/etcd"]}),
        "coredns": ([only([("coredns", b("coredns"), 0o755)])], {**env, "Entrypoint": ["/coredns"]}),
        "pause": ([only([("pause", b("pause"), 0o755)])], {**env, "Entrypoint": ["/pause"]}),
        "flannel": ([base, only([("opt/bin/flanneld", b("flanneld"), 0o755)])],
                    {**env, "Entrypoint": ["/opt/bin/flanneld"]}),
        "flannel-cni-plugin": ([base, only([("flannel", b("cni/flannel"), 0o755)])], {**env, "Cmd": ["/bin/sh"]}),
    }
    for image in lock.get("image", []):
        if image.get("needs") or image.get("kubernetes") not in (None, VERSION) or image["name"] not in images:
            continue
        layers, config = images[image["name"]]
        digest = layout.image(image["reference"], layers, config)
        entry = dict(image)
        entry["digest"] = digest
        entry["source"] = "built from Go modules by qemu-tests/real/build.sh"
        entry.pop("unpinned", None)
        lines.append("[[image]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    # agnhost: the workload of the real drills, on every node (no registry is reachable).
    reference = f"registry.k8s.io/e2e-test-images/agnhost:{versions['agnhost']}"
    digest = layout.image(reference, [only([("agnhost", b("agnhost"), 0o755)])], {**env, "Entrypoint": ["/agnhost"]})
    lines += ["[[image]]", 'name = "agnhost"', f"reference = {toml_value(reference)}", f'digest = "{digest}"',
              'source = "built from Go modules by qemu-tests/real/build.sh (the real drills\' workload)"', ""]
    layout.finish()
    with open(os.path.join(out, "artifacts.lock.tmp"), "w") as f:
        f.write("\n".join(lines))
    os.rename(os.path.join(out, "artifacts.lock.tmp"), os.path.join(out, "artifacts.lock"))


if __name__ == "__main__":
    main()

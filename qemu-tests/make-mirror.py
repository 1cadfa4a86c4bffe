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

Every container image in the lock becomes a tiny single-platform OCI image (one layer
holding /kubestick-double), written into OUT/mirror as an OCI image layout (oci-layout,
index.json, blobs/sha256/...), the form `--mirror DIR` reads images from; the lock pins its
manifest digest. The ctr double imports what it is given the way ctr does as far as a
first-boot step can see: it reads the layout's index.json from the tar stream and from then
on lists those image names.

Usage: make-mirror.py REPO_ROOT OUT_DIR
"""
import hashlib
import io
import os
import sys
import json
import tarfile
import tomllib

RECORDER = """#!/bin/sh
# kubestick test double for {name} {version}: records the call, succeeds.
echo "$(date +%s) {name} $*" >> /var/log/kubestick-doubles.log
{extra}exit 0
"""

CTR = r"""case "$*" in
*" images import "*|"images import "*)
    tar -xOf - ./index.json | python3 -c 'import json, sys
for m in json.load(sys.stdin)["manifests"]:
    print(m["annotations"]["io.containerd.image.name"])' >> /var/lib/kubestick-doubles-ctr-images;;
*" images list"*|"images list"*)
    cat /var/lib/kubestick-doubles-ctr-images 2>/dev/null || true;;
esac
"""

EXTRA = {
    "ctr": CTR,
    "containerd": 'command -v systemd-notify >/dev/null && systemd-notify --ready\nexec sleep infinity\n',
    # The cluster's release, as the bootstrap reads it before a join (ClusterConfiguration)
    # and after it (kube-proxy's image): the release of the doubles.
    "kubectl": 'case "$1" in version) echo "Client Version: v{version} (kubestick test double)";; esac\n'
    'case "$*" in *" get configmap kubeadm-config "*) echo "kubernetesVersion: v{version}";;\n'
    '*" get daemonset kube-proxy "*) echo "registry.k8s.io/kube-proxy:v{version}";; esac\n',
    # init/join also record the digest of the --config file, so a test can tell that the
    # node ran kubeadm with exactly the configuration kubestick rendered for it.
    "kubeadm": 'case "$1" in version) echo "kubeadm version: v{version} (kubestick test double)";;\n'
    'init|join) prev=; for a do [ "$prev" = --config ] && echo "$(date +%s) kubeadm $1 config $a sha256=$(sha256sum < "$a" | cut -d" " -f1)" >> /var/log/kubestick-doubles.log; prev=$a; done;;\n'
    'esac\n',
}

# --- A stand-in API server for the `kubestick vm` drills (qemu-tests/drills.sh) -----------
# With the doubles no kube-apiserver runs, yet the drills need the API virtual IP to answer
# the way a real control plane makes it answer: keepalived's health check
# (templates/keepalived/check-apiserver: curl -k https://127.0.0.1:6443/livez) must pass on
# control-plane nodes, and a joining node's bootstrap step only joins when /livez at the VIP
# answers with a certificate that chains to the cluster CA. So, as the real tools do:
# kubeadm init and kubeadm join of a control-plane node issue an API server certificate
# from the node's CA (/etc/kubernetes/pki, for the VIP, the node's address and 127.0.0.1)
# and leave a static-pod manifest; the kubelet double serves /livez over TLS on :6443
# while that manifest exists, as the kubelet runs the static pod (after a reboot too);
# kubeadm reset removes the manifest. Answers carry X-Kubestick-Double-Node: <hostname>,
# so a drill can tell which node answered at the VIP. (EXTRA strings pass through
# str.format, so these use no braces.)
APISERVER_KUBEADM = r"""case "$*" in
"init phase"*|"join phase"*) ;;  # the bootstrap's later phases: the first call did the work
init*|join*)
    config=; prev=; for a do [ "$prev" = --config ] && config=$a; prev=$a; done
    if [ "$1" = init ] || grep -q '^controlPlane:' "$config" 2>/dev/null; then
        . /etc/kubestick/node.env
        pki=/etc/kubernetes/pki; tmp=$(mktemp -d)
        printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1\n' "$(echo "$KUBESTICK_API_ENDPOINT" | cut -d: -f1)" "$KUBESTICK_NODE_IP" > "$tmp/ext"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
            -keyout "$pki/apiserver.key" -out "$tmp/csr" 2>/dev/null
        openssl x509 -req -in "$tmp/csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -days 365 \
            -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -extfile "$tmp/ext" -out "$pki/apiserver.crt" 2>/dev/null
        rm -rf "$tmp"
        mkdir -p /etc/kubernetes/manifests
        echo "# kubestick test double: the kubelet double serves /livez on :6443 while this exists" > /etc/kubernetes/manifests/kube-apiserver.yaml
        systemctl restart --no-block kubelet.service
    fi;;
reset*)
    rm -f /etc/kubernetes/manifests/kube-apiserver.yaml
    systemctl restart --no-block kubelet.service;;
esac
"""
APISERVER_KUBELET = r"""[ -e /etc/kubernetes/manifests/kube-apiserver.yaml ] && exec python3 - <<'EOF'
import http.server, socket, ssl
class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10
    def do_GET(self):
        path = self.path.split("?")[0]
        ok = path in ("/livez", "/readyz", "/healthz", "/version")
        body = b"ok" if ok else b"kubestick test double: only /livez, /readyz, /healthz and /version"
        if path == "/version":
            body = b'{{\n  "gitVersion": "v{version}",\n  "platform": "linux/amd64"\n}}\n'
        self.send_response(200 if ok else 404)
        self.send_header("X-Kubestick-Double-Node", socket.gethostname())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client hanging up mid-request (a check that timed out) is not worth a traceback
server = Server(("0.0.0.0", 6443), Handler)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain("/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key")
# The handshake happens in the handler's thread, so a silent client never blocks accept().
server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
server.serve_forever()
EOF
"""
EXTRA["kubeadm"] += APISERVER_KUBEADM
EXTRA["kubelet"] = EXTRA.get("kubelet", "") + APISERVER_KUBELET


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


def gz_tar(files):
    """A reproducible gzip'd tar: fixed times, owners and order."""
    import gzip
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def write_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def image_double(layout, image):
    """A one-layer linux/amd64 OCI image standing in for `image`; returns its manifest descriptor."""
    layer = gz_tar([("kubestick-double", f"kubestick test double for {image['reference']}\n".encode())])
    layer_desc = write_blob(layout, layer)
    diff_id = "sha256:" + hashlib.sha256(tarfile_bytes(layer)).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/kubestick-double"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
    config_desc = write_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
    }).encode()
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **write_blob(layout, manifest),
            "annotations": {"org.opencontainers.image.ref.name": image["reference"]}}


def tarfile_bytes(gz):
    import gzip
    return gzip.decompress(gz)


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
    layout = os.path.join(out, "mirror")
    os.makedirs(layout, exist_ok=True)
    manifests = []
    for image in lock.get("image", []):
        desc = image_double(layout, image)
        manifests.append(desc)
        entry = dict(image)
        entry["digest"] = desc["digest"]
        entry["source"] = "kubestick test double"
        entry.pop("unpinned", None)
        lines.append("[[image]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}\n')
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}, f, indent=1)
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

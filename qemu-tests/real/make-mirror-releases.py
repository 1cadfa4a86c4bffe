#!/usr/bin/env python3
"""The real-components mirror and lock carrying more than one Kubernetes release.

make-mirror.py writes the mirror and lock of one release (its VERSION, the default build's:
qemu-tests/real/build.sh with no argument). This runs it unchanged for that release into
OUT_DIR, then once more for every further RELEASE=TREE with VERSION set to RELEASE, where
TREE is the output of `build.sh RELEASE` (the seven Kubernetes binaries, pause, etcd,
etcdctl and CoreDNS of that release): what a release tree does not hold (containerd, runc,
the CNI plugins, flannel, crictl, agnhost) is taken from the default tree, so those files
and images are the same bytes in both. Each further release is merged into OUT_DIR: its
files (at their upstream paths) and its image blobs are added, its images are added to the
OCI index, and its `[kubernetes."RELEASE"]` table and entries with `kubernetes = "RELEASE"`
are appended to OUT_DIR/artifacts.lock, whose first part stays exactly what make-mirror.py
writes for the default release alone. An entry both releases carry must be identical.

Usage: make-mirror-releases.py REPO_ROOT BASE_TAR OUT_DIR DEFAULT_TREE [RELEASE=TREE...]
"""
import importlib.util
import json
import os
import shutil
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def load_make_mirror():
    spec = importlib.util.spec_from_file_location("make_mirror", os.path.join(HERE, "make-mirror.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(mm, version, repo, bin_dir, base_tar, out):
    mm.VERSION = version
    argv = sys.argv
    sys.argv = [argv[0], repo, bin_dir, base_tar, out]
    try:
        mm.main()
    finally:
        sys.argv = argv


def versions(tree):
    with open(os.path.join(tree, "VERSIONS")) as f:
        return {line.split("\t")[0]: line for line in f if not line.startswith("#")}


def combined_tree(default_tree, release_tree, dest):
    """DEST/bin: the release tree's binaries over the default tree's; DEST/VERSIONS likewise."""
    for tree in (default_tree, release_tree):
        src = os.path.abspath(os.path.join(tree, "bin"))
        for d, _, names in os.walk(src):
            for name in names:
                rel = os.path.relpath(os.path.join(d, name), src)
                link = os.path.join(dest, "bin", rel)
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if os.path.lexists(link):
                    os.remove(link)
                os.symlink(os.path.join(d, name), link)
    merged = {**versions(default_tree), **versions(release_tree)}
    with open(os.path.join(dest, "VERSIONS"), "w") as f:
        f.write("# component\tversion\tsource\n" + "".join(merged.values()))
    return os.path.join(dest, "bin")


def blocks(text):
    """The lock make-mirror.py wrote, as (parsed, text) blocks separated by blank lines."""
    out = []
    for chunk in text.split("\n\n"):
        chunk = chunk.strip("\n")
        if chunk:
            out.append((tomllib.loads(chunk), chunk))
    return out


def merge_files(src, dst):
    """Moves every file under SRC to the same place under DST; one already there must be equal."""
    for d, _, names in os.walk(src):
        for name in names:
            s = os.path.join(d, name)
            t = os.path.join(dst, os.path.relpath(s, src))
            if os.path.exists(t):
                with open(s, "rb") as a, open(t, "rb") as b:
                    if a.read() != b.read():
                        sys.exit(f"make-mirror-releases: {t} differs between releases")
                continue
            os.makedirs(os.path.dirname(t), exist_ok=True)
            os.rename(s, t)


def main():
    repo, base_tar, out, default_tree = sys.argv[1:5]
    releases = [arg.split("=", 1) for arg in sys.argv[5:]]
    mm = load_make_mirror()
    default_version = mm.VERSION
    built = versions(default_tree)["kubeadm"].split("\t")[1]
    if built != "v" + default_version:
        sys.exit(f"make-mirror-releases: {default_tree} holds kubeadm {built}, make-mirror.py's VERSION is {default_version}")
    run(mm, default_version, repo, os.path.join(default_tree, "bin"), base_tar, out)

    lock_path = os.path.join(out, "artifacts.lock")
    with open(lock_path) as f:
        lock_text = f.read()
    seen = {}  # (table, name, reference or url) -> block text, of the entries already in the lock
    for parsed, text in blocks(lock_text):
        for table in ("artifact", "image"):
            for entry in parsed.get(table, []):
                seen[(table, entry["name"], entry.get("kubernetes"))] = text
    index_path = os.path.join(out, "mirror", "index.json")
    with open(index_path) as f:
        index = json.load(f)
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}

    for version, tree in releases:
        got = versions(tree)["kubeadm"].split("\t")[1]
        if got != "v" + version:
            sys.exit(f"make-mirror-releases: {tree} holds kubeadm {got}, not v{version}")
        part = os.path.join(out, f".release-{version}")
        bin_dir = combined_tree(default_tree, tree, os.path.join(part, "tree"))
        run(mm, version, repo, bin_dir, base_tar, os.path.join(part, "out"))
        with open(os.path.join(part, "out", "artifacts.lock")) as f:
            part_blocks = blocks(f.read())
        added = []
        for parsed, text in part_blocks:
            if "format" in parsed or text.startswith("#"):
                continue  # the header and format line: the default lock's
            if "kubernetes" in parsed and "artifact" not in parsed and "image" not in parsed:
                added.append(text)  # [kubernetes."VERSION"]
                continue
            for table in ("artifact", "image"):
                for entry in parsed.get(table, []):
                    key = (table, entry["name"], entry.get("kubernetes"))
                    if entry.get("kubernetes") == version:
                        added.append(text)
                    elif seen.get(key) != text:
                        sys.exit(f"make-mirror-releases: {table} {entry['name']} differs between releases")
        with open(os.path.join(part, "out", "mirror", "index.json")) as f:
            part_index = json.load(f)
        for m in part_index["manifests"]:
            ref = m["annotations"]["org.opencontainers.image.ref.name"]
            if ref in refs:
                if refs[ref] != m:
                    sys.exit(f"make-mirror-releases: image {ref} differs between releases")
                continue
            refs[ref] = m
            index["manifests"].append(m)
        os.remove(os.path.join(part, "out", "mirror", "index.json"))
        merge_files(os.path.join(part, "out", "mirror"), os.path.join(out, "mirror"))
        shutil.rmtree(part)
        lock_text = lock_text.rstrip("\n") + "\n\n" \
            + f"# Kubernetes {version}: `qemu-tests/real/build.sh {version}`; what does not depend on the release is above.\n" \
            + "\n\n".join(added) + "\n"

    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f, indent=1)
    os.rename(index_path + ".tmp", index_path)
    with open(lock_path + ".tmp", "w") as f:
        f.write(lock_text)
    os.rename(lock_path + ".tmp", lock_path)
    with open(lock_path, "rb") as f:
        tomllib.load(f)  # still one valid lock


if __name__ == "__main__":
    main()

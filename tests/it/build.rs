//! `kubestick build` end to end with the test-double artifact mirror (qemu-tests/): the
//! images' structure checked by sfdisk, fsck.vfat, e2fsck, debugfs and mtools, and every
//! fault leaving no image at its final path. The Debian base is built once (mmdebstrap)
//! into a cache shared by these tests and the QEMU tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;

/// The rehearsal cluster's doubles, made once per test run.
fn doubles() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("target/test-doubles");
        let status = Command::new("python3")
            .arg(repo().join("qemu-tests/make-mirror.py"))
            .arg(repo())
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        dir
    })
}

fn shared_cache() -> PathBuf {
    repo().join("target/qemu-tests-cache")
}

/// `build` arguments for the rehearsal cluster in `s`, writing to `out`.
fn build_args(s: &Scratch, out: &Path, cache: &Path, mirror: &Path) -> Vec<std::ffi::OsString> {
    let toml = s.path("cluster.toml");
    if !toml.exists() {
        fs::copy(repo().join("qemu-tests/cluster.toml"), &toml).unwrap();
    }
    let mut args: Vec<std::ffi::OsString> = vec!["build".into(), toml.into(), "-o".into(), out.into()];
    args.extend([
        "--lock".into(),
        doubles().join("artifacts.lock").into(),
        "--mirror".into(),
        mirror.into(),
        "--cache".into(),
        cache.into(),
    ]);
    args
}

fn build_cmd(s: &Scratch, cache: &Path, mirror: &Path) -> assert_cmd::Command {
    let mut cmd = kubestick();
    cmd.args(build_args(s, &s.path("out"), cache, mirror));
    cmd
}

/// One successful build, shared by the structure tests.
fn built() -> &'static (Scratch, PathBuf) {
    static BUILT: OnceLock<(Scratch, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let s = Scratch::new();
        build_cmd(&s, &shared_cache(), &doubles().join("mirror"))
            .timeout(std::time::Duration::from_secs(1200))
            .assert()
            .success();
        let out = s.path("out");
        (s, out)
    })
}

struct Part {
    name: String,
    kind: String,
    start: u64,
    size: u64,
}

fn partitions(image: &Path) -> Vec<Part> {
    let out = run_tool("sfdisk", &["--json", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            name: p["name"].as_str().unwrap().to_string(),
            kind: p["type"].as_str().unwrap().to_string(),
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
        })
        .collect()
}

/// Copies one partition out (sparse) for tools that cannot take an offset.
fn extract(image: &Path, part: &Part, to: &Path) {
    let status = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", to.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", part.start / (1 << 20)))
        .arg(format!("count={}", part.size / (1 << 20)))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn images_have_the_expected_partitions_and_clean_filesystems() {
    let (s, out) = built();
    for node in ["optiplex-1", "optiplex-2", "optiplex-3"] {
        let image = out.join(format!("{node}.img"));
        assert_eq!(mode(&image), 0o600, "{node}.img holds secrets");
        let parts = partitions(&image);
        let summary: Vec<(&str, &str)> = parts.iter().map(|p| (p.name.as_str(), p.kind.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("EFI System", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
                ("CIDATA", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
                ("root", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
            ]
        );
        for (i, fs_image) in [(0, "esp.img"), (1, "cidata.img")] {
            let to = s.path(&format!("{node}-{fs_image}"));
            extract(&image, &parts[i], &to);
            assert_tool_ok("fsck.vfat", &["-n", to.to_str().unwrap()]);
        }
        let root = format!("{}?offset={}", image.display(), parts[2].start);
        assert_tool_ok("e2fsck", &["-fn", &root]);
        // The CIDATA files read back equal the rendered ones.
        let cidata = s.path(&format!("{node}-cidata.img"));
        for file in ["meta-data", "user-data", "network-config"] {
            let got = run_tool("mtype", &["-i", cidata.to_str().unwrap(), &format!("::{file}")]);
            assert!(got.status.success());
            assert_eq!(
                got.stdout,
                fs::read(out.join(node).join("cloud-init").join(file)).unwrap(),
                "{node} {file}"
            );
        }
        let label = run_tool("blkid", &["-o", "value", "-s", "LABEL", cidata.to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "CIDATA");
    }
    // The ESP boots systemd-boot through the removable-media path with the node's root.
    let (_, out) = built();
    let image = out.join("optiplex-1.img");
    let esp = format!("{}@@{}", image.display(), partitions(&image)[0].start);
    let entry = run_tool("mtype", &["-i", &esp, "::/loader/entries/kubestick.conf"]);
    let entry = String::from_utf8_lossy(&entry.stdout).into_owned();
    assert!(
        entry.contains("root=PARTUUID=") && entry.contains("console=ttyS0"),
        "{entry}"
    );
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/vmlinuz",
        "::/initrd.img",
        "::/loader/loader.conf",
    ] {
        assert!(
            run_tool("mdir", &["-i", &esp, f]).status.success(),
            "{f} missing from the ESP"
        );
    }
}

#[test]
fn the_root_filesystem_carries_kubernetes_containerd_and_the_first_boot_units() {
    let (_, out) = built();
    let image = out.join("optiplex-2.img");
    let root = format!("{}?offset={}", image.display(), partitions(&image)[2].start);
    let stat = |path: &str| -> String {
        let out = run_tool("debugfs", &["-R", &format!("stat {path}"), &root]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for (path, mode) in [
        ("/usr/local/bin/kubeadm", "0755"),
        ("/usr/local/bin/kubelet", "0755"),
        ("/usr/local/bin/kubectl", "0755"),
        ("/usr/local/bin/crictl", "0755"),
        ("/usr/local/bin/containerd", "0755"),
        ("/usr/local/sbin/runc", "0755"),
        ("/opt/cni/bin/bridge", "0755"),
        ("/usr/local/share/kubestick/addons/flannel.yaml", "0644"),
        ("/usr/local/share/kubestick/manifests/cert-manager.yaml", "0644"),
        ("/etc/systemd/system/kubestick-prepare.service", "0644"),
        ("/usr/local/lib/kubestick/prepare", "0755"),
        ("/etc/containerd/config.toml", "0644"),
        ("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", "0644"),
        ("/etc/cloud/cloud.cfg.d/90-kubestick.cfg", "0644"),
    ] {
        let st = stat(path);
        assert!(
            st.contains(&format!("Mode:  {mode}")) && st.contains("User:     0   Group:     0"),
            "{path}:\n{st}"
        );
    }
    for link in [
        "multi-user.target.wants/containerd.service",
        "multi-user.target.wants/kubelet.service",
        "multi-user.target.wants/kubestick-prepare.service",
        "multi-user.target.wants/kubestick-images.service",
        "cloud-init.target.wants/kubestick-report.service",
        "cloud-init.target.wants/kubestick-storage.service",
        "cloud-init.target.wants/kubestick-bootstrap.service",
        "cloud-init.target.wants/kubestick-addons.service",
        "timers.target.wants/kubestick-status.timer",
    ] {
        let st = stat(&format!("/etc/systemd/system/{link}"));
        let unit = link.rsplit('/').next().unwrap();
        assert!(
            st.contains("Type: symlink") && st.contains(&format!("\"../{unit}\"")),
            "{link} is not enabled:\n{st}"
        );
    }
    // Base packages are there too, with their owners.
    assert!(stat("/usr/bin/cloud-init").contains("Type: regular"));
    assert!(stat("/usr/sbin/keepalived").contains("Type: regular"));
    // The node's identity is not baked into the shared base.
    let hostname = run_tool("debugfs", &["-R", "cat /etc/hostname", &root]);
    assert!(String::from_utf8_lossy(&hostname.stdout).trim().is_empty());
}

#[test]
fn node_images_share_the_base_and_differ_only_in_identity() {
    use sha2::Digest as _;
    let (_, out) = built();
    let hash = |image: &Path, start: u64, len: u64| -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(image).unwrap();
        f.seek(SeekFrom::Start(start)).unwrap();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20) as usize]).unwrap();
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize().to_vec()
    };
    let (a, b) = (out.join("optiplex-1.img"), out.join("optiplex-3.img"));
    let (pa, pb) = (partitions(&a), partitions(&b));
    assert_eq!((pa[2].start, pa[2].size), (pb[2].start, pb[2].size));
    assert_eq!(
        hash(&a, pa[0].start, pa[0].size),
        hash(&b, pb[0].start, pb[0].size),
        "ESPs differ"
    );
    // The root filesystems are one base each, plus each node's own bill of materials.
    for (image, part, node) in [(&a, &pa[2], "optiplex-1"), (&b, &pb[2], "optiplex-3")] {
        assert_eq!(
            bom_in_image(image, part.start),
            fs::read(out.join(format!("{node}.cdx.json"))).unwrap(),
            "{} carries another bill of materials than out/{node}.cdx.json",
            image.display()
        );
    }
    assert_ne!(
        hash(&a, pa[1].start, pa[1].size),
        hash(&b, pb[1].start, pb[1].size),
        "CIDATA must differ"
    );
    // SHA256SUMS checks out.
    let status = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stdout));
}

/// No `<node>.img` at its final path.
fn assert_no_images(out: &Path) {
    if let Ok(entries) = fs::read_dir(out) {
        let images: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".img"))
            .collect();
        assert!(images.is_empty(), "images left at their final paths: {images:?}");
    }
}

#[test]
fn a_missing_host_tool_is_named_with_its_package() {
    let s = Scratch::new();
    let empty = s.path("empty-path");
    fs::create_dir(&empty).unwrap();
    let assert = build_cmd(&s, &s.path("cache"), &doubles().join("mirror"))
        .env("PATH", &empty)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("could not find mke2fs, which is required to make the root filesystem")
            && err.contains("apt-get install e2fsprogs"),
        "{err}"
    );
    // mke2fs present but mmdebstrap missing, with nothing cached.
    std::os::unix::fs::symlink("/usr/sbin/mke2fs", empty.join("mke2fs")).unwrap();
    let assert = build_cmd(&s, &s.path("cache"), &doubles().join("mirror"))
        .env("PATH", &empty)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("could not find mmdebstrap") && err.contains("apt-get install mmdebstrap"),
        "{err}"
    );
    assert!(!s.path("out").exists(), "nothing is written before the tools are there");
}

#[test]
fn an_unreachable_debian_mirror_is_reported() {
    let s = Scratch::new();
    let assert = build_cmd(&s, &s.path("cache"), &doubles().join("mirror"))
        .args(["--debian-mirror", "http://127.0.0.1:9/debian"])
        .timeout(std::time::Duration::from_secs(300))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("mmdebstrap failed") && err.contains("http://127.0.0.1:9/debian"),
        "{err}"
    );
    assert_no_images(&s.path("out"));
    assert!(
        fs::read_dir(s.path("cache/rootfs"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tar"))
    );
}

#[test]
fn a_build_records_its_kubernetes_release_with_the_secrets() {
    let (s, _) = built();
    let record = fs::read_to_string(s.path("cluster.secrets/releases.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&record).unwrap();
    let built = parsed["built"].as_array().unwrap();
    assert_eq!(built.len(), 1, "{record}");
    assert_eq!(built[0]["release"].as_str(), Some("1.36.4"), "{record}");
    assert_eq!(mode(&s.path("cluster.secrets/releases.toml")), 0o600);
}

#[test]
fn an_artifact_with_a_wrong_digest_stops_the_build() {
    let s = Scratch::new();
    // A mirror whose kubelet is not the pinned file.
    let mirror = s.path("mirror");
    let status = Command::new("cp")
        .arg("-a")
        .arg(doubles().join("mirror"))
        .arg(&mirror)
        .status()
        .unwrap();
    assert!(status.success());
    let kubelet = mirror.join("dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet");
    fs::write(&kubelet, b"#!/bin/sh\necho tampered\n").unwrap();
    let assert = build_cmd(&s, &s.path("cache"), &mirror).assert().code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("digest mismatch for kubelet") && err.contains("no image was built"),
        "{err}"
    );
    assert_no_images(&s.path("out"));
    // No stick of the release exists, so none is recorded.
    assert!(!s.path("cluster.secrets/releases.toml").exists());
}

#[test]
fn a_full_disk_leaves_no_image() {
    built(); // the base image is cached, so the only writes left are the node images
    let s = Scratch::new();
    let small = s.path("small");
    fs::create_dir(&small).unwrap();
    let out = small.join("out");
    let args: Vec<String> = build_args(&s, &out, &shared_cache(), &doubles().join("mirror"))
        .iter()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let bin = assert_cmd::cargo::cargo_bin("kubestick");
    let script = format!(
        "mount -t tmpfs -o size=64m tmpfs {} && exec {} {}",
        small.display(),
        bin.display(),
        args.join(" ")
    );
    let result = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&result.stderr).into_owned();
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // The tmpfs is gone with the namespace; what matters is what the tool says it left.
    assert!(!err.contains("Built "), "{err}");
}

#[test]
fn ctrl_c_leaves_no_image_at_its_final_path() {
    use std::io::BufRead as _;
    built();
    let s = Scratch::new();
    let out = s.path("out");
    // The build stops inside the first node image, with its `.partial` file half-written, and
    // waits there for the signal: the interruption lands at the same point on every run.
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("kubestick"))
        .args(build_args(&s, &out, &shared_cache(), &doubles().join("mirror")))
        .env("KUBESTICK_TEST_PAUSE_AT", "node-image")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the build ended without reaching the pause point: {said}");
        }
        said.push_str(&line);
        if line.contains("paused at node-image") {
            break;
        }
    }
    let partial = out.join(".optiplex-1.img.partial");
    assert!(
        partial.exists(),
        "paused inside the first image, yet {} is missing",
        partial.display()
    );
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{said}{rest}");
    assert!(rest.contains("interrupted: removed 1 unfinished file"), "{rest}");
    assert_no_images(&out);
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "unfinished files left in out/: {left:?}");
    // The same build, not interrupted, finishes: nothing the signal left in its way.
    build_cmd(&s, &shared_cache(), &doubles().join("mirror"))
        .assert()
        .success();
    assert!(out.join("optiplex-1.img").exists());
}

/// The OCI image layout a node image carries, copied out with debugfs.
fn carried_layout(image: &Path, to: &Path) -> (serde_json::Value, Vec<String>) {
    let root = format!("{}?offset={}", image.display(), partitions(image)[2].start);
    fs::create_dir_all(to).unwrap();
    assert_tool_ok(
        "debugfs",
        &[
            "-R",
            &format!("rdump /usr/local/share/kubestick/images {}", to.display()),
            &root,
        ],
    );
    let names = run_tool("debugfs", &["-R", "cat /usr/local/share/kubestick/images.list", &root]);
    let names = String::from_utf8_lossy(&names.stdout)
        .lines()
        .map(String::from)
        .collect();
    let layout = to.join("images");
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        fs::read_to_string(layout.join("oci-layout")).unwrap().trim(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    // A complete layout: every blob is named by its own sha256, and every descriptor
    // reachable from index.json (manifests, configs, layers) is there.
    let blobs = layout.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(sha256(&fs::read(entry.path()).unwrap()), format!("sha256:{name}"));
    }
    let read = |digest: &str| -> serde_json::Value {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&fs::read(&path).unwrap_or_else(|_| panic!("{digest} is not in the layout"))).unwrap()
    };
    for top in index["manifests"].as_array().unwrap() {
        let m = read(top["digest"].as_str().unwrap());
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            assert!(
                blobs
                    .join(d["digest"].as_str().unwrap().trim_start_matches("sha256:"))
                    .exists()
            );
        }
    }
    (index, names)
}

/// `name` for every image of the doubles' lock that `keep` selects: tag and digest names. A
/// 1.36.4 stick carries its release's images and 1.35.8's kube-proxy and CoreDNS (for a
/// cluster being upgraded from 1.35).
fn lock_names(keep: impl Fn(&toml::Value) -> bool) -> Vec<String> {
    let lock: toml::Value = toml::from_str(&fs::read_to_string(doubles().join("artifacts.lock")).unwrap()).unwrap();
    let carried = |i: &toml::Value| match i.get("kubernetes").and_then(|k| k.as_str()) {
        None | Some("1.36.4") => true,
        Some("1.35.8") => ["kube-proxy", "coredns"].contains(&i["name"].as_str().unwrap()),
        Some(_) => false,
    };
    let mut images: Vec<(String, String)> = lock["image"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| carried(i))
        .filter(|i| keep(i))
        .map(|i| {
            let reference = i["reference"].as_str().unwrap().to_string();
            (reference, i["digest"].as_str().unwrap().to_string())
        })
        .collect();
    // Ordered as kubestick orders them: by registry/repository, then tag.
    images.sort_by(|(a, _), (b, _)| a.rsplit_once(':').cmp(&b.rsplit_once(':')));
    images
        .into_iter()
        .flat_map(|(r, d)| {
            let name = r.rsplit_once(':').unwrap().0.to_string();
            [r, format!("{name}@{d}")]
        })
        .collect()
}

#[test]
fn every_node_carries_its_images_as_an_oci_layout_with_the_registrys_digests() {
    let (s, out) = built();
    let (index, names) = carried_layout(&out.join("optiplex-1.img"), &s.path("layout-1"));
    // Every image the rehearsal cluster runs, under its tag and its digest name.
    assert_eq!(names, lock_names(|_| true));
    let index_names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["io.containerd.image.name"].as_str().unwrap())
        .collect();
    assert_eq!(index_names, names.iter().map(String::as_str).collect::<Vec<_>>());
    // The digest under each name is the lock's pin: the registry's bytes, unchanged.
    for m in index["manifests"].as_array().unwrap() {
        let name = m["annotations"]["io.containerd.image.name"].as_str().unwrap();
        if let Some((_, digest)) = name.split_once('@') {
            assert_eq!(m["digest"].as_str().unwrap(), digest);
        }
    }
}

#[test]
fn workers_carry_no_control_plane_images() {
    let s = Scratch::new();
    let toml = s.path("cluster.toml");
    let mut text = fs::read_to_string(repo().join("qemu-tests/cluster.toml")).unwrap();
    text.push_str(
        "\n[[nodes]]\nname = \"worker-1\"\nrole = \"worker\"\nip = \"10.77.0.31\"\nmac = \"52:54:00:77:00:31\"\ndisk = \"/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE4\"\n",
    );
    fs::write(&toml, text).unwrap();
    build_cmd(&s, &shared_cache(), &doubles().join("mirror"))
        .timeout(std::time::Duration::from_secs(1200))
        .assert()
        .success();
    let control_plane_only = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"];
    let (_, worker) = carried_layout(&s.path("out/worker-1.img"), &s.path("layout-w"));
    assert_eq!(
        worker,
        lock_names(|i| !control_plane_only.contains(&i["name"].as_str().unwrap()))
    );
    let (_, cp) = carried_layout(&s.path("out/optiplex-2.img"), &s.path("layout-cp"));
    assert_eq!(cp, lock_names(|_| true));
    assert!(cp.iter().any(|n| n.starts_with("registry.k8s.io/kube-apiserver:")));
}

/// /usr/share/kubestick/bom.cdx.json from the root filesystem at `offset` in `image`.
fn bom_in_image(image: &Path, offset: u64) -> Vec<u8> {
    let root = format!("{}?offset={offset}", image.display());
    let out = run_tool("debugfs", &["-R", "cat /usr/share/kubestick/bom.cdx.json", &root]);
    assert!(out.status.success());
    let stat = run_tool("debugfs", &["-R", "stat /usr/share/kubestick/bom.cdx.json", &root]);
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("Mode:  0644") && stat.contains("User:     0   Group:     0"),
        "{stat}"
    );
    out.stdout
}

/// Where two files first differ in each 1 MiB block that differs, named by partition:
/// "root +0x400 (image offset 0x9100400)".
fn differing_places(a: &Path, b: &Path) -> Vec<String> {
    use std::io::Read as _;
    let parts = partitions(a);
    let place = |offset: u64| -> String {
        let (name, start) = parts
            .iter()
            .find(|p| (p.start..p.start + p.size).contains(&offset))
            .map_or(("outside any partition (GPT)", 0), |p| (p.name.as_str(), p.start));
        format!("{name} +{:#x} (image offset {offset:#x})", offset - start)
    };
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut places = Vec::new();
    let mut offset = 0u64;
    loop {
        let na = fa.read(&mut ba).unwrap();
        let nb = fb.read(&mut bb[..na.max(1)]).unwrap();
        if na == 0 && nb == 0 {
            break;
        }
        if na != nb {
            places.push(format!("the sizes differ from {}", place(offset)));
            break;
        }
        if let Some(i) = (0..na).find(|&i| ba[i] != bb[i]) {
            places.push(place(offset + i as u64));
        }
        offset += na as u64;
    }
    places
}

/// A new cache at `cache` holding the shared Debian base tarball (hard-linked) and no base
/// image yet, so a build with it makes the images afresh.
fn cache_with_shared_base(cache: &Path) {
    built(); // the shared cache holds the Debian base by now
    fs::create_dir_all(cache).unwrap();
    let status = Command::new("cp")
        .arg("-al")
        .arg(shared_cache().join("rootfs"))
        .arg(cache.join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `build` with the given environment and umask into `out`, with a fresh cache.
fn fresh_build(s: &Scratch, out: &Path, cache: &Path, tz: &str, umask: &str) {
    cache_with_shared_base(cache);
    let args = build_args(s, out, cache, &doubles().join("mirror"));
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(assert_cmd::cargo::cargo_bin("kubestick"))
        .args(&args)
        .arg("--state")
        .arg(s.path("cluster.secrets"))
        .env("TZ", tz)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn two_builds_of_the_same_inputs_are_byte_identical() {
    let s = Scratch::new();
    fresh_build(&s, &s.path("out-a"), &s.path("cache-a"), "UTC", "022");
    // Every input touched, another time zone and umask, another output directory and cache.
    let status = Command::new("find")
        .arg(s.path("cluster.toml"))
        .arg(s.path("cluster.secrets"))
        .arg(doubles())
        .args(["-exec", "touch", "{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
    fresh_build(&s, &s.path("out-b"), &s.path("cache-b"), "Asia/Tokyo", "077");

    let sums = |dir: &str| fs::read_to_string(s.path(dir).join("SHA256SUMS")).unwrap();
    let mut report = Vec::new();
    for line in sums("out-a").lines() {
        let name = line.split_whitespace().nth(1).unwrap();
        let places = differing_places(&s.path("out-a").join(name), &s.path("out-b").join(name));
        if !places.is_empty() {
            report.push(format!("{name} differs at: {}", places.join(", ")));
        }
    }
    assert!(
        report.is_empty(),
        "the builds are not reproducible:\n{}",
        report.join("\n")
    );
    assert_eq!(sums("out-a"), sums("out-b"));
    for node in ["optiplex-1", "optiplex-2", "optiplex-3"] {
        let bom = |dir: &str| fs::read(s.path(dir).join(format!("{node}.cdx.json"))).unwrap();
        assert_eq!(bom("out-a"), bom("out-b"), "{node}.cdx.json differs");
    }
}

#[test]
fn the_differing_places_are_named_by_partition_and_offset() {
    // The comparison the reproducibility test relies on, shown to find a flipped byte.
    let (_, out) = built();
    let s = Scratch::new();
    let copy = s.path("copy.img");
    fs::copy(out.join("optiplex-1.img"), &copy).unwrap();
    let root = &partitions(&copy)[2];
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut f = fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.seek(SeekFrom::Start(root.start + 0x438)).unwrap();
        f.write_all(&[0xff]).unwrap();
    }
    assert_eq!(
        differing_places(&out.join("optiplex-1.img"), &copy),
        [format!("root +0x438 (image offset {:#x})", root.start + 0x438)]
    );
}

/// scripts/validate-bom.py (CycloneDX's Python library, strict schema) on `files`.
fn validate_bom(files: &[PathBuf]) -> (bool, String) {
    let python = repo().join("target/test-tools/venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make test-deps`", python.display());
    let out = Command::new(python)
        .arg(repo().join("scripts/validate-bom.py"))
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_image_has_a_valid_cyclonedx_bill_of_materials() {
    let (_, out) = built();
    let boms: Vec<PathBuf> = ["optiplex-1", "optiplex-2", "optiplex-3"]
        .iter()
        .map(|n| out.join(format!("{n}.cdx.json")))
        .collect();
    let (ok, said) = validate_bom(&boms);
    assert!(ok, "{said}");
    assert_eq!(said.matches("valid CycloneDX 1.6").count(), 3, "{said}");

    let bom: serde_json::Value = serde_json::from_slice(&fs::read(&boms[0]).unwrap()).unwrap();
    let components = bom["components"].as_array().unwrap();
    let find = |r: &str| components.iter().find(|c| c["bom-ref"] == r);
    let prop = |name: &str| -> Vec<String> {
        bom["metadata"]["properties"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == name)
            .map(|p| p["value"].as_str().unwrap().to_string())
            .collect()
    };
    // Debian packages, as dpkg has them in the image.
    let kernel = find("package:linux-image-amd64:amd64").expect("the kernel package");
    assert!(
        kernel["purl"]
            .as_str()
            .unwrap()
            .starts_with("pkg:deb/debian/linux-image-amd64@"),
        "{kernel}"
    );
    let packages = components.iter().filter(|c| c["type"] == "library").count();
    assert!(packages > 100, "only {packages} packages");
    // Every artifact and image of the lock the node carries, with the lock's digests.
    let lock_path = doubles().join("artifacts.lock");
    let lock: toml::Value = toml::from_str(&fs::read_to_string(&lock_path).unwrap()).unwrap();
    for a in lock["artifact"].as_array().unwrap() {
        if a.get("kubernetes").is_some_and(|k| k.as_str() != Some("1.36.4")) {
            continue;
        }
        let name = a["name"].as_str().unwrap();
        let c = find(&format!("artifact:{name}")).unwrap_or_else(|| panic!("artifact {name} missing"));
        assert_eq!(c["externalReferences"][0]["url"].as_str(), a["url"].as_str(), "{name}");
        if let Some(digest) = a.get("digest").and_then(|d| d.as_str()) {
            assert_eq!(
                c["hashes"][0]["content"].as_str().unwrap(),
                digest.split_once(':').unwrap().1,
                "{name}"
            );
        }
    }
    for i in lock["image"].as_array().unwrap() {
        if i.get("kubernetes").is_some_and(|k| k.as_str() != Some("1.36.4")) {
            continue;
        }
        let name = i["name"].as_str().unwrap();
        let c = find(&format!("image:{name}")).unwrap_or_else(|| panic!("image {name} missing from the BOM"));
        assert_eq!(c["type"], "container");
        assert!(c["purl"].as_str().unwrap().starts_with("pkg:oci/"), "{c}");
        assert_eq!(
            c["hashes"][0]["content"].as_str(),
            i["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")),
            "{name}"
        );
    }
    // Rendered files by path and hash.
    let node_env = find("file:/etc/kubestick/node.env").expect("node.env");
    assert_eq!(
        format!("sha256:{}", node_env["hashes"][0]["content"].as_str().unwrap()),
        sha256(&fs::read(out.join("optiplex-1/files/etc/kubestick/node.env")).unwrap())
    );
    // What the build recorded.
    assert_eq!(
        bom["metadata"]["tools"]["components"][0]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        prop("kubestick:lock-sha256"),
        [sha256(&fs::read(&lock_path).unwrap()).trim_start_matches("sha256:")]
    );
    let sources = prop("kubestick:base-source");
    assert!(sources.iter().any(|s| s.ends_with("/debian trixie")), "{sources:?}");
    assert!(sources.iter().any(|s| s.ends_with(" trixie-updates")), "{sources:?}");
    assert!(
        sources.iter().any(|s| s.ends_with("/debian-security trixie-security")),
        "{sources:?}"
    );
}

#[test]
fn the_bom_validator_catches_a_broken_document() {
    let (_, out) = built();
    let s = Scratch::new();
    let good: serde_json::Value = serde_json::from_slice(&fs::read(out.join("optiplex-1.cdx.json")).unwrap()).unwrap();
    let mut wrong_type = good.clone();
    wrong_type["components"][0]["type"] = "disk-image".into();
    let mut no_name = good.clone();
    no_name["components"][3].as_object_mut().unwrap().remove("name");
    let mut bad_hash = good;
    bad_hash["components"][0]["hashes"] = serde_json::json!([{ "alg": "SHA-256", "content": "not hex" }]);
    for (file, doc, says) in [
        ("wrong-type.json", wrong_type, "/components/0/type"),
        ("no-name.json", no_name, "'name' is a required property"),
        ("bad-hash.json", bad_hash, "/components/0/hashes/0/content"),
    ] {
        let path = s.path(file);
        fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let (ok, said) = validate_bom(&[path]);
        assert!(!ok, "{file} passed:\n{said}");
        assert!(
            said.contains("INVALID CycloneDX 1.6") && said.contains(says),
            "{file}:\n{said}"
        );
    }
}

#[test]
fn diff_says_what_changed_between_two_builds() {
    let (_, out) = built();
    let s = Scratch::new();
    let img = out.join("optiplex-1.img");
    // The same build, from the image and from its BOM: exit 0.
    kubestick()
        .arg("diff")
        .arg(&img)
        .arg(out.join("optiplex-1.cdx.json"))
        .assert()
        .code(0)
        .stdout(predicates::str::contains("are the same"));
    // A newer build: a security update of one package and a changed rendered file.
    let mut newer: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("optiplex-1.cdx.json")).unwrap()).unwrap();
    for c in newer["components"].as_array_mut().unwrap() {
        if c["bom-ref"] == "package:libzstd1:amd64" {
            c["version"] = "1.5.7+dfsg-1+deb13u9".into();
        }
        if c["bom-ref"] == "file:/etc/kubestick/node.env" {
            c["hashes"][0]["content"] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into();
        }
    }
    let newer_path = s.path("newer.cdx.json");
    fs::write(&newer_path, serde_json::to_vec(&newer).unwrap()).unwrap();
    let assert = kubestick().arg("diff").arg(&img).arg(&newer_path).assert().code(1);
    let table = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["CHANGE", "KIND", "NAME", "OLD", "NEW"], "{table}");
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["changed", "package", "libzstd1:amd64"] && r[4] == "1.5.7+dfsg-1+deb13u9"),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["changed", "file", "/etc/kubestick/node.env"] && r[4] == "sha256:0123456789ab"),
        "{table}"
    );
    assert!(table.contains("2 changes from"), "{table}");
    // A stick of another release: the change is put in words.
    let mut older = newer.clone();
    for p in older["metadata"]["properties"].as_array_mut().unwrap() {
        if p["name"] == "kubestick:kubernetes" {
            p["value"] = "1.35.8".into();
        }
    }
    let older_path = s.path("older.cdx.json");
    fs::write(&older_path, serde_json::to_vec(&older).unwrap()).unwrap();
    let assert = kubestick().arg("diff").arg(&older_path).arg(&img).assert().code(1);
    let text = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        text.contains("changed  build") && text.contains("Kubernetes 1.35.8 → 1.36.4, a minor upgrade"),
        "{text}"
    );
    // Another node's image: its identity and its own files differ.
    let assert = kubestick()
        .arg("diff")
        .arg(&img)
        .arg(out.join("optiplex-2.img"))
        .assert()
        .code(1);
    let table = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        table.contains("changed  build") && table.contains("optiplex-2"),
        "{table}"
    );
    assert!(table.contains("CIDATA:/user-data"), "{table}");
    // Something that is neither: exit 2, saying so.
    kubestick()
        .arg("diff")
        .arg(&img)
        .arg(out.join("SHA256SUMS"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("neither a bill of materials"));
}

#[test]
fn source_date_epoch_sets_every_time_in_the_images() {
    let s = Scratch::new();
    let cache = s.path("cache");
    cache_with_shared_base(&cache);
    build_cmd(&s, &cache, &doubles().join("mirror"))
        .env("SOURCE_DATE_EPOCH", "not-a-date")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("SOURCE_DATE_EPOCH=\"not-a-date\""));
    build_cmd(&s, &cache, &doubles().join("mirror"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .timeout(std::time::Duration::from_secs(1200))
        .assert()
        .success();
    let out = s.path("out");
    let bom: serde_json::Value = serde_json::from_slice(&fs::read(out.join("optiplex-1.cdx.json")).unwrap()).unwrap();
    assert_eq!(bom["metadata"]["timestamp"], "2023-11-14T22:13:20Z");
    let image = out.join("optiplex-1.img");
    let parts = partitions(&image);
    let root = format!("{}?offset={}", image.display(), parts[2].start);
    // A base file (clamped), an added one, and the superblock: all at the epoch.
    for path in [
        "/usr/bin/cloud-init",
        "/usr/local/bin/kubeadm",
        "/usr/share/kubestick/bom.cdx.json",
    ] {
        let stat =
            String::from_utf8_lossy(&run_tool("debugfs", &["-R", &format!("stat {path}"), &root]).stdout).into_owned();
        assert!(stat.contains("mtime: 0x6553f100"), "{path}:\n{stat}");
    }
    let sb = run_tool("debugfs", &["-R", "stats", &root]);
    let sb = String::from_utf8_lossy(&sb.stdout).into_owned() + &String::from_utf8_lossy(&sb.stderr);
    assert!(
        sb.contains("Filesystem created:       Tue Nov 14 22:13:20 2023"),
        "{sb}"
    );
    // FAT entries: mtools lists the ESP's files with the epoch's date.
    let esp = s.path("esp.img");
    extract(&image, &parts[0], &esp);
    let listing = run_tool("mdir", &["-i", esp.to_str().unwrap(), "::/"]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("2023-11-14"), "{listing}");
}

#[test]
fn refresh_base_builds_the_debian_base_again_and_leaves_the_old_one_until_done() {
    use std::os::unix::fs::MetadataExt as _;
    let s = Scratch::new();
    let cache = s.path("cache");
    cache_with_shared_base(&cache);
    // The base this kubestick builds is the newest one in the cache (older kubesticks' keys
    // may be there too).
    let newest = fs::read_dir(cache.join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let tarball = || newest.clone();
    let (shared_path, before) = (tarball(), fs::metadata(tarball()).unwrap().ino());
    let assert = build_cmd(&s, &cache, &doubles().join("mirror"))
        .arg("--refresh-base")
        .timeout(std::time::Duration::from_secs(1800))
        .assert()
        .success();
    let _ = assert;
    // A new tarball under the same key (the inputs did not change), the shared one untouched.
    assert_eq!(tarball(), shared_path);
    assert_ne!(fs::metadata(tarball()).unwrap().ino(), before);
    let shared = shared_cache().join("rootfs").join(shared_path.file_name().unwrap());
    assert_eq!(fs::metadata(shared).unwrap().ino(), before);
    // The images were made from it, with a bill of materials naming the security archive.
    let bom = fs::read_to_string(s.path("out/optiplex-1.cdx.json")).unwrap();
    assert!(bom.contains("trixie-security"), "{bom}");
}

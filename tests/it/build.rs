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
    assert_eq!(
        hash(&a, pa[2].start, pa[2].size),
        hash(&b, pb[2].start, pb[2].size),
        "root filesystems differ"
    );
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

/// `name` for every image of the doubles' lock that `keep` selects: tag and digest names.
fn lock_names(keep: impl Fn(&toml::Value) -> bool) -> Vec<String> {
    let lock: toml::Value = toml::from_str(&fs::read_to_string(doubles().join("artifacts.lock")).unwrap()).unwrap();
    let mut images: Vec<(String, String)> = lock["image"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("kubernetes").is_none_or(|k| k.as_str() == Some("1.36.4")))
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

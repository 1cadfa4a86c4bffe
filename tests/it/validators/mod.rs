//! The rendered files, checked by the real tools that will read them (or the closest
//! thing available offline). `make test-deps` installs them; see scripts/validators.md.
//! Each validator also gets a broken input, to prove it would catch a mistake.

pub mod addons;
pub mod kubeadm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

const EXAMPLES: [&str; 2] = ["homelab", "five-nodes"];

/// The Debian trixie tree with the versions that run on the nodes (cloud-init 25.x,
/// keepalived, systemd), made by scripts/test-deps.sh.
fn tree() -> PathBuf {
    let t = repo().join("target/test-tools/trixie");
    assert!(
        t.join("usr/bin/cloud-init").exists(),
        "{} is missing: run `make test-deps` (as root)",
        t.display()
    );
    t
}

/// A private directory inside the tree's /tmp, removed on drop; `inside` is its path as
/// seen from within the chroot.
struct TreeTmp {
    dir: tempfile::TempDir,
}

impl TreeTmp {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kst.")
            .tempdir_in(tree().join("tmp"))
            .unwrap();
        TreeTmp { dir }
    }
    fn put(&self, name: &str, contents: &[u8], mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.dir.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self.inside(name)
    }
    fn inside(&self, name: &str) -> String {
        format!("/tmp/{}/{name}", self.dir.path().file_name().unwrap().to_string_lossy())
    }
}

/// Output of a command as one string, and whether it exited 0.
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; `make test-deps` installs it"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn cloud_init_schema(kind: &str, contents: &str) -> (bool, String) {
    let t = TreeTmp::new();
    let path = t.put("config", contents.as_bytes(), 0o644);
    output(Command::new("chroot").arg(tree()).args([
        "cloud-init",
        "schema",
        "--schema-type",
        kind,
        "--config-file",
        &path,
    ]))
}

fn each_node(mut f: impl FnMut(&str, &Path)) {
    for example in EXAMPLES {
        let (_s, out) = render_example(example);
        let mut nodes: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("ignition.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        nodes.sort();
        assert!(nodes.len() >= 3);
        for node in nodes {
            f(&format!("{example}/{node}"), &out.join(&node));
        }
    }
}

#[test]
fn cloud_init_accepts_every_user_data_and_network_config() {
    each_node(|name, dir| {
        for (kind, file) in [("cloud-config", "user-data"), ("network-config", "network-config")] {
            let text = fs::read_to_string(dir.join("cloud-init").join(file)).unwrap();
            let (ok, out) = cloud_init_schema(kind, &text);
            assert!(ok && out.contains("Valid schema"), "{name} {file}:\n{out}");
        }
    });
    // The same check refuses a mistake of the kind a template could make.
    let (_s, out) = render_example("homelab");
    let user_data = fs::read_to_string(out.join("optiplex-1/cloud-init/user-data")).unwrap();
    let (ok, msg) = cloud_init_schema(
        "cloud-config",
        &user_data.replace("manage_etc_hosts", "manage_etc_host"),
    );
    assert!(!ok && msg.contains("manage_etc_host"), "{msg}");
    let net = fs::read_to_string(out.join("optiplex-1/cloud-init/network-config")).unwrap();
    let (ok, msg) = cloud_init_schema("network-config", &net.replace("set-name", "set-nmae"));
    assert!(!ok, "{msg}");
}

#[test]
fn ignition_validate_accepts_every_config() {
    each_node(|name, dir| {
        let (ok, out) = output(Command::new("ignition-validate").arg(dir.join("ignition.json")));
        assert!(ok && out.is_empty(), "{name}:\n{out}");
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("ignition.json")).unwrap()).unwrap();
        assert_eq!(config["ignition"]["version"], "3.3.0");
        let paths: Vec<&str> = config["storage"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        for p in [
            "/etc/hostname",
            "/etc/kubestick/kubeadm-join.yaml",
            "/etc/kubestick/ca.crt",
            "/etc/containerd/config.toml",
        ] {
            assert!(paths.contains(&p), "{name}: {p} not in {paths:?}");
        }
    });
    let s = Scratch::new();
    let bad = s.write(
        "bad.ign",
        r#"{"ignition":{"version":"3.3.0"},"passwd":{"users":[{"name":"kube","sshAuthorisedKeys":[]}]}}"#,
    );
    let (_, out) = output(Command::new("ignition-validate").arg(bad));
    assert!(out.contains("Unused key sshAuthorisedKeys"), "{out}");
}

/// Builds a root with systemd's own units (from the tree) plus kubestick's common files.
fn verify_units(common: &Path, units: &[&str]) -> (bool, String) {
    let t = TreeTmp::new();
    let root = t.dir.path().join("root");
    fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let (ok, out) = output(
        Command::new("cp")
            .arg("-al")
            .arg(tree().join("usr/lib/systemd/system"))
            .arg(root.join("usr/lib/systemd/")),
    );
    assert!(ok, "{out}");
    let (ok, out) = output(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", common.display()))
            .arg(&root),
    );
    assert!(ok, "{out}");
    output(
        Command::new("chroot")
            .arg(tree())
            .args(["systemd-analyze", "verify", "--man=no", "--generators=no"])
            .arg(format!("--root={}", t.inside("root")))
            .args(units),
    )
}

#[test]
fn systemd_analyze_verifies_every_unit() {
    let (_s, out) = render_example("homelab");
    let common = out.join("common/files");
    let units: Vec<String> = fs::read_dir(common.join("etc/systemd/system"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!units.is_empty());
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let (ok, msg) = verify_units(&common, &names);
    assert!(ok && msg.is_empty(), "{names:?}:\n{msg}");
    // A typo in a unit is caught.
    let unit = common.join("etc/systemd/system/kubestick-prepare.service");
    fs::write(
        &unit,
        fs::read_to_string(&unit).unwrap().replace("ExecStart=", "ExecStrat="),
    )
    .unwrap();
    let (ok, msg) = verify_units(&common, &["kubestick-prepare.service"]);
    assert!(!ok && msg.contains("ExecStrat"), "{msg}");
}

/// overlays/ units start binaries that come from artifacts.lock; stand-ins at their paths
/// let systemd-analyze check everything else.
#[test]
fn systemd_analyze_verifies_the_overlay_units() {
    let s = Scratch::new();
    let root = s.path("root");
    let (ok, out) = output(Command::new("cp").arg("-a").arg(repo().join("overlays")).arg(&root));
    assert!(ok, "{out}");
    let (_s, rendered) = render_example("homelab");
    let (ok, out) = output(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", rendered.join("common/files").display()))
            .arg(&root),
    );
    assert!(ok, "{out}");
    for bin in ["usr/local/bin/kubelet", "usr/local/bin/containerd"] {
        let p = root.join(bin);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let units: Vec<String> = fs::read_dir(root.join("etc/systemd/system"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".service"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(units.len() >= 4, "{units:?}");
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let (ok, msg) = verify_units(&root, &names);
    assert!(ok && msg.is_empty(), "{names:?}:\n{msg}");
    let scripts: Vec<PathBuf> = files_below(&repo().join("overlays"))
        .into_iter()
        .map(|rel| repo().join("overlays").join(rel))
        .filter(|p| fs::read_to_string(p).is_ok_and(|t| t.starts_with("#!")))
        .collect();
    assert!(!scripts.is_empty());
    let (ok, out) = output(
        Command::new("shellcheck")
            .args(["--norc", "-x", "-S", "style", "-f", "gcc"])
            .args(&scripts),
    );
    assert!(ok && out.is_empty(), "{out}");
}

#[test]
fn shellcheck_passes_every_script() {
    each_node(|name, dir| {
        let mut scripts: Vec<PathBuf> = Vec::new();
        for root in [dir.join("files"), dir.parent().unwrap().join("common/files")] {
            for rel in files_below(&root) {
                let p = root.join(&rel);
                if fs::read_to_string(&p).is_ok_and(|t| t.starts_with("#!")) {
                    scripts.push(p);
                }
            }
        }
        assert!(scripts.iter().any(|p| p.ends_with("prepare")), "{name}: {scripts:?}");
        let (ok, out) = output(
            Command::new("shellcheck")
                .args(["--norc", "-x", "-S", "style", "-f", "gcc"])
                .args(&scripts),
        );
        assert!(ok && out.is_empty(), "{name}:\n{out}");
    });
}

/// `keepalived --config-test` in a private network namespace that has the `lan0` the
/// configuration names, with the check scripts it references.
fn keepalived_test(node_dir: &Path) -> (bool, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let t = TreeTmp::new();
    fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut conf = fs::read_to_string(node_dir.join("files/etc/keepalived/keepalived.conf")).unwrap();
    for check in ["check-apiserver", "check-ingress"] {
        let script = node_dir.join("files/usr/local/lib/kubestick").join(check);
        if script.exists() {
            let inside = t.put(check, &fs::read(&script).unwrap(), 0o755);
            conf = conf.replace(&format!("/usr/local/lib/kubestick/{check}"), &inside);
        }
    }
    let conf_path = t.put("keepalived.conf", conf.as_bytes(), 0o644);
    output(
        Command::new("unshare")
            .args(["--net", "sh", "-c"])
            .arg("ip link add lan0 type veth peer name lan0-peer && ip link set lan0 up && exec chroot \"$1\" keepalived --config-test -f \"$2\"")
            .arg("sh")
            .arg(tree())
            .arg(conf_path),
    )
}

#[test]
fn keepalived_accepts_every_control_plane_config() {
    let mut checked = 0;
    each_node(|name, dir| {
        if dir.join("files/etc/keepalived/keepalived.conf").exists() {
            let (ok, out) = keepalived_test(dir);
            assert!(ok && out.is_empty(), "{name}:\n{out}");
            checked += 1;
        } else {
            assert!(name.contains("worker"), "{name} has no keepalived.conf");
        }
    });
    assert_eq!(checked, 6);
    let (_s, out) = render_example("homelab");
    let conf = out.join("optiplex-1/files/etc/keepalived/keepalived.conf");
    fs::write(
        &conf,
        fs::read_to_string(&conf)
            .unwrap()
            .replace("advert_int", "advert_intervall"),
    )
    .unwrap();
    let (ok, msg) = keepalived_test(&out.join("optiplex-1"));
    assert!(!ok && msg.contains("advert_intervall"), "{msg}");
}

#[test]
fn kubeadm_configs_pass_the_v1beta4_schema_check() {
    each_node(|name, dir| {
        let join = fs::read_to_string(dir.join("files/etc/kubestick/kubeadm-join.yaml")).unwrap();
        assert_eq!(
            kubeadm::check(&join),
            Ok(vec!["JoinConfiguration".to_string()]),
            "{name}"
        );
        let init = dir.join("files/etc/kubestick/kubeadm-init.yaml");
        if init.exists() {
            let kinds = kubeadm::check(&fs::read_to_string(init).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(kinds, kubeadm::INIT_KINDS);
        }
    });
}

#[test]
fn containerd_uses_systemd_cgroups_and_the_pinned_pause_image() {
    let (_s, out) = render_example("homelab");
    let text = fs::read_to_string(out.join("common/files/etc/containerd/config.toml")).unwrap();
    let config: toml::Table = text.parse().unwrap();
    assert_eq!(config["version"].as_integer(), Some(3));
    let runtime = &config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"];
    assert_eq!(runtime["options"]["SystemdCgroup"].as_bool(), Some(true));
    assert_eq!(
        config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
        Some("registry.k8s.io/pause:3.10.2@sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4")
    );
}

//! One test per class of mistake in cluster.toml: each must exit 2, name the file, the
//! line:column and the field, say how to fix it, and write nothing.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Runs `render` on `toml`, expecting rejection; returns stderr. Checks nothing was written.
fn rejected(toml: &str) -> String {
    let s = Scratch::new();
    let file = s.write("cluster.toml", toml);
    let out = s.path("out");
    let assert = render(&file, &out).code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(!out.exists(), "output written despite bad input:\n{stderr}");
    assert!(
        !s.path("cluster.secrets").exists(),
        "secrets created despite bad input:\n{stderr}"
    );
    // `check` agrees.
    kubestick().arg("check").arg(&file).assert().code(2);
    stderr
}

fn homelab_with(from: &str, to: &str) -> String {
    let text = example("homelab");
    assert!(text.contains(from), "example does not contain {from:?}");
    text.replacen(from, to, 1)
}

/// Asserts one diagnostic mentions all of `parts` and points at `line:col`.
#[track_caller]
fn assert_diag(stderr: &str, line_col: &str, parts: &[&str]) {
    assert!(
        stderr.contains(&format!("cluster.toml:{line_col}")),
        "no location {line_col} in:\n{stderr}"
    );
    for p in parts {
        assert!(stderr.contains(p), "{p:?} missing from:\n{stderr}");
    }
    assert!(stderr.contains("help: "), "no help in:\n{stderr}");
}

fn line_of(toml: &str, needle: &str) -> usize {
    toml.lines().position(|l| l.contains(needle)).expect("needle in file") + 1
}

#[test]
fn toml_syntax_error() {
    let toml = homelab_with("name = \"optiplex-2\"", "name = optiplex-2");
    let line = line_of(&toml, "name = optiplex-2");
    let err = rejected(&toml);
    assert_diag(&err, &format!("{line}:8"), &["TOML syntax error"]);
}

#[test]
fn unknown_field_suggests_the_right_one() {
    let toml = homelab_with("mac = \"a4:bb:6d:10:00:02\"", "mca = \"a4:bb:6d:10:00:02\"");
    let line = line_of(&toml, "mca = ");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:1"),
        &["unknown field `mca`", "nodes[1].mca", "did you mean `mac`?"],
    );
}

#[test]
fn duplicate_node_name() {
    let toml = homelab_with("name = \"optiplex-2\"", "name = \"optiplex-1\"");
    let line = line_of(&toml, "ip = \"192.168.1.22\"") - 2;
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:8"),
        &[
            "node name `optiplex-1` is already used by nodes[0].name",
            "nodes[1].name",
        ],
    );
}

#[test]
fn duplicate_ip() {
    let toml = homelab_with("ip = \"192.168.1.23\"", "ip = \"192.168.1.22\"");
    let line = line_of(&toml, "mac = \"a4:bb:6d:10:00:03\"") - 1;
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:6"),
        &["192.168.1.22 is already used by nodes[1].ip", "nodes[2].ip"],
    );
}

#[test]
fn duplicate_mac() {
    let toml = homelab_with("mac = \"a4:bb:6d:10:00:03\"", "mac = \"A4:BB:6D:10:00:01\"");
    let line = line_of(&toml, "A4:BB:6D");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:7"),
        &["a4:bb:6d:10:00:01 is already used by nodes[0].mac", "nodes[2].mac"],
    );
}

#[test]
fn ip_outside_subnet() {
    let toml = homelab_with("ip = \"192.168.1.22\"", "ip = \"192.168.2.22\"");
    let line = line_of(&toml, "192.168.2.22");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:6"),
        &["192.168.2.22 is outside the node subnet 192.168.1.0/24", "nodes[1].ip"],
    );
}

#[test]
fn vip_equal_to_a_node_ip() {
    let toml = homelab_with("api_vip = \"192.168.1.10\"", "api_vip = \"192.168.1.21\"");
    let line = line_of(&toml, "api_vip = ");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:11"),
        &["192.168.1.21 is already used by nodes[0].ip", "network.api_vip"],
    );
}

#[test]
fn vip_outside_subnet() {
    let toml = homelab_with("api_vip = \"192.168.1.10\"", "api_vip = \"10.0.0.10\"");
    let line = line_of(&toml, "api_vip = ");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:11"),
        &["10.0.0.10 is outside the node subnet 192.168.1.0/24", "network.api_vip"],
    );
}

#[test]
fn overlapping_pod_service_and_lan_cidrs() {
    let toml = homelab_with("service_cidr = \"10.96.0.0/12\"", "service_cidr = \"10.244.128.0/17\"");
    let line = line_of(&toml, "service_cidr = ");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:16"),
        &[
            "10.244.128.0/17 overlaps 10.244.0.0/16 (network.pod_cidr)",
            "network.service_cidr",
        ],
    );

    let toml = homelab_with("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"192.168.0.0/16\"");
    let line = line_of(&toml, "pod_cidr = ");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:12"),
        &[
            "192.168.0.0/16 overlaps 192.168.1.0/24 (network.subnet)",
            "network.pod_cidr",
        ],
    );
}

#[test]
fn even_number_of_control_plane_nodes() {
    let toml = homelab_with(
        "role = \"control-plane\"\nip = \"192.168.1.23\"",
        "role = \"worker\"\nip = \"192.168.1.23\"",
    );
    let line = line_of(&toml, "name = \"optiplex-1\"") - 1;
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:1"),
        &[
            "2 control-plane nodes: etcd needs an odd number",
            "use 1 or 3 control-plane nodes",
        ],
    );
}

#[test]
fn single_control_plane_node_is_allowed_with_a_warning() {
    let toml = example("homelab")
        .replacen(
            "role = \"control-plane\"\nip = \"192.168.1.22\"",
            "role = \"worker\"\nip = \"192.168.1.22\"",
            1,
        )
        .replacen(
            "role = \"control-plane\"\nip = \"192.168.1.23\"",
            "role = \"worker\"\nip = \"192.168.1.23\"",
            1,
        );
    let s = Scratch::new();
    let file = s.write("cluster.toml", &toml);
    let assert = kubestick().arg("check").arg(&file).assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        stderr.contains("warning: one control-plane node is not highly available"),
        "{stderr}"
    );
    assert!(stderr.contains("0 errors, 2 warnings"), "{stderr}");
}

#[test]
fn disk_not_under_by_id() {
    let toml = homelab_with(
        "disk = \"/dev/disk/by-id/ata-ST2000DM008-2FR102_ZFL0A002\"",
        "disk = \"/dev/sdb\"",
    );
    let line = line_of(&toml, "/dev/sdb");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:8"),
        &[
            "`/dev/sdb` is not under /dev/disk/by-id/",
            "nodes[1].disk",
            "ls -l /dev/disk/by-id/",
        ],
    );
}

#[test]
fn disk_naming_a_partition() {
    let toml = homelab_with("ZFL0A002\"", "ZFL0A002-part1\"");
    let line = line_of(&toml, "-part1");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:8"),
        &[
            "names a partition, not a disk",
            "use \"/dev/disk/by-id/ata-ST2000DM008-2FR102_ZFL0A002\"",
        ],
    );
}

#[test]
fn invalid_hostname() {
    let toml = homelab_with("name = \"optiplex-3\"", "name = \"Optiplex_3\"");
    let line = line_of(&toml, "Optiplex_3");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:8"),
        &["`Optiplex_3` is not a valid name", "nodes[2].name", "\"optiplex-3\""],
    );
}

#[test]
fn malformed_mac() {
    let toml = homelab_with("mac = \"a4:bb:6d:10:00:02\"", "mac = \"a4:bb:6d:10:00\"");
    let line = line_of(&toml, "a4:bb:6d:10:00\"");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:7"),
        &["`a4:bb:6d:10:00` is not a MAC address", "nodes[1].mac"],
    );
}

#[test]
fn malformed_ssh_key() {
    let toml = homelab_with(
        "AAAAC3NzaC1lZDI1NTE5AAAAIPrdEbYCih8ZYd5w1Uecy2GsBH3zJmfiXEu+6q9pLHIa",
        "AAAAC3NzaC1lZDI1NTE5AAAAIPrdEbYCih8Z",
    );
    let line = line_of(&toml, "ssh-ed25519");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:3"),
        &["malformed SSH public key", "admin.ssh_authorized_keys[0]"],
    );

    let toml = homelab_with("\"ssh-ed25519 AAAA", "\"-----BEGIN OPENSSH PRIVATE KEY----- AAAA");
    assert!(rejected(&toml).contains("this is a private key"));
}

#[test]
fn unknown_kubernetes_version() {
    let toml = homelab_with("kubernetes_version = \"1.36.4\"", "kubernetes_version = \"1.29.0\"");
    let line = line_of(&toml, "1.29.0");
    let err = rejected(&toml);
    assert_diag(
        &err,
        &format!("{line}:22"),
        &[
            "`1.29.0` is not pinned in artifacts.lock",
            "cluster.kubernetes_version",
            "1.36.4, 1.35.8",
        ],
    );
}

#[test]
fn missing_required_field_points_at_its_table() {
    let toml = homelab_with("ip = \"192.168.1.22\"\n", "");
    let err = rejected(&toml);
    assert!(
        err.contains("missing required field `ip`") && err.contains("nodes[1].ip") && err.contains("add `ip ="),
        "{err}"
    );
}

#[test]
fn wrong_value_type() {
    let toml = homelab_with("replicas = 3", "replicas = \"three\"");
    let line = line_of(&toml, "replicas = ");
    let err = rejected(&toml);
    assert_diag(&err, &format!("{line}:12"), &["invalid type"]);
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let toml = example("homelab")
        .replacen("mac = \"a4:bb:6d:10:00:02\"", "mac = \"zz\"", 1)
        .replacen("ip = \"192.168.1.23\"", "ip = \"192.168.9.23\"", 1)
        .replacen("gateway = ", "gatway = ", 1)
        .replacen("role = \"control-plane\"", "role = \"controlplane\"", 1);
    let err = rejected(&toml);
    for expected in [
        "`zz` is not a MAC address",
        "192.168.9.23 is outside the node subnet",
        "unknown field `gatway`",
        "did you mean `gateway`?",
        "missing required field `gateway`",
        "did you mean \"control-plane\"?",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    assert!(err.contains("cluster.toml: 5 errors"), "{err}");
}

#[test]
fn missing_cluster_file() {
    let s = Scratch::new();
    let assert = kubestick().arg("check").arg(s.path("nope.toml")).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(
        stderr.contains("cannot read cluster file") && stderr.contains("nope.toml"),
        "{stderr}"
    );
}

// --- releases: Kubernetes upgrades one minor release at a time and never goes back ---------

/// The homelab example whose sticks were built with `built` before (its state directory
/// records them), asked for `kubernetes_version = version`. Returns the scratch dir, the
/// cluster file, and the line of the version.
fn homelab_after(built: &[&str], version: &str) -> (Scratch, PathBuf, usize) {
    let s = Scratch::new();
    let toml = homelab_with(
        "kubernetes_version = \"1.36.4\"",
        &format!("kubernetes_version = \"{version}\""),
    );
    let line = line_of(&toml, "kubernetes_version");
    s.example_with_secrets("homelab");
    std::fs::rename(s.path("homelab.secrets"), s.path("cluster.secrets")).unwrap();
    let file = s.write("cluster.toml", &toml);
    let record: String = built
        .iter()
        .map(|r| format!("[[built]]\nrelease = \"{r}\"\nfirst_built = \"2026-01-01T00:00:00Z\"\n"))
        .collect();
    s.write("cluster.secrets/releases.toml", &record);
    (s, file, line)
}

/// `render` and `check` both refuse with exit 2 and write nothing; stderr of `render`.
fn refused_release(s: &Scratch, file: &Path) -> String {
    let out = s.path("out");
    let assert = render(file, &out).code(2);
    assert!(!out.exists(), "output written despite the refusal");
    let check = kubestick().arg("check").arg(file).assert().code(2);
    let check_err = String::from_utf8(check.get_output().stderr.clone()).unwrap();
    assert!(check_err.contains("cluster.kubernetes_version"), "{check_err}");
    String::from_utf8(assert.get_output().stderr.clone()).unwrap()
}

#[test]
fn a_downgrade_is_refused() {
    let (s, file, line) = homelab_after(&["1.35.8", "1.36.4"], "1.35.8");
    let err = refused_release(&s, &file);
    assert_diag(
        &err,
        &format!("{line}:22"),
        &[
            "Kubernetes 1.36.4 → 1.35.8 is a downgrade",
            "built with 1.36.4 before",
            "releases.toml",
            "keep kubernetes_version = \"1.36.4\"",
            "if no node ever booted a 1.36.4 stick, remove its entry",
        ],
    );
}

#[test]
fn skipping_a_minor_release_is_refused_naming_the_one_between() {
    let (s, file, line) = homelab_after(&["1.34.2"], "1.36.4");
    let err = refused_release(&s, &file);
    assert_diag(
        &err,
        &format!("{line}:22"),
        &[
            "Kubernetes 1.34.2 → 1.36.4 skips 1.35",
            "one minor release at a time",
            "build sticks with kubernetes_version = \"1.35.8\" first",
        ],
    );

    // No release of the minor between in the lock: say so, and where to look.
    let (s, file, _) = homelab_after(&["1.33.1"], "1.35.8");
    let err = refused_release(&s, &file);
    assert!(
        err.contains("skips 1.34") && err.contains("this kubestick's lock pins none"),
        "{err}"
    );
}

#[test]
fn the_next_minor_release_and_the_same_one_are_accepted() {
    let (s, file, _) = homelab_after(&["1.35.8"], "1.36.4");
    let out = s.path("out");
    let assert = render(&file, &out).success();
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("note: Kubernetes 1.35.8 → 1.36.4, a minor upgrade") && err.contains("then the workers"),
        "{err}"
    );
    kubestick().arg("check").arg(&file).assert().success();

    let (s, file, _) = homelab_after(&["1.35.8", "1.36.4"], "1.36.4");
    let assert = render(&file, &s.path("out")).success();
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(!err.contains("note: Kubernetes"), "{err}");
}

#[test]
fn a_damaged_release_record_names_the_file() {
    let (s, file, _) = homelab_after(&[], "1.36.4");
    s.write("cluster.secrets/releases.toml", "[[built]]\nrelease = \"latest\"\n");
    let out = s.path("out");
    let assert = render(&file, &out).code(2);
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("releases.toml is damaged") && err.contains("fix:"),
        "{err}"
    );
    assert!(!out.exists());
}

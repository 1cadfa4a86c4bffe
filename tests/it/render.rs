//! `init`, `check` and `render` on the shipped examples.

use std::fs;

use crate::common::*;

#[test]
fn init_prints_the_reference_cluster_which_checks_clean() {
    let assert = kubestick().arg("init").assert().success();
    let printed = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    assert_eq!(printed, example("homelab"));
    let s = Scratch::new();
    let file = s.write("cluster.toml", &printed);
    let assert = kubestick().arg("check").arg(&file).assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("0 errors"), "{stderr}");
}

#[test]
fn check_prints_the_plan() {
    let assert = kubestick()
        .arg("check")
        .arg(repo().join("examples/five-nodes.toml"))
        .assert()
        .success();
    let plan = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    for expected in [
        "5 nodes (3 control plane, 2 workers), 4 with a ceph disk",
        "cp-1             kubeadm init",
        "cp-2             kubeadm join --control-plane via 192.168.1.10:6443",
        "worker-2         kubeadm join via 192.168.1.10:6443",
        "worker-1         worker         192.168.1.31     a4:bb:6d:20:00:11  /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 (never)",
        "worker-2         worker         192.168.1.32     a4:bb:6d:20:00:12  -",
        "192.168.1.10     API virtual IP",
        "192.168.1.11     ingress virtual IP",
        "192.168.1.1      gateway",
    ] {
        assert!(plan.contains(expected), "{expected:?} missing from:\n{plan}");
    }
}

#[test]
fn render_writes_every_node_with_private_modes() {
    let (_s, out) = render_example("five-nodes");
    for node in ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"] {
        let dir = out.join(node);
        for f in [
            "cloud-init/meta-data",
            "cloud-init/user-data",
            "cloud-init/network-config",
            "ignition.json",
        ] {
            assert!(dir.join(f).is_file(), "{node}/{f} missing");
        }
        assert_eq!(mode(&dir), 0o700, "{node}/ must be private");
        assert_eq!(mode(&dir.join("cloud-init/user-data")), 0o600);
        assert_eq!(mode(&dir.join("ignition.json")), 0o600);
        assert_eq!(mode(&dir.join("files/etc/kubestick/kubeadm-join.yaml")), 0o600);
    }
    assert_eq!(mode(&out.join("admin.conf")), 0o600);
    assert!(out.join("cp-1/files/etc/kubestick/kubeadm-init.yaml").is_file());
    assert!(
        !out.join("cp-2/files/etc/kubestick/kubeadm-init.yaml").exists(),
        "only the init node inits"
    );
    assert_eq!(mode(&out.join("cp-2/files/etc/kubernetes/pki/ca.key")), 0o600);
    assert_eq!(mode(&out.join("common/files/usr/local/lib/kubestick/prepare")), 0o755);
    assert!(
        out.join("common/files/etc/systemd/system/kubestick-prepare.service")
            .is_file()
    );
    // Nothing half-written or staged is left behind.
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn worker_files_hold_no_private_key() {
    let (_s, out) = render_example("five-nodes");
    for worker in ["worker-1", "worker-2"] {
        let dir = out.join(worker);
        for rel in files_below(&dir) {
            let text = fs::read_to_string(dir.join(&rel)).unwrap();
            assert!(
                !text.contains("PRIVATE KEY"),
                "{worker}/{} holds a private key",
                rel.display()
            );
            // Also inside the base64 of user-data and the Ignition data URLs.
            for blob in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')) {
                if blob.len() > 40 {
                    use base64::Engine as _;
                    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(blob) {
                        let decoded = String::from_utf8_lossy(&decoded);
                        assert!(
                            !decoded.contains("PRIVATE KEY"),
                            "{worker}/{} carries an encoded private key",
                            rel.display()
                        );
                    }
                }
            }
        }
        assert!(!dir.join("files/etc/kubernetes/pki/ca.key").exists());
        // The CA certificate, to check the API before joining, but not where `kubeadm join`
        // refuses to find one on a worker (the first real worker failed its preflight so).
        assert!(dir.join("files/etc/kubestick/ca.crt").is_file());
        assert!(!dir.join("files/etc/kubernetes/pki").exists());
    }
    // The control-plane nodes do get the CA keys they need to join.
    let cp = fs::read_to_string(out.join("cp-3/cloud-init/user-data")).unwrap();
    assert!(cp.contains("path: /etc/kubernetes/pki/etcd/ca.key"));
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    let s = Scratch::new();
    let toml = s.example_with_secrets("five-nodes");
    let (a, b) = (s.path("a"), s.path("b"));
    render(&toml, &a).success();
    render(&toml, &b).success();
    // Rendering into an existing output replaces it in place, with the same bytes.
    render(&toml, &b).success();
    let files = files_below(&a);
    assert_eq!(files, files_below(&b));
    assert!(files.len() > 60, "{}", files.len());
    for rel in files {
        assert_eq!(
            fs::read(a.join(&rel)).unwrap(),
            fs::read(b.join(&rel)).unwrap(),
            "{} differs",
            rel.display()
        );
    }
}

#[test]
fn kubeadm_configs_point_at_the_vip_with_systemd_cgroups_and_the_pod_cidr() {
    let (_s, out) = render_example("homelab");
    let init = fs::read_to_string(out.join("optiplex-1/files/etc/kubestick/kubeadm-init.yaml")).unwrap();
    let docs = crate::validators::kubeadm::parse_documents(&init);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, crate::validators::kubeadm::INIT_KINDS);
    assert_eq!(docs[1]["controlPlaneEndpoint"], "192.168.1.10:6443");
    assert_eq!(docs[1]["networking"]["podSubnet"], "10.244.0.0/16");
    assert_eq!(docs[2]["cgroupDriver"], "systemd");
    assert_eq!(docs[0]["nodeRegistration"]["taints"], serde_json::json!([]));
    let join = fs::read_to_string(out.join("optiplex-2/files/etc/kubestick/kubeadm-join.yaml")).unwrap();
    let join = &crate::validators::kubeadm::parse_documents(&join)[0];
    assert_eq!(
        join["discovery"]["bootstrapToken"]["apiServerEndpoint"],
        "192.168.1.10:6443"
    );
    assert_eq!(
        join["controlPlane"]["localAPIEndpoint"]["advertiseAddress"],
        "192.168.1.22"
    );
}

#[test]
fn network_config_matches_the_mac_and_sets_the_static_address() {
    let (_s, out) = render_example("homelab");
    let net = fs::read_to_string(out.join("optiplex-2/cloud-init/network-config")).unwrap();
    let doc = crate::validators::kubeadm::parse_documents(&net).remove(0);
    let lan = &doc["network"]["ethernets"]["lan0"];
    assert_eq!(doc["network"]["version"], 2);
    assert_eq!(lan["match"]["macaddress"], "a4:bb:6d:10:00:02");
    assert_eq!(lan["addresses"], serde_json::json!(["192.168.1.22/24"]));
    assert_eq!(lan["routes"][0]["via"], "192.168.1.1");
    let meta = fs::read_to_string(out.join("optiplex-2/cloud-init/meta-data")).unwrap();
    assert!(meta.contains("local-hostname: optiplex-2"), "{meta}");
}

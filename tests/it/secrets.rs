//! The state directory: created once, reused, never silently replaced, and a discovery
//! hash that matches what openssl computes.

use std::fs;
use std::process::Stdio;

use crate::common::*;

#[test]
fn secrets_are_created_once_with_private_modes_and_reused() {
    let s = Scratch::new();
    let file = s.write("cluster.toml", &example("homelab"));
    let out = s.path("out");
    let first = render(&file, &out).success();
    assert!(String::from_utf8_lossy(&first.get_output().stderr).contains("Created the cluster's secrets"));
    let state = s.path("cluster.secrets");
    assert_eq!(mode(&state), 0o700);
    for rel in files_below(&state) {
        assert_eq!(mode(&state.join(&rel)), 0o600, "{}", rel.display());
    }
    let ca = fs::read(state.join("pki/ca.crt")).unwrap();
    let user_data = fs::read(out.join("optiplex-1/cloud-init/user-data")).unwrap();
    let again = render(&file, &out).success();
    assert!(String::from_utf8_lossy(&again.get_output().stderr).contains("Using the cluster's secrets"));
    assert_eq!(fs::read(state.join("pki/ca.crt")).unwrap(), ca);
    assert_eq!(
        fs::read(out.join("optiplex-1/cloud-init/user-data")).unwrap(),
        user_data
    );
}

/// Damages the fixed secrets of a copy of the homelab example, renders, expects exit 2
/// with nothing written, and returns stderr.
fn render_with_damaged_secrets(damage: impl FnOnce(&std::path::Path)) -> String {
    let s = Scratch::new();
    let file = s.example_with_secrets("homelab");
    damage(&s.path("homelab.secrets"));
    let assert = render(&file, &s.path("out")).code(2);
    assert!(!s.path("out").exists());
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn missing_secret_is_an_error_that_says_what_to_do() {
    let err = render_with_damaged_secrets(|dir| fs::remove_file(dir.join("pki/front-proxy-ca.key")).unwrap());
    assert!(err.contains("front-proxy-ca.key is missing"), "{err}");
    assert!(err.contains("restore") && err.contains("brand-new cluster"), "{err}");
}

#[test]
fn missing_secret_is_not_regenerated() {
    let s = Scratch::new();
    let file = s.example_with_secrets("homelab");
    fs::remove_file(s.path("homelab.secrets/pki/front-proxy-ca.key")).unwrap();
    render(&file, &s.path("out")).code(2);
    assert!(!s.path("homelab.secrets/pki/front-proxy-ca.key").exists());
}

#[test]
fn corrupt_secret_is_an_error_that_says_what_to_do() {
    let err = render_with_damaged_secrets(|dir| {
        fs::write(
            dir.join("pki/ca.crt"),
            "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
    });
    assert!(err.contains("pki/ca.crt is damaged"), "{err}");
    // A key that belongs to another certificate is caught too.
    let err = render_with_damaged_secrets(|dir| {
        fs::copy(dir.join("pki/etcd/ca.key"), dir.join("pki/ca.key")).unwrap();
    });
    assert!(
        err.contains("pki/ca.crt is damaged: the private key does not belong to the certificate"),
        "{err}"
    );
    let err = render_with_damaged_secrets(|dir| fs::write(dir.join("bootstrap-token"), "short\n").unwrap());
    assert!(err.contains("bootstrap-token is damaged"), "{err}");
}

/// The hash every join config pins must be what kubeadm's own docs compute with openssl.
#[test]
fn discovery_hash_matches_openssl() {
    let (_s, out) = render_example("homelab");
    let ca = repo().join("tests/fixtures/homelab.secrets/pki/ca.crt");
    let pubkey = std::process::Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&ca)
        .output()
        .expect("openssl is installed by `make test-deps`");
    assert!(pubkey.status.success());
    let mut der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    der.stdin.take().unwrap().write_all(&pubkey.stdout).unwrap();
    let der = der.wait_with_output().unwrap();
    assert!(der.status.success());
    let mut sum = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sum.stdin.take().unwrap().write_all(&der.stdout).unwrap();
    let sum = String::from_utf8(sum.wait_with_output().unwrap().stdout).unwrap();
    let expected = format!("sha256:{}", sum.split_whitespace().next().unwrap());

    for node in ["optiplex-1", "optiplex-2", "optiplex-3"] {
        let join = fs::read_to_string(out.join(node).join("files/etc/kubestick/kubeadm-join.yaml")).unwrap();
        assert!(
            join.contains(&format!("- \"{expected}\"")),
            "{node}: {expected} not pinned in\n{join}"
        );
    }
}

/// The admin kubeconfig points at the VIP and its client certificate chains to the CA.
#[test]
fn admin_kubeconfig_uses_the_vip_and_a_certificate_from_the_cluster_ca() {
    let (s, out) = render_example("homelab");
    let conf = fs::read_to_string(out.join("admin.conf")).unwrap();
    assert!(conf.contains("server: https://192.168.1.10:6443"), "{conf}");
    let field = |name: &str| -> Vec<u8> {
        use base64::Engine as _;
        let line = conf.lines().find(|l| l.trim_start().starts_with(name)).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(line.split(": ").nth(1).unwrap())
            .unwrap()
    };
    let ca = s.write(
        "ca.pem",
        &String::from_utf8(field("certificate-authority-data")).unwrap(),
    );
    let cert = s.write(
        "admin.pem",
        &String::from_utf8(field("client-certificate-data")).unwrap(),
    );
    assert_tool_ok(
        "openssl",
        &["verify", "-CAfile", ca.to_str().unwrap(), cert.to_str().unwrap()],
    );
    let subject = run_tool(
        "openssl",
        &["x509", "-noout", "-subject", "-in", cert.to_str().unwrap()],
    );
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("O = kubeadm:cluster-admins") && subject.contains("CN = kubernetes-admin"),
        "{subject}"
    );
}

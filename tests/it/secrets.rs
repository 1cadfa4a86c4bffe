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

/// openssl's view of the client certificate inside a kubeconfig: subject and end date.
fn kubeconfig_cert(s: &Scratch, kubeconfig: &std::path::Path) -> (String, String) {
    use base64::Engine as _;
    let text = fs::read_to_string(kubeconfig).unwrap();
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .unwrap();
    let pem = s.path("client.crt");
    fs::write(&pem, base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap();
    // Signed by the cluster CA in the state directory.
    assert_tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s.path("homelab.secrets/pki/ca.crt").to_str().unwrap(),
            pem.to_str().unwrap(),
        ],
    );
    let out = run_tool(
        "openssl",
        &["x509", "-noout", "-subject", "-enddate", "-in", pem.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |p: &str| text.lines().find_map(|l| l.strip_prefix(p)).unwrap().to_string();
    (field("subject="), field("notAfter="))
}

fn date_in(days: i64) -> String {
    let out = run_tool("date", &["-u", "-d", &format!("+{days} days"), "+%b %e"]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn kubeconfig_issues_a_new_admin_credential_from_the_ca() {
    let s = Scratch::new();
    let file = s.example_with_secrets("homelab");
    let conf = s.path("fresh/admin.conf");
    let assert = kubestick()
        .args([
            "kubeconfig",
            file.to_str().unwrap(),
            "-o",
            conf.to_str().unwrap(),
            "--validity",
            "20",
        ])
        .assert()
        .success();
    let said = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        said.contains("administrator of homelab at https://192.168.1.10:6443"),
        "{said}"
    );
    assert_eq!(mode(&conf), 0o600);
    let (subject, end) = kubeconfig_cert(&s, &conf);
    assert!(
        subject.contains("O = kubeadm:cluster-admins") && subject.contains("CN = kubernetes-admin"),
        "{subject}"
    );
    // 20 days from now (the day before, had midnight passed within the second it took).
    assert!(end.starts_with(&date_in(20)) || end.starts_with(&date_in(19)), "{end}");
    let text = fs::read_to_string(&conf).unwrap();
    assert!(text.contains("server: https://192.168.1.10:6443"), "{text}");
    // A short credential leaves the state's longer one alone; `check` warns about this one.
    assert!(!s.path("homelab.secrets/pki/admin.crt.old").exists());
    let assert = kubestick()
        .args(["check", file.to_str().unwrap(), "--kubeconfig", conf.to_str().unwrap()])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(out.contains("cluster CA") && out.contains("etcd CA"), "{out}");
    let line = out.lines().find(|l| l.contains("fresh/admin.conf")).unwrap();
    assert!(
        line.contains("days left): issue a new one with `kubestick kubeconfig"),
        "{line}"
    );
}

#[test]
fn a_longer_credential_is_kept_for_later_builds_and_to_stdout() {
    let s = Scratch::new();
    let file = s.example_with_secrets("homelab");
    let assert = kubestick()
        .args(["kubeconfig", file.to_str().unwrap(), "-o", "-", "--validity", "1000"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(stdout.starts_with("apiVersion: v1\nkind: Config\n"), "{stdout}");
    assert!(s.path("homelab.secrets/pki/admin.crt.old").exists());
    // The next render writes the new credential as out/admin.conf.
    render(&file, &s.path("out")).success();
    let (_, end) = kubeconfig_cert(&s, &s.path("out/admin.conf"));
    assert!(
        end.starts_with(&date_in(1000)) || end.starts_with(&date_in(999)),
        "{end}"
    );
}

#[test]
fn kubeconfig_refuses_a_validity_past_the_ca_and_a_cluster_without_secrets() {
    let s = Scratch::new();
    let file = s.example_with_secrets("homelab");
    kubestick()
        .args(["kubeconfig", file.to_str().unwrap(), "--validity", "4000", "-o", "-"])
        .assert()
        .code(2)
        .stderr(predicates::prelude::PredicateBooleanExt::and(
            predicates::str::contains("--validity 4000"),
            predicates::str::contains("the cluster CA ends on"),
        ));
    let bare = s.write("bare.toml", &example("homelab"));
    kubestick()
        .args(["kubeconfig", bare.to_str().unwrap(), "-o", "-"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("bare.secrets does not exist"));
    kubestick()
        .args(["check", bare.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicates::str::contains("Credentials: none yet"));
}

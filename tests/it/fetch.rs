//! `kubestick fetch` and `kubestick lock` against an HTTP server on 127.0.0.1 that
//! misbehaves on purpose: every fault must give one clear error naming the URL, and
//! nothing unverified may reach the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::http_server::{Behavior, Server};

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A lock with one release and the given artifacts: (name, url, digest or None for unpinned).
fn write_lock(s: &Scratch, artifacts: &[(&str, String, Option<String>)]) -> PathBuf {
    let mut text = String::from("# test lock\nformat = 2\n\n[kubernetes.\"1.36.4\"]\n");
    for (name, url, digest) in artifacts {
        text.push_str(&format!(
            "\n[[artifact]]\nname = \"{name}\"\nversion = \"1\"\nkind = \"binary\"\ninstall = \"/usr/local/bin/{name}\"\nurl = \"{url}\"\n"
        ));
        match digest {
            Some(d) => text.push_str(&format!("digest = \"{d}\"\nchecksum_url = \"{url}.sha256\"\n")),
            None => text.push_str("unpinned = \"upstream publishes no digest\"\n"),
        }
        text.push_str("source = \"test\"\n");
    }
    s.write("artifacts.lock", &text)
}

/// `kubestick fetch --kubernetes 1.36.4 --lock LOCK --cache CACHE` with fast retries. The
/// timeout is the product's default: no test here expects it to fire unless it sets its own,
/// and a loaded machine may well stall a local server for a second or two.
fn fetch(s: &Scratch, lock: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = kubestick();
    cmd.args(["fetch", "--kubernetes", "1.36.4", "--retry-delay", "0.05"]);
    if !extra.contains(&"--timeout") {
        cmd.args(["--retries", "2", "--timeout", "30"]);
    }
    cmd.arg("--lock")
        .arg(lock)
        .arg("--cache")
        .arg(s.path("cache"))
        .args(extra)
        .assert()
}

fn cached(s: &Scratch, digest: &str) -> PathBuf {
    s.path("cache").join(digest.replace(':', "/"))
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

#[test]
fn downloads_verifies_caches_and_reuses() {
    let data = body(300_000);
    let server = Server::start(vec![("/kubeadm", Behavior::Ok(data.clone()))]);
    let s = Scratch::new();
    let digest = sha256(&data);
    let lock = write_lock(&s, &[("kubeadm", server.url("/kubeadm"), Some(digest.clone()))]);
    let out = stdout(&fetch(&s, &lock, &[]).success());
    assert!(out.contains("ok kubeadm") && out.contains("downloaded"), "{out}");
    let path = cached(&s, &digest);
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(mode(&path), 0o444);
    assert!(s.path("cache/CACHEDIR.TAG").exists());
    let out = stdout(&fetch(&s, &lock, &[]).success());
    assert!(out.contains("cached"), "{out}");
    assert_eq!(server.requests().len(), 1, "the second run must not download again");
    // --list re-verifies what is there.
    let out = stdout(&fetch(&s, &lock, &["--list"]).success());
    assert!(out.contains("verified") && out.contains("0 missing"), "{out}");
}

#[test]
fn not_found_names_the_url_and_caches_nothing() {
    let server = Server::start(vec![]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("kubeadm", server.url("/nope"), Some(sha256(b"x")))]);
    let err = stderr(&fetch(&s, &lock, &[]).code(1));
    assert!(
        err.contains(&format!("{}: the server answered 404 Not Found", server.url("/nope"))),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    assert!(!cached(&s, &sha256(b"x")).exists());
}

#[test]
fn server_errors_are_retried_until_success() {
    let data = body(10_000);
    let server = Server::start(vec![(
        "/f",
        Behavior::FailThenOk {
            failures: 2,
            status: 500,
            body: data.clone(),
        },
    )]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(sha256(&data)))]);
    fetch(&s, &lock, &[]).success();
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert_eq!(fs::read(cached(&s, &sha256(&data))).unwrap(), data);
}

#[test]
fn persistent_server_errors_give_up_with_the_last_reason() {
    let server = Server::start(vec![("/f", Behavior::Status(503))]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(sha256(b"x")))]);
    let err = stderr(&fetch(&s, &lock, &[]).code(1));
    assert!(
        err.contains(&format!("{}: gave up on f after 3 attempts", server.url("/f"))) && err.contains("503"),
        "{err}"
    );
}

#[test]
fn a_connection_cut_mid_body_is_resumed_with_a_range_request() {
    let data = body(1_000_000);
    let server = Server::start(vec![(
        "/big",
        Behavior::ResetAfter {
            body: data.clone(),
            after: 400_000,
            times: 1,
        },
    )]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("big", server.url("/big"), Some(sha256(&data)))]);
    let out = stdout(&fetch(&s, &lock, &[]).success());
    assert!(out.contains("resumed at"), "{out}");
    let ranges: Vec<Option<u64>> = server.requests().iter().map(|r| r.range).collect();
    assert_eq!(ranges, [None, Some(400_000)]);
    assert_eq!(fs::read(cached(&s, &sha256(&data))).unwrap(), data);
}

#[test]
fn a_server_without_range_support_restarts_from_zero() {
    let data = body(200_000);
    let s = Scratch::new();
    let digest = sha256(&data);
    let server = Server::start(vec![("/f", Behavior::NoRange(data.clone()))]);
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(digest.clone()))]);
    // A previous run left the first half behind.
    fs::create_dir_all(s.path("cache/partial")).unwrap();
    fs::write(
        s.path(&format!("cache/partial/{}", digest.replace(':', "-"))),
        &data[..100_000],
    )
    .unwrap();
    fetch(&s, &lock, &[]).success();
    assert_eq!(server.requests()[0].range, Some(100_000));
    assert_eq!(fs::read(cached(&s, &digest)).unwrap(), data);
}

#[test]
fn a_truncated_body_is_never_cached() {
    let data = body(50_000);
    let server = Server::start(vec![(
        "/f",
        Behavior::Truncate {
            body: data.clone(),
            send: 20_000,
        },
    )]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(sha256(&data)))]);
    let err = stderr(&fetch(&s, &lock, &[]).code(1));
    assert!(err.contains(&server.url("/f")) && err.contains("gave up"), "{err}");
    assert!(!cached(&s, &sha256(&data)).exists());
}

#[test]
fn a_wrong_digest_never_reaches_the_cache() {
    let data = body(5_000);
    let server = Server::start(vec![("/f", Behavior::Ok(data.clone()))]);
    let s = Scratch::new();
    let pinned = sha256(b"what upstream published");
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(pinned.clone()))]);
    let err = stderr(&fetch(&s, &lock, &[]).code(1));
    assert!(
        err.contains(&format!(
            "{}: digest mismatch for f: the lock expects {pinned}, the download is {}",
            server.url("/f"),
            sha256(&data)
        )),
        "{err}"
    );
    assert!(!cached(&s, &pinned).exists() && !cached(&s, &sha256(&data)).exists());
    assert_eq!(
        fs::read_dir(s.path("cache/partial")).unwrap().count(),
        0,
        "the bad download is deleted"
    );
}

#[test]
fn a_slow_server_hits_the_timeout() {
    let data = body(1_000);
    let server = Server::start(vec![(
        "/f",
        Behavior::Slow {
            body: data.clone(),
            delay: Duration::from_secs(30),
        },
    )]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(sha256(&data)))]);
    let start = Instant::now();
    let err = stderr(&fetch(&s, &lock, &["--timeout", "1", "--retries", "1"]).code(1));
    // Two 1 s timeouts and a retry pause: seconds. The bound only has to stay below the
    // server's 30 s delay, to prove the client gave up instead of waiting it out.
    assert!(start.elapsed() < Duration::from_secs(25), "took {:?}", start.elapsed());
    assert!(err.contains(&server.url("/f")) && err.contains("gave up"), "{err}");
    assert!(
        err.to_lowercase().contains("timed out") || err.contains("mid-file"),
        "{err}"
    );
}

#[test]
fn redirects_are_followed() {
    let data = body(2_000);
    let server = Server::start(vec![
        ("/old", Behavior::Redirect("/new".into())),
        ("/new", Behavior::Ok(data.clone())),
    ]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("f", server.url("/old"), Some(sha256(&data)))]);
    fetch(&s, &lock, &[]).success();
    assert_eq!(fs::read(cached(&s, &sha256(&data))).unwrap(), data);
}

#[test]
fn a_mirror_url_replaces_the_upstream_host() {
    let data = body(3_000);
    let server = Server::start(vec![(
        "/dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubeadm",
        Behavior::Ok(data.clone()),
    )]);
    let s = Scratch::new();
    let lock = write_lock(
        &s,
        &[(
            "kubeadm",
            "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubeadm".into(),
            Some(sha256(&data)),
        )],
    );
    fetch(&s, &lock, &["--mirror", &server.base()]).success();
    assert_eq!(fs::read(cached(&s, &sha256(&data))).unwrap(), data);
}

#[test]
fn a_mirror_directory_replaces_the_upstream_host() {
    let data = body(3_000);
    let s = Scratch::new();
    let file = s.path("mirror/dl.k8s.io/release/kubeadm");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &data).unwrap();
    let lock = write_lock(
        &s,
        &[(
            "kubeadm",
            "https://dl.k8s.io/release/kubeadm".into(),
            Some(sha256(&data)),
        )],
    );
    let out = stdout(&fetch(&s, &lock, &["--mirror", s.path("mirror").to_str().unwrap()]).success());
    assert!(out.contains("copied"), "{out}");
    // A mirror with a bad copy is caught like a bad download.
    let other = write_lock(
        &s,
        &[(
            "kubeadm",
            "https://dl.k8s.io/release/kubeadm".into(),
            Some(sha256(b"other")),
        )],
    );
    let err = stderr(&fetch(&s, &other, &["--mirror", s.path("mirror").to_str().unwrap()]).code(1));
    assert!(err.contains("digest mismatch"), "{err}");
}

#[test]
fn offline_uses_only_the_cache_and_names_what_is_missing() {
    let data = body(1_000);
    let server = Server::start(vec![("/a", Behavior::Ok(data.clone()))]);
    let s = Scratch::new();
    let lock = write_lock(
        &s,
        &[
            ("a", server.url("/a"), Some(sha256(&data))),
            ("b", server.url("/b"), Some(sha256(b"b"))),
        ],
    );
    let err = stderr(&fetch(&s, &lock, &["--offline"]).code(1));
    assert!(
        err.contains("2 of the files")
            && err.contains("a is not in the cache")
            && err.contains("b is not in the cache"),
        "{err}"
    );
    assert!(
        err.contains("fix: run `kubestick fetch` once with network access"),
        "{err}"
    );
    assert!(server.requests().is_empty(), "--offline must not touch the network");
    fetch(&s, &lock, &[]).code(1); // fetches a, fails on b (404)
    let err = stderr(&fetch(&s, &lock, &["--offline"]).code(1));
    assert!(
        err.contains("1 of the files") && !err.contains("a is not in the cache"),
        "{err}"
    );
}

#[test]
fn unpinned_files_need_an_opt_in_and_their_digest_is_reported() {
    let data = body(4_000);
    let server = Server::start(vec![("/cert-manager.yaml", Behavior::Ok(data.clone()))]);
    let s = Scratch::new();
    let lock = write_lock(&s, &[("cert-manager.yaml", server.url("/cert-manager.yaml"), None)]);
    let err = stderr(&fetch(&s, &lock, &[]).code(1));
    assert!(
        err.contains("cert-manager.yaml is not pinned: upstream publishes no digest")
            && err.contains("--allow-unpinned"),
        "{err}"
    );
    assert!(server.requests().is_empty());
    let out = stdout(&fetch(&s, &lock, &["--allow-unpinned"]).success());
    assert!(out.contains(&format!("UNPINNED, observed {}", sha256(&data))), "{out}");
    let out = stdout(&fetch(&s, &lock, &["--allow-unpinned", "--offline"]).success());
    assert!(out.contains("cached") && out.contains("UNPINNED"), "{out}");
    // Accepted once, those exact bytes are used again without the flag, and still shown
    // as unpinned; nothing is downloaded again.
    let requests = server.requests().len();
    let out = stdout(&fetch(&s, &lock, &[]).success());
    assert!(out.contains("cached") && out.contains("UNPINNED"), "{out}");
    assert_eq!(server.requests().len(), requests);
}

#[test]
fn a_damaged_cache_entry_is_replaced_not_used() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = body(8_000);
    let server = Server::start(vec![("/f", Behavior::Ok(data.clone()))]);
    let s = Scratch::new();
    let digest = sha256(&data);
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(digest.clone()))]);
    fetch(&s, &lock, &[]).success();
    let path = cached(&s, &digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"bit rot").unwrap();
    let out = stdout(&fetch(&s, &lock, &["--list"]).success());
    assert!(out.contains("CORRUPT"), "{out}");
    fetch(&s, &lock, &[]).success();
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn concurrent_runs_share_one_download() {
    let data = body(2_000_000);
    let server = Server::start(vec![(
        "/f",
        Behavior::Slow {
            body: data.clone(),
            delay: Duration::from_millis(600),
        },
    )]);
    let s = Scratch::new();
    let digest = sha256(&data);
    let lock = write_lock(&s, &[("f", server.url("/f"), Some(digest.clone()))]);
    let spawn = || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("kubestick"))
            .args(["fetch", "--kubernetes", "1.36.4", "--lock"])
            .arg(&lock)
            .arg("--cache")
            .arg(s.path("cache"))
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(spawn);
        let b = scope.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success() && b.status.success(), "{a:?}\n{b:?}");
    assert_eq!(fs::read(cached(&s, &digest)).unwrap(), data);
    assert_eq!(
        server.requests().len(),
        1,
        "the second run waits for the first and reuses its file"
    );
}

#[test]
fn a_malformed_lock_gets_line_and_column() {
    let s = Scratch::new();
    let lock = s.write("artifacts.lock", "format = 2\n[kubernetes.\"1.36.4\"]\n\n[[artifact]]\nname = \"kubeadm\"\nversion = \"1\"\nkind = \"binary\"\ninstall = \"/y\"\nurl = \"https://x/y\"\ndigest = \"sha256:1234\"\nsource = \"s\"\n");
    let err = stderr(&fetch(&s, &lock, &[]).code(2));
    assert!(
        err.contains("artifacts.lock:10:10") && err.contains("hex digits"),
        "{err}"
    );
    let err = stderr(&kubestick().arg("lock").arg("--lock").arg(&lock).assert().code(2));
    assert!(err.contains("artifacts.lock:10:10"), "{err}");
}

#[test]
fn lock_shows_pins_with_their_sources() {
    let out = stdout(&kubestick().args(["lock", "--kubernetes", "1.36.4"]).assert().success());
    assert!(
        out.contains("sha256:10d054585907f2c8bb823c84f6a66b3bd2a474c3d795475f04e9a44f78650fe6"),
        "{out}"
    );
    assert!(
        out.contains("kubespray") && out.contains("rook-crds.yaml") && !out.contains("1.35.8"),
        "{out}"
    );
    let err = stderr(&kubestick().args(["lock", "--kubernetes", "1.20.0"]).assert().code(2));
    assert!(err.contains("Kubernetes 1.20.0 is not pinned"), "{err}");
}

#[test]
fn lock_refresh_compares_with_published_checksums_and_updates_the_file() {
    let same = body(100);
    let changed = body(200);
    let server = Server::start(vec![
        (
            "/same.sha256",
            Behavior::Ok(format!("{}  same\n", &sha256(&same)[7..]).into_bytes()),
        ),
        (
            "/changed.sha256",
            Behavior::Ok(format!("{}\n", &sha256(&changed)[7..]).into_bytes()),
        ),
    ]);
    let s = Scratch::new();
    let lock = write_lock(
        &s,
        &[
            ("same", server.url("/same"), Some(sha256(&same))),
            ("changed", server.url("/changed"), Some(sha256(b"old"))),
        ],
    );
    let out = stdout(
        &kubestick()
            .args(["lock", "--lock"])
            .arg(&lock)
            .arg("refresh")
            .assert()
            .success(),
    );
    assert!(
        out.contains("same       same") && out.contains("CHANGED    changed"),
        "{out}"
    );
    assert!(
        fs::read_to_string(&lock).unwrap().contains(&sha256(b"old")),
        "no --write, no change"
    );
    let err = stderr(&kubestick().args(["lock", "refresh", "--write"]).assert().code(2));
    assert!(err.contains("--write needs the lock file"), "{err}");
    kubestick()
        .args(["lock", "--lock"])
        .arg(&lock)
        .args(["refresh", "--write"])
        .assert()
        .success();
    let text = fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains(&sha256(&changed)) && !text.contains(&sha256(b"old")),
        "{text}"
    );
    assert!(
        text.starts_with("# test lock") && text.contains(&format!("published at {}", server.url("/changed.sha256"))),
        "{text}"
    );
    let out = stdout(
        &kubestick()
            .args(["lock", "--lock"])
            .arg(&lock)
            .arg("refresh")
            .assert()
            .success(),
    );
    assert!(!out.contains("CHANGED"), "{out}");
}

//! Container images: `kubestick fetch` pulling pinned images by digest from a registry the
//! test starts on 127.0.0.1 (token authentication like docker.io's, through
//! `--registry-mirror`) or from a directory in OCI layout, and every fault a registry can
//! produce ending in one clear error with nothing unverified in the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::registry::{Auth, Fault, Registry, TestImage, layout};

/// Layer contents: a few files, one of them shared by every image built with `shared`.
fn files(tag: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("etc/os-release", b"ID=kubestick-test\n".to_vec()),
        ("usr/bin/tool", noise(tag, 200_000)),
    ]
}

/// Bytes gzip cannot shrink, different for each seed.
fn noise(seed: &str, n: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(n + 32);
    let mut block = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < n {
        block = sha2::Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(n);
    out
}

fn image(kind: &str, repository: &str, tag: &str) -> TestImage {
    let own = files(tag);
    let own: Vec<(&str, &[u8])> = own.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let shared: &[(&str, &[u8])] = &[("usr/share/base", &[7u8; 100_000])];
    let layers: &[&[(&str, &[u8])]] = &[shared, &own];
    match kind {
        "multi" => TestImage::multi(repository, tag, layers),
        "docker" => TestImage::docker_v2(repository, tag, layers),
        "no-amd64" => TestImage::without_amd64(repository, tag),
        _ => TestImage::single(repository, tag, layers),
    }
}

/// A lock with one release and `images`: (name, reference, pinned digest or None).
fn write_lock(s: &Scratch, images: &[(&str, String, Option<String>)]) -> PathBuf {
    let mut text = String::from("format = 2\n[kubernetes.\"1.36.4\"]\n");
    for (name, reference, digest) in images {
        text.push_str(&format!(
            "\n[[image]]\nname = \"{name}\"\nreference = \"{reference}\"\nkubernetes = \"1.36.4\"\nsource = \"test\"\n"
        ));
        match digest {
            Some(d) => text.push_str(&format!("digest = \"{d}\"\n")),
            None => text.push_str("unpinned = \"no digest is published\"\n"),
        }
    }
    s.write("artifacts.lock", &text)
}

fn fetch(s: &Scratch, lock: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    kubestick()
        .args([
            "fetch",
            "--kubernetes",
            "1.36.4",
            "--retry-delay",
            "0.05",
            "--retries",
            "2",
        ])
        .arg("--lock")
        .arg(lock)
        .arg("--cache")
        .arg(s.path("cache"))
        .args(extra)
        .timeout(Duration::from_secs(300))
        .assert()
}

fn out(a: &assert_cmd::assert::Assert) -> String {
    let o = a.get_output();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn in_cache(s: &Scratch, digest: &str) -> bool {
    s.path("cache").join(digest.replace(':', "/")).exists()
}

/// Nothing half-written anywhere in the cache: no partial download, no temporary file.
fn no_partials(s: &Scratch) {
    let partial = s.path("cache/partial");
    let left: Vec<_> = fs::read_dir(&partial)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", partial.display());
}

/// `registry.k8s.io/<repository>:<tag>`: the names the lock uses; the mirror serves them.
fn upstream(img: &TestImage) -> String {
    format!("registry.k8s.io/{}:{}", img.repository, img.tag)
}

#[test]
fn images_are_pulled_by_digest_through_a_token_protected_registry() {
    let s = Scratch::new();
    let multi = image("multi", "pause", "3.10.2");
    let single = image("single", "coredns/coredns", "v1.14.2");
    let docker = image("docker", "etcd", "3.6.8-0");
    let registry = Registry::start(&[&multi, &single, &docker], Auth::Token);
    let lock = write_lock(
        &s,
        &[
            ("pause", upstream(&multi), Some(multi.digest().to_string())),
            ("coredns", upstream(&single), Some(single.digest().to_string())),
            ("etcd", upstream(&docker), Some(docker.digest().to_string())),
        ],
    );
    let a = fetch(&s, &lock, &["--registry-mirror", &registry.base()]).success();
    let text = out(&a);
    assert!(text.contains("ok registry.k8s.io/pause:3.10.2"), "{text}");
    // The index, the amd64 manifest, its config and layers are cached; arm64's are not.
    for blob in [multi.top(), &multi.manifest, &multi.config] {
        assert!(in_cache(&s, &blob.digest), "{} missing", blob.digest);
    }
    for layer in multi.layers.iter().chain(&single.layers).chain(&docker.layers) {
        assert!(in_cache(&s, &layer.digest), "layer {} missing", layer.digest);
    }
    for other in &multi.others {
        assert!(
            !in_cache(&s, &other.digest),
            "{} (another platform) was fetched",
            other.digest
        );
        assert_eq!(registry.gets(&other.digest), 0);
    }
    // The layer all three share was downloaded once.
    let shared = &multi.layers[0].digest;
    assert_eq!(
        &single.layers[0].digest, shared,
        "the test images share their first layer"
    );
    assert_eq!(registry.gets(shared), 1, "a shared layer is fetched once");
    // Every request went through the mirror with the upstream registry named, and every
    // content request carried a bearer token.
    let requests = registry.requests();
    for r in requests
        .iter()
        .filter(|r| r.path.contains("/manifests/") || r.path.contains("/blobs/"))
    {
        assert!(r.query.contains("ns=registry.k8s.io"), "{:?} {}", r.path, r.query);
    }
    assert!(
        requests
            .iter()
            .any(|r| r.path.contains("/blobs/") && r.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer "))),
        "no authorised blob request"
    );
    no_partials(&s);

    // --list verifies from the cache; a second fetch transfers nothing.
    let listed = out(&fetch(&s, &lock, &["--list"]).success());
    assert!(
        listed.contains("registry.k8s.io/etcd:3.6.8-0") && listed.contains("verified"),
        "{listed}"
    );
    assert!(listed.contains("0 missing."), "{listed}");
    let before = registry.requests().len();
    let again = out(&fetch(&s, &lock, &["--registry-mirror", &registry.base()]).success());
    assert!(again.contains("cached"), "{again}");
    assert_eq!(registry.requests().len(), before, "a cached image is not fetched again");
    // --offline with everything cached works without any registry.
    drop(registry);
    fetch(&s, &lock, &["--offline"]).success();
}

#[test]
fn an_oci_layout_directory_is_a_mirror_and_a_missing_image_is_named() {
    let s = Scratch::new();
    let a = image("multi", "pause", "3.10.2");
    let b = image("single", "kube-proxy", "v1.36.4");
    let dir = s.path("mirror");
    layout(&[&a], &dir);
    let lock = write_lock(
        &s,
        &[
            ("pause", upstream(&a), Some(a.digest().to_string())),
            ("kube-proxy", upstream(&b), Some(b.digest().to_string())),
        ],
    );
    let failed = fetch(&s, &lock, &["--mirror", dir.to_str().unwrap()]).code(1);
    let text = out(&failed);
    assert!(text.contains("ok registry.k8s.io/pause:3.10.2"), "{text}");
    assert!(
        text.contains("the mirror") && text.contains("registry.k8s.io/kube-proxy:v1.36.4") && text.contains(b.digest()),
        "{text}"
    );
    assert!(!in_cache(&s, b.digest()));
    no_partials(&s);
    // With the image added to the layout, the same command completes.
    layout(&[&a, &b], &dir);
    fetch(&s, &lock, &["--mirror", dir.to_str().unwrap()]).success();
    assert!(in_cache(&s, &b.layers[1].digest));
}

/// Where in an image a fault goes: a function naming the digest.
type At = fn(&TestImage) -> String;

/// One image behind `auth`, `fault` set on `at(image)`; returns the failed fetch's output.
fn fetch_with_fault(
    kind: &str,
    auth: Auth,
    fault: Option<(At, Fault)>,
) -> (Scratch, Registry, TestImage, assert_cmd::assert::Assert) {
    let s = Scratch::new();
    let img = image(kind, "pause", "3.10.2");
    let registry = Registry::start(&[&img], auth);
    if let Some((at, fault)) = fault {
        registry.fault(&at(&img), fault);
    }
    let lock = write_lock(&s, &[("pause", upstream(&img), Some(img.digest().to_string()))]);
    let a = fetch(&s, &lock, &["--registry-mirror", &registry.base()]);
    (s, registry, img, a)
}

fn layer(img: &TestImage) -> String {
    img.layers[1].digest.clone()
}

fn top(img: &TestImage) -> String {
    img.digest().to_string()
}

#[test]
fn a_registry_without_a_token_service_is_a_clear_error() {
    let (s, _r, _img, a) = fetch_with_fault("single", Auth::NoTokenEndpoint, None);
    let text = out(&a.code(1));
    assert!(
        text.contains("401") && text.contains("without a bearer-token challenge"),
        "{text}"
    );
    no_partials(&s);
}

#[test]
fn a_missing_manifest_is_named() {
    let (s, _r, img, a) = fetch_with_fault("single", Auth::Token, Some((top, Fault::NotFound)));
    let text = out(&a.code(1));
    assert!(
        text.contains("has no manifest") && text.contains(img.digest()),
        "{text}"
    );
    assert!(!in_cache(&s, img.digest()));
}

#[test]
fn a_blob_with_wrong_bytes_never_reaches_the_cache() {
    let (s, _r, img, a) = fetch_with_fault("single", Auth::Token, Some((layer, Fault::WrongBytes)));
    let text = out(&a.code(1));
    assert!(
        text.contains("digest mismatch") && text.contains(&layer(&img)),
        "{text}"
    );
    assert!(!in_cache(&s, &layer(&img)));
    no_partials(&s);
}

#[test]
fn a_manifest_with_wrong_bytes_is_refused() {
    let (s, _r, img, a) = fetch_with_fault("multi", Auth::Token, Some((top, Fault::WrongBytes)));
    let text = out(&a.code(1));
    assert!(
        text.contains("digest mismatch") && text.contains(img.digest()),
        "{text}"
    );
    assert!(!in_cache(&s, img.digest()));
}

#[test]
fn a_body_cut_short_once_is_resumed() {
    let (s, registry, img, a) = fetch_with_fault(
        "single",
        Auth::Token,
        Some((layer, Fault::CutShortOnce { after: 5000 })),
    );
    a.success();
    assert!(in_cache(&s, &layer(&img)));
    let ranged = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&layer(&img)))
        .filter_map(|r| r.range)
        .collect::<Vec<_>>();
    assert_eq!(
        ranged,
        ["bytes=5000-"],
        "the second request resumes where the first was cut"
    );
}

#[test]
fn a_body_always_cut_short_gives_up_with_nothing_cached() {
    let (s, _r, img, a) = fetch_with_fault("single", Auth::Token, Some((layer, Fault::CutShort { after: 5000 })));
    let text = out(&a.code(1));
    assert!(text.contains("gave up") && text.contains("3 attempts"), "{text}");
    assert!(!in_cache(&s, &layer(&img)));
}

#[test]
fn rate_limits_and_server_errors_are_retried() {
    let (s, registry, img, a) = fetch_with_fault(
        "single",
        Auth::Token,
        Some((layer, Fault::Status { code: 429, times: 2 })),
    );
    a.success();
    assert!(in_cache(&s, &layer(&img)));
    assert_eq!(registry.gets(&layer(&img)), 3);
    let (_s, _r, _img, a) = fetch_with_fault(
        "single",
        Auth::Token,
        Some((top, Fault::Status { code: 503, times: 1 })),
    );
    a.success();
    let (s, _r, img, a) = fetch_with_fault(
        "single",
        Auth::Token,
        Some((layer, Fault::Status { code: 500, times: 10 })),
    );
    let text = out(&a.code(1));
    assert!(text.contains("gave up") && text.contains("500"), "{text}");
    assert!(!in_cache(&s, &layer(&img)));
}

#[test]
fn an_index_without_linux_amd64_lists_what_it_has() {
    let (_s, _r, _img, a) = fetch_with_fault("no-amd64", Auth::Token, None);
    let text = out(&a.code(1));
    assert!(
        text.contains("no linux/amd64") && text.contains("linux/arm64"),
        "{text}"
    );
}

#[test]
fn a_huge_manifest_is_refused_without_reading_it() {
    let started = Instant::now();
    let (s, _r, img, a) = fetch_with_fault("single", Auth::Token, Some((top, Fault::Huge { bytes: 64 << 30 })));
    let text = out(&a.code(1));
    assert!(text.contains("larger than 4194304 bytes"), "{text}");
    assert!(!in_cache(&s, img.digest()));
    // 64 GiB would take minutes to read even on loopback; refusing takes a moment.
    assert!(started.elapsed() < Duration::from_secs(120), "{:?}", started.elapsed());
}

#[test]
fn an_unpinned_image_needs_the_opt_in_then_its_observed_digest_is_reused() {
    let s = Scratch::new();
    let img = image("multi", "kube-proxy", "v1.36.4");
    let registry = Registry::start(&[&img], Auth::Token);
    let lock = write_lock(&s, &[("kube-proxy", upstream(&img), None)]);
    let refused = out(&fetch(&s, &lock, &["--registry-mirror", &registry.base()]).code(1));
    assert!(
        refused.contains("not pinned") && refused.contains("--allow-unpinned"),
        "{refused}"
    );
    let opted = out(&fetch(&s, &lock, &["--registry-mirror", &registry.base(), "--allow-unpinned"]).success());
    assert!(opted.contains("UNPINNED") && opted.contains(img.digest()), "{opted}");
    // Later runs use the recorded digest without the flag and without the registry.
    drop(registry);
    let later = out(&fetch(&s, &lock, &["--offline"]).success());
    assert!(later.contains(img.digest()), "{later}");
}

#[test]
fn lock_refresh_resolves_tags_and_writes_digests() {
    let s = Scratch::new();
    let pinned = image("single", "pause", "3.10.2");
    let moved = image("multi", "coredns/coredns", "v1.14.2");
    let unpinned = image("single", "kube-proxy", "v1.36.4");
    let registry = Registry::start(&[&pinned, &moved, &unpinned], Auth::Token);
    let stale = "sha256:".to_string() + &"0".repeat(64);
    let lock = write_lock(
        &s,
        &[
            ("pause", upstream(&pinned), Some(pinned.digest().to_string())),
            ("coredns", upstream(&moved), Some(stale.clone())),
            ("kube-proxy", upstream(&unpinned), None),
        ],
    );
    let a = kubestick()
        .args([
            "lock",
            "refresh",
            "--write",
            "--registry-mirror",
            &registry.base(),
            "--lock",
        ])
        .arg(&lock)
        .assert()
        .success();
    let text = out(&a);
    assert!(text.contains("same       registry.k8s.io/pause:3.10.2"), "{text}");
    assert!(
        text.contains("CHANGED    registry.k8s.io/coredns/coredns:v1.14.2"),
        "{text}"
    );
    assert!(text.contains("resolved   registry.k8s.io/kube-proxy:v1.36.4"), "{text}");
    let written = fs::read_to_string(&lock).unwrap();
    assert!(
        written.contains(moved.digest()) && written.contains(unpinned.digest()),
        "{written}"
    );
    assert!(
        !written.contains("unpinned =") && !written.contains(&stale),
        "{written}"
    );
    // The written lock is valid and pins what the registry serves.
    fetch(&s, &lock, &["--registry-mirror", &registry.base()]).success();
}

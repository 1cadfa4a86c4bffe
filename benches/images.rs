//! `make bench`: pull of a 4-layer, 192 MiB container image by digest from a token-protected
//! registry on 127.0.0.1 into a fresh cache, against `skopeo copy` of the same image into
//! an OCI layout in the same run. Both verify every blob's digest.
//! Target: kubestick within 1.2x of skopeo.

#[path = "support.rs"]
mod support;

#[path = "../tests/it/http_server.rs"]
mod http_server;
#[path = "../tests/it/registry.rs"]
mod registry;

use std::process::Command;
use std::time::Instant;

use kubestick::artifacts::cache::Cache;
use kubestick::artifacts::download::{Fetcher, Options};
use kubestick::artifacts::lock::Image;
use kubestick::artifacts::oci::pull::Puller;

const LAYERS: usize = 4;
const LAYER_SIZE: usize = 48 * 1024 * 1024;
const RUNS: usize = 3;
const TARGET: f64 = 1.2;

/// Incompressible bytes (xorshift64 from `seed | 1`), so gzip cannot shrink a layer; the
/// layers' seeds differ in more than their lowest bit, so no two layers are the same blob.
fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size);
    for _ in 0..size / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| noise(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1), LAYER_SIZE))
        .collect();
    let layers: Vec<[(&str, &[u8]); 1]> = files.iter().map(|f| [("payload", f.as_slice())]).collect();
    let layer_refs: Vec<&[(&str, &[u8])]> = layers.iter().map(|l| l.as_slice()).collect();
    let test_image = registry::TestImage::single("bench/payload", "v1", &layer_refs);
    let bytes: u64 = test_image.blobs().iter().map(|b| b.bytes.len() as u64).sum();
    let server = registry::Registry::start(&[&test_image], registry::Auth::Token);
    let reference = format!("{}/bench/payload:v1", server.host());
    let image = Image {
        name: "payload".into(),
        reference: reference.clone(),
        kubernetes: None,
        nodes: Default::default(),
        needs: None,
        digest: Some(test_image.digest().parse().unwrap()),
        unpinned: None,
        source: "bench".into(),
    };

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..RUNS {
        let cache_dir = tmp.path().join(format!("cache-{run}"));
        let cache = Cache::open(&cache_dir).unwrap();
        let fetcher = Fetcher::new(&cache, Options::default()).unwrap();
        let puller = Puller::new(&fetcher).unwrap();
        let start = Instant::now();
        let pulled = puller.pull(&image, &indicatif::ProgressBar::hidden()).unwrap();
        ours.push(start.elapsed());
        assert_eq!(pulled.size(), bytes);
        assert_eq!(pulled.transferred, bytes);
        std::fs::remove_dir_all(&cache_dir).unwrap();

        let out = tmp.path().join(format!("skopeo-{run}"));
        let start = Instant::now();
        let skopeo = Command::new("skopeo")
            .args(["copy", "--quiet", "--insecure-policy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", out.display()))
            .status();
        theirs.push(start.elapsed());
        match skopeo {
            Ok(status) => assert!(status.success(), "skopeo copy failed"),
            Err(_) => {
                eprintln!("skopeo is needed for the comparison (apt-get install skopeo)");
                std::process::exit(1);
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "image pull benchmark: {mib:.0} MiB in {LAYERS} gzip'd layers, token auth, 127.0.0.1, median of {RUNS} runs"
    );
    support::compare(
        mib,
        ("kubestick pull + verify + cache", ours),
        ("skopeo copy to an OCI layout", theirs),
        TARGET,
    );
}

//! `make bench`: fetch + verify of a 200 MiB file from a server on 127.0.0.1 into a fresh
//! cache, against `curl` + `sha256sum` on the same file in the same run.
//! Target: kubestick within 1.2x of curl + sha256sum.

#[path = "support.rs"]
mod support;

#[path = "../tests/it/http_server.rs"]
mod http_server;

use std::process::Command;
use std::time::Instant;

use kubestick::artifacts::cache::Cache;
use kubestick::artifacts::digest::{self, Algorithm};
use kubestick::artifacts::download::{Fetcher, Options};
use kubestick::artifacts::lock::{Artifact, Kind};

const SIZE: usize = 200 * 1024 * 1024;
const RUNS: usize = 3;
const TARGET: f64 = 1.2;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("payload");
    support::write_payload(&file, SIZE);
    let (digest, _) = digest::of_reader(Algorithm::Sha256, std::fs::File::open(&file).unwrap()).unwrap();
    let server = http_server::Server::start(vec![("/payload", http_server::Behavior::OkFile(file.clone()))]);
    let artifact = Artifact {
        name: "payload".into(),
        version: "1".into(),
        kubernetes: None,
        kind: Kind::Binary,
        install: "/usr/local/bin/payload".into(),
        needs: None,
        url: server.url("/payload"),
        size: Some(SIZE as u64),
        digest: Some(digest.clone()),
        unpinned: None,
        checksum_url: None,
        source: "bench".into(),
    };

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..RUNS {
        let cache_dir = tmp.path().join(format!("cache-{run}"));
        let cache = Cache::open(&cache_dir).unwrap();
        let fetcher = Fetcher::new(&cache, Options::default()).unwrap();
        let start = Instant::now();
        let fetched = fetcher.fetch(&artifact, &indicatif::ProgressBar::hidden()).unwrap();
        ours.push(start.elapsed());
        assert_eq!(fetched.digest, digest);
        std::fs::remove_dir_all(&cache_dir).unwrap();

        let out = tmp.path().join(format!("curl-{run}"));
        let start = Instant::now();
        let curl = Command::new("curl")
            .args(["--silent", "--fail", "--output"])
            .arg(&out)
            .arg(server.url("/payload"))
            .status();
        let sum = Command::new("sha256sum").arg(&out).output();
        theirs.push(start.elapsed());
        let (Ok(curl), Ok(sum)) = (curl, sum) else {
            eprintln!("curl and sha256sum are needed for the comparison (apt-get install curl coreutils)");
            std::process::exit(1);
        };
        assert!(curl.success());
        assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&digest.hex));
        std::fs::remove_file(&out).unwrap();
    }
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    println!("fetch benchmark: {mib:.0} MiB from 127.0.0.1, median of {RUNS} runs");
    support::compare(
        mib,
        ("kubestick fetch + verify + cache", ours),
        ("curl + sha256sum", theirs),
        TARGET,
    );
}

//! `make bench`: how long the spec → secrets → render path takes for a generated
//! 100-node cluster (3 control-plane nodes, 97 workers, every node with a disk).
//! Target: rendering under 50 ms. Secrets are made once beforehand, as on every real
//! rebuild after the first.

#[path = "support.rs"]
mod support;
use support::median;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use kubestick::artifacts::lock::Lock;
use kubestick::render::{Renderer, output};
use kubestick::{secrets, spec};

const NODES: usize = 100;
const RUNS: usize = 21;
const TARGET: Duration = Duration::from_millis(50);

fn cluster_toml() -> String {
    let example = include_str!("../examples/homelab.toml");
    let mut toml = example[..example.find("[[nodes]]\nname").unwrap()]
        .replace("192.168.1.0/24", "10.10.0.0/16")
        .replace("\"192.168.1.", "\"10.10.0.");
    for i in 0..NODES {
        let role = if i < 3 { "control-plane" } else { "worker" };
        let _ = write!(
            toml,
            "\n[[nodes]]\nname = \"node-{i:03}\"\nrole = \"{role}\"\nip = \"10.10.1.{}\"\nmac = \"a4:bb:6d:30:00:{:02x}\"\ndisk = \"/dev/disk/by-id/ata-BENCH_{i:03}\"\n",
            i + 10,
            i
        );
    }
    toml
}

fn time<T>(mut f: impl FnMut() -> T) -> Duration {
    let samples = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    median(samples)
}

fn main() {
    let toml = cluster_toml();
    let versions = spec::Releases::pinned(Lock::embedded().kubernetes_versions());
    let tmp = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::load_or_create(&tmp.path().join("bench.secrets"), "homelab").unwrap();
    let cluster = spec::parse(Path::new("bench.toml"), &toml, &versions)
        .expect("generated cluster is valid")
        .cluster;
    let pins = Lock::embedded().pins("1.36.4", |_| None).expect("1.36.4 is pinned");
    let renderer = Renderer::new().unwrap();

    let parse = time(|| spec::parse(Path::new("bench.toml"), &toml, &versions).unwrap().cluster);
    let load_secrets = time(|| secrets::load(&tmp.path().join("bench.secrets")).unwrap());
    let render = time(|| renderer.render(&cluster, &secrets, &pins).unwrap());
    let rendered = renderer.render(&cluster, &secrets, &pins).unwrap();
    let out = tmp.path().join("out");
    let write = time(|| output::write(&rendered, &out).unwrap());
    let bytes: usize = rendered
        .nodes
        .iter()
        .map(|n| n.user_data.len() + n.ignition.len() + n.network_config.len())
        .sum();

    println!("render benchmark: {NODES} nodes, median of {RUNS} runs");
    println!("  parse + validate cluster.toml  {:>8.2} ms", parse.as_secs_f64() * 1e3);
    println!(
        "  load + check secrets           {:>8.2} ms",
        load_secrets.as_secs_f64() * 1e3
    );
    println!(
        "  render all templates           {:>8.2} ms  ({} KiB of cloud-init + Ignition)",
        render.as_secs_f64() * 1e3,
        bytes / 1024
    );
    println!("  write out/ (staged, renamed)   {:>8.2} ms", write.as_secs_f64() * 1e3);
    let total = parse + load_secrets + render;
    let verdict = if total <= TARGET { "within" } else { "OVER" };
    println!(
        "  parse + secrets + render       {:>8.2} ms  {verdict} the {} ms target",
        total.as_secs_f64() * 1e3,
        TARGET.as_millis()
    );
}

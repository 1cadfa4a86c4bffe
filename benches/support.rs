//! Helpers shared by the benchmarks (each includes this file with `#[path]`).
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `size` deterministic, incompressible-looking bytes (xorshift64), so compression or
/// sparse files cannot flatter a measurement.
pub fn write_payload(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..size / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

/// Prints two timings of the same `mib` of work, median of their samples, with throughput,
/// and their ratio against `target` (reported, never asserted).
pub fn compare(mib: f64, ours: (&str, Vec<Duration>), theirs: (&str, Vec<Duration>), target: f64) {
    let (a, b) = (median(ours.1).as_secs_f64(), median(theirs.1).as_secs_f64());
    for (label, secs) in [(ours.0, a), (theirs.0, b)] {
        println!("  {label:<33} {secs:>7.2} s  {:>6.0} MiB/s", mib / secs);
    }
    let ratio = a / b;
    println!(
        "  ratio {ratio:.2}x  ({} the {target}x target)",
        if ratio <= target { "within" } else { "OVER" }
    );
}

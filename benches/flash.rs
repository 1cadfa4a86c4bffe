//! `make bench`: writing and verifying a 512 MiB image onto a regular file on the same
//! filesystem, against `dd bs=4M conv=fsync` followed by `sha256sum` of the copy, in the same
//! run. Target: kubestick within 1.2x.
//!
//! The work is not the same: kubestick hashes the image while writing it, writes its first
//! MiB last, then reads the copy back past the page cache (`O_DIRECT`) and hashes it again;
//! `sha256sum` reads the copy dd just wrote, from the page cache.

#[path = "support.rs"]
mod support;
use support::median;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sha2::Digest as _;

use kubestick::flash::write::{self, Readback};

const SIZE: usize = 512 * 1024 * 1024;
const RUNS: usize = 3;
const TARGET: f64 = 1.2;

fn main() {
    // Beside the build, not in /tmp, which may be a tmpfs: the point is a disk's filesystem.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = tmp.path().join("node.img");
    support::write_payload(&image, SIZE);
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap()));

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut readback = None;
    for run in 0..RUNS {
        let out = tmp.path().join(format!("kubestick-{run}"));
        std::fs::File::create(&out).unwrap();
        let start = Instant::now();
        let written = write::write_and_verify(&image, &out, false).unwrap();
        ours.push(start.elapsed());
        assert_eq!(written.sha256, digest);
        readback = Some(written.readback);
        std::fs::remove_file(&out).unwrap();

        let out = tmp.path().join(format!("dd-{run}"));
        let start = Instant::now();
        let dd = Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=4M", "conv=fsync", "status=none"])
            .status();
        let sum = Command::new("sha256sum").arg(&out).output();
        theirs.push(start.elapsed());
        let (Ok(dd), Ok(sum)) = (dd, sum) else {
            eprintln!("dd and sha256sum are needed for the comparison (apt-get install coreutils)");
            std::process::exit(1);
        };
        assert!(dd.success());
        assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&digest));
        std::fs::remove_file(&out).unwrap();
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = ours.as_secs_f64() / theirs.as_secs_f64();
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    println!(
        "flash benchmark: {mib:.0} MiB onto a file in {}, median of {RUNS} runs",
        Path::new(env!("CARGO_TARGET_TMPDIR")).display()
    );
    println!(
        "  kubestick write + verify ({:<17}) {:>7.2} s  {:>6.0} MiB/s",
        match readback {
            Some(Readback::Direct) => "readback O_DIRECT",
            _ => "readback cached",
        },
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    println!(
        "  dd bs=4M conv=fsync + sha256sum                {:>7.2} s  {:>6.0} MiB/s",
        theirs.as_secs_f64(),
        mib / theirs.as_secs_f64()
    );
    println!(
        "  ratio {ratio:.2}x  ({} the {TARGET}x target)",
        if ratio <= TARGET { "within" } else { "OVER" }
    );
}

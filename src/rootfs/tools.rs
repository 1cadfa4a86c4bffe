//! External programs the build runs, checked before any work starts so that a missing one
//! fails in a second with the package to install, not after a long build.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

/// Finds `program` on PATH, or fails saying what it is for and which package has it.
pub fn require(program: &str, purpose: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "could not find {program}, which is required to {purpose}\n  fix: install it (`apt-get install {package}`, or `scripts/host-deps.sh` as root)"
    )
}

/// mke2fs must read a tarball with `-d` (e2fsprogs 1.47.2 or newer).
pub fn require_mke2fs() -> Result<PathBuf> {
    let path = require("mke2fs", "make the root filesystem", "e2fsprogs")?;
    let out = Command::new(&path).arg("-V").output()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let version: Vec<u32> = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .split('.')
        .map(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0))
        .collect();
    if version < vec![1, 47, 2] {
        bail!(
            "{} is too old ({}): building the root filesystem without root needs e2fsprogs 1.47.2 or newer\n  \
             fix: on Debian 13 `apt-get install e2fsprogs`; on Debian 12 install it from bookworm-backports \
             (`scripts/host-deps.sh` as root does that)",
            path.display(),
            text.lines().next().unwrap_or("unknown version").trim()
        );
    }
    // mke2fs loads libarchive only when it meets a tarball, and then fails late.
    let libarchive = [
        "/usr/lib/x86_64-linux-gnu/libarchive.so.13",
        "/lib/x86_64-linux-gnu/libarchive.so.13",
        "/usr/lib/libarchive.so.13",
    ];
    if !libarchive.iter().any(|p| std::path::Path::new(p).exists()) {
        bail!(
            "mke2fs needs libarchive to read the root filesystem tarball, and it is not installed\n  \
             fix: `apt-get install libarchive13` (or `scripts/host-deps.sh` as root)"
        );
    }
    Ok(path)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

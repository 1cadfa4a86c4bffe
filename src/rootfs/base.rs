//! The Debian trixie base tree, built by mmdebstrap from `rootfs/packages.list` and
//! `rootfs/customize.sh`, packed as a tarball and cached under a key made from every
//! input that affects it: an unchanged base is never rebuilt, a changed one always is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use super::tools;

const PACKAGES: &str = include_str!("../../rootfs/packages.list");
const CUSTOMIZE: &str = include_str!("../../rootfs/customize.sh");
pub const SUITE: &str = "trixie";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Bumped whenever the way the base is built changes in ways the inputs below don't show.
const RECIPE: u32 = 1;

/// dpkg filters: no documentation or translations on an appliance (copyright files stay).
const DPKG_OPTIONS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
];

#[derive(Debug, Clone)]
pub struct BaseSpec {
    pub suite: String,
    pub mirror: String,
    pub packages: Vec<String>,
}

impl BaseSpec {
    pub fn new(mirror: Option<&str>) -> Self {
        let mut packages: Vec<String> = PACKAGES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        packages.sort();
        packages.dedup();
        BaseSpec {
            suite: SUITE.to_string(),
            mirror: mirror.unwrap_or(DEFAULT_MIRROR).trim_end_matches('/').to_string(),
            packages,
        }
    }

    /// Every input, as text: hashed for the cache key and kept beside the cached tarball so
    /// a rebuild can say what changed.
    pub fn manifest(&self) -> String {
        format!(
            "recipe = {RECIPE}\nsuite = {}\nmirror = {}\nvariant = minbase\ndpkg = {}\npackages = {}\ncustomize.sh sha256 = {}\n",
            self.suite,
            self.mirror,
            DPKG_OPTIONS.join(" "),
            self.packages.join(" "),
            hex::encode(Sha256::digest(CUSTOMIZE.as_bytes())),
        )
    }

    pub fn key(&self) -> String {
        hex::encode(Sha256::digest(self.manifest().as_bytes()))[..24].to_string()
    }
}

/// The cached base tarball for `spec`, built first if needed.
pub fn ensure(cache_root: &Path, spec: &BaseSpec, show_progress: bool) -> Result<PathBuf> {
    let dir = cache_root.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = spec.key();
    let tarball = dir.join(format!("base-{key}.tar"));
    if tarball.exists() {
        return Ok(tarball);
    }
    // One build per key at a time; a second run waits and then finds the tarball.
    let _lock = crate::fsx::lock_exclusive(&dir.join(format!("base-{key}.lock")))?;
    if tarball.exists() {
        return Ok(tarball);
    }
    tools::require("mmdebstrap", "build the Debian base image", "mmdebstrap")?;
    let previous = newest_manifest(&dir);
    let spinner = crate::progress::spinner(
        show_progress,
        format!(
            "building the Debian {} base with mmdebstrap (a few minutes)",
            spec.suite
        ),
    );
    if let Some((path, old)) = previous {
        spinner.println(format!(
            "base image inputs changed since {}; rebuilding:\n{}",
            path.display(),
            diff(&old, &spec.manifest())
        ));
    }

    let staging = tempfile::Builder::new()
        .prefix(".base-")
        .suffix(".partial")
        .tempdir_in(&dir)?;
    let _unfinished = crate::interrupt::track(staging.path());
    let out = staging.path().join("base.tar");
    let hook = staging.path().join("customize.sh");
    fs::write(&hook, CUSTOMIZE)?;
    let log_path = dir.join(format!("base-{key}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg(if tools::is_root() {
            "--mode=root"
        } else {
            "--mode=unshare"
        })
        .arg(format!("--include={}", spec.packages.join(",")));
    for opt in DPKG_OPTIONS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(&spec.suite)
        .arg(&out)
        .arg(format!("deb {} {} main", spec.mirror, spec.suite))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = cmd.status().context("running mmdebstrap")?;
    spinner.finish_and_clear();
    if !status.success() {
        let tail = tail_lines(&log_path, 15);
        let hint = if tail.contains("Failed to fetch")
            || tail.contains("Could not resolve")
            || tail.contains("Connection refused")
        {
            format!(
                "\n  the Debian mirror {} could not be reached; pass --debian-mirror URL for a mirror you can reach",
                spec.mirror
            )
        } else {
            String::new()
        };
        bail!(
            "mmdebstrap failed ({status}); the last lines of {}:\n{tail}{hint}",
            log_path.display()
        );
    }
    fs::write(staging.path().join("manifest"), spec.manifest())?;
    fs::rename(
        staging.path().join("manifest"),
        dir.join(format!("base-{key}.manifest")),
    )?;
    fs::rename(&out, &tarball).with_context(|| format!("moving the base into the cache at {}", tarball.display()))?;
    Ok(tarball)
}

fn newest_manifest(dir: &Path) -> Option<(PathBuf, String)> {
    let mut manifests: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    manifests.sort();
    let (_, path) = manifests.pop()?;
    let text = fs::read_to_string(&path).ok()?;
    Some((path, text))
}

/// The lines of `new` that differ from `old`, marked.
fn diff(old: &str, new: &str) -> String {
    let old: Vec<&str> = old.lines().collect();
    new.lines()
        .filter(|l| !old.contains(l))
        .map(|l| format!("  now: {l}\n"))
        .collect()
}

fn tail_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_every_input() {
        let a = BaseSpec::new(None);
        assert_eq!(a.key(), BaseSpec::new(None).key());
        assert_ne!(a.key(), BaseSpec::new(Some("http://mirror.lan/debian")).key());
        let mut b = a.clone();
        b.packages.push("vim".into());
        assert_ne!(a.key(), b.key());
        assert!(a.packages.contains(&"linux-image-amd64".to_string()));
        assert!(a.manifest().contains("customize.sh sha256 = "));
    }
}

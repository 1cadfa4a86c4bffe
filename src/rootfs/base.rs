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
/// Debian publishes security fixes in a separate archive, beside the main one on its mirrors.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// Bumped whenever the way the base is built changes in ways the inputs below don't show.
const RECIPE: u32 = 2;

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
    pub security_mirror: String,
    pub packages: Vec<String>,
}

/// One apt source of the base: where its packages came from (recorded in the BOM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub mirror: String,
    pub suite: String,
}

impl BaseSpec {
    /// The base from `mirror` (Debian's own by default) and the security archive: with no
    /// `security_mirror` given, the one beside `mirror` when it ends in `/debian` (how Debian
    /// mirrors and apt caches lay them out), else Debian's.
    pub fn new(mirror: Option<&str>, security_mirror: Option<&str>) -> Self {
        let mut packages: Vec<String> = PACKAGES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        packages.sort();
        packages.dedup();
        let mirror = mirror.unwrap_or(DEFAULT_MIRROR).trim_end_matches('/').to_string();
        let security_mirror = match security_mirror {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => match mirror.strip_suffix("/debian") {
                Some(prefix) => format!("{prefix}/debian-security"),
                None => DEFAULT_SECURITY_MIRROR.to_string(),
            },
        };
        BaseSpec {
            suite: SUITE.to_string(),
            mirror,
            security_mirror,
            packages,
        }
    }

    /// The release, its stable updates and its security fixes: a rebuilt base carries the
    /// fixes published by the day it was built.
    pub fn sources(&self) -> Vec<Source> {
        vec![
            Source {
                mirror: self.mirror.clone(),
                suite: self.suite.clone(),
            },
            Source {
                mirror: self.mirror.clone(),
                suite: format!("{}-updates", self.suite),
            },
            Source {
                mirror: self.security_mirror.clone(),
                suite: format!("{}-security", self.suite),
            },
        ]
    }

    fn apt_lines(&self) -> Vec<String> {
        self.sources()
            .iter()
            .map(|s| format!("deb {} {} main", s.mirror, s.suite))
            .collect()
    }

    /// Every input, as text: hashed for the cache key and kept beside the cached tarball so
    /// a rebuild can say what changed.
    pub fn manifest(&self) -> String {
        format!(
            "recipe = {RECIPE}\nsuite = {}\nsources = {}\nvariant = minbase\ndpkg = {}\npackages = {}\ncustomize.sh sha256 = {}\n",
            self.suite,
            self.apt_lines().join(" | "),
            DPKG_OPTIONS.join(" "),
            self.packages.join(" "),
            hex::encode(Sha256::digest(CUSTOMIZE.as_bytes())),
        )
    }

    pub fn key(&self) -> String {
        hex::encode(Sha256::digest(self.manifest().as_bytes()))[..24].to_string()
    }
}

/// The cached base tarball for `spec`, built first if needed, or built again when `refresh`
/// (the packages the mirrors publish today, security fixes included), replacing the cached
/// one only once the new one is complete.
pub fn ensure(cache_root: &Path, spec: &BaseSpec, refresh: bool, show_progress: bool) -> Result<PathBuf> {
    let dir = cache_root.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = spec.key();
    let tarball = dir.join(format!("base-{key}.tar"));
    if tarball.exists() && !refresh {
        return Ok(tarball);
    }
    // One build per key at a time; a second run waits and then finds the tarball.
    let _lock = crate::fsx::lock_exclusive(&dir.join(format!("base-{key}.lock")))?;
    if tarball.exists() && !refresh {
        return Ok(tarball);
    }
    tools::require("mmdebstrap", "build the Debian base image", "mmdebstrap")?;
    let previous = newest_manifest(&dir).filter(|_| !tarball.exists());
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
        .args(spec.apt_lines())
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
                "\n  the Debian mirror {} or {} could not be reached; pass --debian-mirror URL (and \
                 --debian-security-mirror URL) for mirrors you can reach",
                spec.mirror, spec.security_mirror
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

/// One installed Debian package, as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// The packages dpkg lists as installed in the base tarball, sorted by name.
pub fn installed_packages(base_tar: &Path) -> Result<Vec<Package>> {
    const STATUS: &str = "var/lib/dpkg/status";
    let files = super::compose::read_files(base_tar, |p| p == STATUS)
        .with_context(|| format!("reading the package list of {}", base_tar.display()))?;
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&files[STATUS])))
}

fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut packages: Vec<Package> = text
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            };
            // Removed packages whose configuration files remain are not on the image.
            let installed = field("Status")?.ends_with(" installed");
            installed.then_some(Package {
                name: field("Package")?,
                version: field("Version")?,
                architecture: field("Architecture")?,
            })
        })
        .collect();
    packages.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    packages
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
        let a = BaseSpec::new(None, None);
        assert_eq!(a.key(), BaseSpec::new(None, None).key());
        assert_ne!(a.key(), BaseSpec::new(Some("http://mirror.lan/debian"), None).key());
        assert_ne!(
            a.key(),
            BaseSpec::new(None, Some("http://security.debian.org/debian-security")).key()
        );
        let mut b = a.clone();
        b.packages.push("vim".into());
        assert_ne!(a.key(), b.key());
        assert!(a.packages.contains(&"linux-image-amd64".to_string()));
        assert!(a.manifest().contains("customize.sh sha256 = "));
    }

    #[test]
    fn dpkg_status_lists_only_installed_packages() {
        let status = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.3.dfsg+really1.3.1-1+b1\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                      Package: adduser\nStatus: install ok installed\nPriority: important\nArchitecture: all\nVersion: 3.152\n";
        let p = parse_dpkg_status(status);
        assert_eq!(
            p.iter()
                .map(|p| (p.name.as_str(), p.version.as_str(), p.architecture.as_str()))
                .collect::<Vec<_>>(),
            [
                ("adduser", "3.152", "all"),
                ("zlib1g", "1:1.3.dfsg+really1.3.1-1+b1", "amd64")
            ]
        );
    }

    #[test]
    fn the_base_takes_updates_and_security_fixes() {
        let lines = BaseSpec::new(None, None).apt_lines();
        assert_eq!(
            lines,
            [
                "deb http://deb.debian.org/debian trixie main",
                "deb http://deb.debian.org/debian trixie-updates main",
                "deb http://deb.debian.org/debian-security trixie-security main",
            ]
        );
        // An apt cache in front of Debian serves the security archive beside the main one.
        let cached = BaseSpec::new(Some("http://cache.lan:3142/debian/"), None);
        assert_eq!(cached.security_mirror, "http://cache.lan:3142/debian-security");
        let other = BaseSpec::new(Some("http://mirror.lan/pub/deb"), None);
        assert_eq!(other.security_mirror, DEFAULT_SECURITY_MIRROR);
    }
}

//! The content-addressed download cache:
//!
//! ```text
//! $XDG_CACHE_HOME/kubestick/          (or ~/.cache/kubestick/)
//!   CACHEDIR.TAG                      backup tools skip the directory
//!   sha256/<hex>, sha512/<hex>        verified files, read-only, named by their digest
//!   partial/<alg>-<hex>               downloads in progress (resumable)
//!   locks/<alg>-<hex>.lock            one writer per digest across processes
//!   observed/<sha256 of url>          digest seen for an unpinned URL (opted in)
//! ```
//!
//! A file only ever enters `sha256/` by rename after its digest matched, so a reader sees
//! either nothing or a verified file; concurrent runs serialise per digest on the lock.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::Digest as _;

use super::digest::{self, Digest};

const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by kubestick.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a look into the cache found for one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Verified {
        path: PathBuf,
        size: u64,
    },
    /// Present but its bytes no longer match: never used, replaced on the next fetch.
    Corrupt {
        path: PathBuf,
        actual: Digest,
    },
    Missing,
}

impl Cache {
    /// `$XDG_CACHE_HOME/kubestick`, else `~/.cache/kubestick`.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("kubestick"));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("cannot find a cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache DIR")?;
        Ok(PathBuf::from(home).join(".cache/kubestick"))
    }

    pub fn open(root: &Path) -> Result<Cache> {
        for sub in ["sha256", "sha512", "partial", "locks", "observed"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating cache directory {}", root.join(sub).display()))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            crate::fsx::write_atomic(&tag, TAG.as_bytes(), crate::fsx::PUBLIC_MODE)?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// The cache at `root` if it exists, without creating anything (for read-only uses).
    pub fn existing(root: &Path) -> Option<Cache> {
        root.join("sha256").is_dir().then(|| Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join(d.algorithm.as_str()).join(&d.hex)
    }

    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("partial")
            .join(format!("{}-{}", d.algorithm.as_str(), d.hex))
    }

    /// Blocks until this process is the only one writing `d`; released when dropped.
    pub fn lock(&self, d: &Digest) -> Result<File> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}-{}.lock", d.algorithm.as_str(), d.hex));
        crate::fsx::lock_exclusive(&path)
    }

    /// Re-hashes a cached file, so a damaged cache is noticed, never used.
    pub fn check(&self, d: &Digest) -> Result<Entry> {
        let path = self.path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Missing),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let (actual, size) = digest::of_reader(d.algorithm, std::io::BufReader::with_capacity(digest::BUFFER, file))
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(if &actual == d {
            Entry::Verified { path, size }
        } else {
            Entry::Corrupt { path, actual }
        })
    }

    /// Moves a fully verified partial download into place, read-only.
    pub fn commit(&self, partial: &Path, d: &Digest) -> Result<PathBuf> {
        let file = File::open(partial).with_context(|| format!("opening {}", partial.display()))?;
        file.sync_all()
            .with_context(|| format!("flushing {}", partial.display()))?;
        fs::set_permissions(partial, fs::Permissions::from_mode(0o444))?;
        let path = self.path(d);
        fs::rename(partial, &path).with_context(|| format!("moving {} into the cache", partial.display()))?;
        Ok(path)
    }

    /// Removes a damaged entry (read-only files need their mode relaxed on some systems).
    pub fn evict(&self, d: &Digest) -> Result<()> {
        let path = self.path(d);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing damaged cache entry {}", path.display())),
        }
    }

    fn observed_path(&self, url: &str) -> PathBuf {
        self.root
            .join("observed")
            .join(hex::encode(sha2::Sha256::digest(url.as_bytes())))
    }

    /// The digest recorded for an unpinned URL the user opted in to.
    pub fn observed(&self, url: &str) -> Option<Digest> {
        fs::read_to_string(self.observed_path(url))
            .ok()?
            .lines()
            .next()?
            .parse()
            .ok()
    }

    pub fn record_observed(&self, url: &str, d: &Digest) -> Result<()> {
        crate::fsx::write_atomic(
            &self.observed_path(url),
            format!("{d}\n{url}\n").as_bytes(),
            crate::fsx::PUBLIC_MODE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_check_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("c")).unwrap();
        assert!(tmp.path().join("c/CACHEDIR.TAG").exists());
        let (d, _) = digest::of_reader(digest::Algorithm::Sha256, &b"hello"[..]).unwrap();
        assert_eq!(cache.check(&d).unwrap(), Entry::Missing);
        fs::write(cache.partial_path(&d), b"hello").unwrap();
        let path = cache.commit(&cache.partial_path(&d), &d).unwrap();
        assert_eq!(
            cache.check(&d).unwrap(),
            Entry::Verified {
                path: path.clone(),
                size: 5
            }
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"jello").unwrap();
        assert!(matches!(cache.check(&d).unwrap(), Entry::Corrupt { .. }));
        cache.evict(&d).unwrap();
        assert_eq!(cache.check(&d).unwrap(), Entry::Missing);
    }
}

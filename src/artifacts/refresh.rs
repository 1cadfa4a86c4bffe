//! `kubestick lock refresh`: compares every pin that has a `checksum_url` with the
//! checksum file upstream publishes, and with `--write` updates the lock in place (the
//! file's comments and layout are kept). For maintainers with network access.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use reqwest::blocking::Client;

use super::digest::{Algorithm, Digest};
use super::download::{Location, Mirror, locate};
use super::lock::{Artifact, Lock};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Same,
    Changed {
        published: Digest,
    },
    Unavailable {
        reason: String,
    },
    /// No `checksum_url`: pinned from a computed source (a git blob), nothing to compare.
    NotPublished,
}

/// Finds `file_name`'s digest in a checksum file: a bare hex digest, `sha256sum` output
/// (`<hex>  name` or `<hex> *name`), or BSD style (`SHA256 (name) = <hex>`).
pub fn parse_checksum_file(text: &str, file_name: &str) -> Option<Digest> {
    let to_digest = |hex: &str| -> Option<Digest> {
        let algorithm = match hex.len() {
            64 => Algorithm::Sha256,
            128 => Algorithm::Sha512,
            _ => return None,
        };
        format!("{}:{hex}", algorithm.as_str()).parse().ok()
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if let [only] = lines.as_slice()
        && !only.contains(char::is_whitespace)
    {
        return to_digest(only);
    }
    lines.iter().find_map(|line| {
        if let Some((left, hex)) = line.split_once(") = ") {
            let name = left.split_once(" (")?.1;
            return (name == file_name).then(|| to_digest(hex.trim())).flatten();
        }
        let mut parts = line.split_whitespace();
        let hex = parts.next()?;
        let name = parts.next()?.trim_start_matches('*');
        let name = name.rsplit('/').next().unwrap_or(name);
        (name == file_name).then(|| to_digest(hex)).flatten()
    })
}

pub fn check_all(lock: &Lock, mirror: Option<&Mirror>, timeout: std::time::Duration) -> Result<Vec<(usize, Check)>> {
    let client = super::download::http_client(timeout)?;
    Ok(lock
        .artifacts
        .iter()
        .enumerate()
        .map(|(i, a)| (i, check_one(&client, a, mirror)))
        .collect())
}

fn check_one(client: &Client, artifact: &Artifact, mirror: Option<&Mirror>) -> Check {
    let Some(url) = &artifact.checksum_url else {
        return Check::NotPublished;
    };
    let text = match locate(url, mirror) {
        Location::File(path) => std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display())),
        Location::Url(url) => client
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .map_err(|e| format!("{url}: {e}")),
    };
    let text = match text {
        Ok(t) => t,
        Err(reason) => return Check::Unavailable { reason },
    };
    match parse_checksum_file(&text, artifact.file_name()) {
        None => Check::Unavailable {
            reason: format!("{url} lists no digest for {}", artifact.file_name()),
        },
        Some(published) if Some(&published) == artifact.digest.as_ref() => Check::Same,
        Some(published) => Check::Changed { published },
    }
}

/// Resolves every image's tag at its registry (or `options`' mirrors) and compares the
/// digest with the pin. For maintainers with network access: a tag can move upstream, so a
/// changed digest is a finding to review, not to accept blindly.
pub fn check_images(lock: &Lock, options: super::download::Options) -> Result<Vec<(usize, Check)>> {
    let scratch = tempfile::tempdir().context("creating a scratch cache")?;
    let cache = super::cache::Cache::open(scratch.path())?;
    let fetcher = super::download::Fetcher::new(&cache, options)?;
    let puller = super::oci::pull::Puller::new(&fetcher)?;
    Ok(lock
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let check = match puller.resolve(image) {
                Ok(d) if Some(&d) == image.digest.as_ref() => Check::Same,
                Ok(published) => Check::Changed { published },
                Err(e) => Check::Unavailable {
                    reason: format!("{e:#}"),
                },
            };
            (i, check)
        })
        .collect())
}

/// Pins resolved image digests in the lock file at `path` (comments kept): the digest is
/// set, `unpinned` removed, and `source` says where and when it was resolved.
pub fn write_image_changes(path: &Path, changes: &[(usize, Digest)], lock: &Lock, registry: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    let Some(tables) = doc.get_mut("image").and_then(|a| a.as_array_of_tables_mut()) else {
        bail!("{} has no [[image]] tables", path.display());
    };
    let today = time::OffsetDateTime::now_utc().date();
    for (index, digest) in changes {
        let table = tables
            .get_mut(*index)
            .with_context(|| format!("{} has no image {index}", path.display()))?;
        let from = if registry.is_empty() {
            lock.images[*index]
                .reference
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            registry.to_string()
        };
        table.remove("unpinned");
        table["digest"] = toml_edit::value(digest.to_string());
        table["source"] = toml_edit::value(format!("resolved at {from} by `kubestick lock refresh` on {today}"));
    }
    crate::fsx::write_atomic(path, doc.to_string().as_bytes(), crate::fsx::PUBLIC_MODE)
}

/// Rewrites the digests of changed entries in the lock file at `path`, keeping comments.
pub fn write_changes(path: &Path, changes: &[(usize, Digest)]) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    let Some(tables) = doc.get_mut("artifact").and_then(|a| a.as_array_of_tables_mut()) else {
        bail!("{} has no [[artifact]] tables", path.display());
    };
    for (index, digest) in changes {
        let table = tables
            .get_mut(*index)
            .with_context(|| format!("{} has no artifact {index}", path.display()))?;
        let checksum_url = table
            .get("checksum_url")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        table["digest"] = toml_edit::value(digest.to_string());
        table["source"] = toml_edit::value(format!("published at {checksum_url}"));
    }
    crate::fsx::write_atomic(path, doc.to_string().as_bytes(), crate::fsx::PUBLIC_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "10d054585907f2c8bb823c84f6a66b3bd2a474c3d795475f04e9a44f78650fe6";

    #[test]
    fn checksum_file_formats() {
        let want: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(parse_checksum_file(&format!("{HEX}\n"), "kubeadm"), Some(want.clone()));
        assert_eq!(
            parse_checksum_file(&format!("{HEX}  kubeadm\n"), "kubeadm"),
            Some(want.clone())
        );
        let many = format!("{}  runc.arm64\n{HEX} *runc.amd64\n", "0".repeat(64));
        assert_eq!(parse_checksum_file(&many, "runc.amd64"), Some(want.clone()));
        assert_eq!(
            parse_checksum_file(&format!("SHA256 (x.tgz) = {HEX}\n"), "x.tgz"),
            Some(want)
        );
        assert_eq!(parse_checksum_file(&many, "runc.s390x"), None);
        assert_eq!(parse_checksum_file("not a digest\n", "x"), None);
    }
}

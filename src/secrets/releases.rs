//! The Kubernetes releases this cluster's sticks were built with, kept in the state directory
//! beside the secrets (it travels with them: a stick for this cluster can only be built where
//! its secrets are). `kubestick build` and `check` hold a new `kubernetes_version` against
//! the newest release here, so a skipped minor release or a downgrade is refused before a
//! stick exists; the nodes check the running cluster again before they join.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::BadInput;
use crate::fsx::{self, SECRET_MODE};
use crate::release::Release;

pub const FILE: &str = "releases.toml";

const HEADER: &str = "\
# Kubernetes releases of the sticks kubestick built for this cluster, oldest first.
# `kubestick build` and `kubestick check` refuse a kubernetes_version that skips a minor
# release after the newest one here, or goes back from it (Kubernetes supports neither).
# Written by `kubestick build`; remove an entry only if no node ever booted a stick of it.
";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Built {
    pub release: String,
    /// When the first stick of this release was built (RFC 3339, UTC).
    pub first_built: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(default)]
    built: Vec<Built>,
}

/// Where the record of the cluster whose state directory is `dir` lives.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The releases recorded in `dir`, oldest first; none when the cluster has no record yet.
pub fn read(dir: &Path) -> Result<Vec<Built>> {
    let file = path(dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    };
    let damaged = |why: String| {
        BadInput(format!(
            "{} is damaged: {why}\n  fix: restore it from your backup of {}, or correct the entry \
             (each [[built]] needs release = \"1.36.4\" and first_built = \"<date>\")",
            file.display(),
            dir.display()
        ))
    };
    let record: Record = toml::from_str(&text).map_err(|e| damaged(e.message().to_string()))?;
    for b in &record.built {
        b.release.parse::<Release>().map_err(|e| damaged(e.to_string()))?;
    }
    Ok(record.built)
}

/// The newest release in `built`.
pub fn newest(built: &[Built]) -> Option<Release> {
    built.iter().filter_map(|b| b.release.parse().ok()).max()
}

/// Adds `release` to the record in `dir` unless it is there; true when it was added.
pub fn record(dir: &Path, release: &str, now: OffsetDateTime) -> Result<bool> {
    let mut built = read(dir)?;
    if built.iter().any(|b| b.release == release) {
        return Ok(false);
    }
    let first_built = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)?;
    built.push(Built {
        release: release.to_string(),
        first_built,
    });
    let text = format!("{HEADER}\n{}", toml::to_string(&Record { built })?);
    fsx::write_atomic(&path(dir), text.as_bytes(), SECRET_MODE)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn a_cluster_without_a_record_has_built_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        assert!(read(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn releases_are_recorded_once_in_order_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(record(dir.path(), "1.35.8", at("2026-01-02T03:04:05.678Z")).unwrap());
        assert!(record(dir.path(), "1.36.4", at("2026-06-01T00:00:00Z")).unwrap());
        assert!(!record(dir.path(), "1.35.8", at("2026-07-01T00:00:00Z")).unwrap());
        let built = read(dir.path()).unwrap();
        assert_eq!(
            built,
            [
                Built {
                    release: "1.35.8".into(),
                    first_built: "2026-01-02T03:04:05Z".into()
                },
                Built {
                    release: "1.36.4".into(),
                    first_built: "2026-06-01T00:00:00Z".into()
                },
            ]
        );
        assert_eq!(newest(&built).unwrap().to_string(), "1.36.4");
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.starts_with("# Kubernetes releases"), "{text}");
    }

    #[test]
    fn a_damaged_record_is_bad_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "[[built]]\nrelease = \"1.36\"\nfirst_built = \"x\"\n").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.is::<BadInput>());
        let msg = err.to_string();
        assert!(
            msg.contains("releases.toml is damaged") && msg.contains("fix:"),
            "{msg}"
        );
    }
}

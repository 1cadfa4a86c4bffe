//! `artifacts.lock`: the pins, embedded in the binary so that a kubestick build always
//! agrees with the lock it was released with.

use std::collections::BTreeMap;

use serde::Deserialize;

const EMBEDDED: &str = include_str!("../../artifacts.lock");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub kubernetes: BTreeMap<String, KubernetesRelease>,
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRelease {
    pub pause_image: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    /// The Kubernetes version this file belongs to.
    pub kubernetes: String,
    pub url: String,
    pub digest: String,
    pub source: String,
}

impl Lock {
    pub fn embedded() -> Lock {
        toml::from_str(EMBEDDED).expect("the embedded artifacts.lock is checked by the test suite")
    }

    /// Newest first, so error messages and `init` suggest the newest.
    pub fn kubernetes_versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kubernetes.keys().cloned().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lock_parses_and_every_artifact_names_a_known_release() {
        let lock = Lock::embedded();
        assert_eq!(lock.format, 1);
        assert_eq!(lock.kubernetes_versions()[0], "1.36.4");
        for a in &lock.artifacts {
            assert!(
                lock.kubernetes.contains_key(&a.kubernetes),
                "{} names unknown {}",
                a.name,
                a.kubernetes
            );
            let hex = a
                .digest
                .strip_prefix("sha256:")
                .or_else(|| a.digest.strip_prefix("sha512:"));
            assert!(
                hex.is_some_and(|h| h.len() == 64 || h.len() == 128),
                "{}: bad digest {}",
                a.name,
                a.digest
            );
            assert!(!a.source.is_empty());
        }
    }
}

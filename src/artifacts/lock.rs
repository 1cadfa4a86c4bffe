//! `artifacts.lock`: the pins. The copy in the repository is compiled into the binary, so
//! a kubestick build always agrees with the lock it was released with; `--lock FILE`
//! reads another (maintainers, tests).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::digest::Digest;
use crate::diag::{Diagnostic, InvalidFile, Report};

const EMBEDDED: &str = include_str!("../../artifacts.lock");
pub const EMBEDDED_NAME: &str = "artifacts.lock (built in)";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub kubernetes: BTreeMap<String, KubernetesRelease>,
    /// Container images the rendered add-on manifests name, by tag (their digests are not
    /// published where they could be checked).
    pub images: crate::render::Images,
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRelease {
    pub pause_image: String,
}

/// A part of the cluster only some cluster files ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Needs {
    /// `[ingress]`: traefik and cert-manager.
    Ingress,
    /// `[storage]`: rook-ceph.
    Storage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A single executable.
    Binary,
    /// A tarball to unpack.
    Archive,
    /// A Kubernetes manifest applied on first boot.
    Manifest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub version: String,
    /// The Kubernetes release this file belongs to; absent when every release uses it.
    pub kubernetes: Option<String>,
    pub kind: Kind,
    /// Where it lands in the node image: a file path for binaries and manifests, the
    /// directory an archive is unpacked into.
    pub install: String,
    /// Only clusters using this part get the file; absent means every cluster.
    pub needs: Option<Needs>,
    pub url: String,
    pub size: Option<u64>,
    /// Absent only for entries marked `unpinned`.
    pub digest: Option<Digest>,
    /// Why there is no digest (upstream publishes none). Such an entry is refused unless
    /// the user opts in, and its observed digest is then reported.
    pub unpinned: Option<String>,
    /// Where upstream publishes this file's checksum, for `kubestick lock refresh`.
    pub checksum_url: Option<String>,
    /// Where the digest was taken from.
    pub source: String,
}

impl Artifact {
    /// The file name at the end of the URL.
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }
}

impl Lock {
    pub fn embedded() -> Lock {
        Self::parse(Path::new(EMBEDDED_NAME), EMBEDDED)
            .expect("the built-in artifacts.lock is checked by the test suite")
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Lock> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading lock file {}", path.display()))?;
        Ok(Self::parse(path, &text)?)
    }

    /// Parses and checks a lock; every problem is reported with its location.
    pub fn parse(path: &Path, text: &str) -> Result<Lock, InvalidFile> {
        let mut report = Report::new(path, text);
        let lock: Lock = match toml::from_str(text) {
            Ok(lock) => lock,
            Err(e) => {
                let message = e.message().lines().next().unwrap_or("invalid lock file").to_string();
                report.push(
                    Diagnostic::error("(lock)", e.span(), message)
                        .help("each [[artifact]] needs name, version, kind, url, digest (or unpinned) and source"),
                );
                return Err(InvalidFile(report));
            }
        };
        if lock.format != 1 {
            report.push(
                Diagnostic::error("format", None, format!("lock format {} is not understood", lock.format))
                    .help("this kubestick reads format = 1; use the kubestick that wrote this lock"),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, a) in lock.artifacts.iter().enumerate() {
            let at = |field: &str| format!("artifact[{i}].{field}");
            if let Some(k) = &a.kubernetes
                && !lock.kubernetes.contains_key(k)
            {
                report.push(
                    Diagnostic::error(
                        at("kubernetes"),
                        None,
                        format!(
                            "`{}` names Kubernetes {k}, which has no [kubernetes.\"{k}\"] table",
                            a.name
                        ),
                    )
                    .help("add the release table or correct the version"),
                );
            }
            match (&a.digest, &a.unpinned) {
                (Some(_), Some(_)) => report.push(
                    Diagnostic::error(
                        at("unpinned"),
                        None,
                        format!("`{}` has a digest and is marked unpinned", a.name),
                    )
                    .help("remove `unpinned` now that a published digest exists"),
                ),
                (None, None) => report.push(
                    Diagnostic::error(at("digest"), None, format!("`{}` has no digest", a.name))
                        .help("add the digest upstream publishes, or `unpinned = \"why\"` if it publishes none"),
                ),
                _ => {}
            }
            if !a.install.starts_with('/') || a.install.split('/').any(|c| c == "..") {
                report.push(
                    Diagnostic::error(
                        at("install"),
                        None,
                        format!("`{}` is not an absolute path in the image", a.install),
                    )
                    .help("give where the file lands on the node, e.g. \"/usr/local/bin/kubeadm\""),
                );
            }
            if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
                report.push(
                    Diagnostic::error(at("url"), None, format!("`{}` is not an http(s) URL", a.url))
                        .help("use the upstream download URL"),
                );
            }
            let key = (a.name.clone(), a.kubernetes.clone());
            if let Some(first) = seen.insert(key, i) {
                report.push(
                    Diagnostic::error(
                        at("name"),
                        None,
                        format!("`{}` is pinned twice (also artifact[{first}])", a.name),
                    )
                    .help("keep one entry per file and Kubernetes release"),
                );
            }
        }
        if report.has_errors() {
            Err(InvalidFile(report))
        } else {
            Ok(lock)
        }
    }

    /// Newest first, so error messages and `init` suggest the newest.
    pub fn kubernetes_versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kubernetes.keys().cloned().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>()));
        v
    }

    /// Everything any cluster on Kubernetes `version` may need, in lock order.
    pub fn for_kubernetes<'a>(&'a self, version: &'a str) -> impl Iterator<Item = &'a Artifact> + 'a {
        self.artifacts
            .iter()
            .filter(move |a| a.kubernetes.as_deref().is_none_or(|k| k == version))
    }

    /// What the renderer takes from the lock for Kubernetes `version` (None if not pinned).
    pub fn pins(&self, version: &str) -> Option<crate::render::Pins> {
        Some(crate::render::Pins {
            pause_image: self.kubernetes.get(version)?.pause_image.clone(),
            images: self.images.clone(),
        })
    }

    /// What one cluster needs: its Kubernetes release, and the ingress and storage files
    /// only when the cluster file asks for those parts.
    pub fn for_cluster<'a>(&'a self, cluster: &'a crate::spec::Cluster) -> impl Iterator<Item = &'a Artifact> + 'a {
        self.for_kubernetes(&cluster.kubernetes_version)
            .filter(move |a| match a.needs {
                None => true,
                Some(Needs::Ingress) => cluster.ingress.is_some(),
                Some(Needs::Storage) => cluster.storage.is_some(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_lock_is_valid_and_complete() {
        let lock = Lock::embedded();
        assert_eq!(lock.kubernetes_versions(), ["1.36.4", "1.35.8"]);
        for version in lock.kubernetes_versions() {
            let names: Vec<&str> = lock.for_kubernetes(&version).map(|a| a.name.as_str()).collect();
            for needed in [
                "kubeadm",
                "kubelet",
                "kubectl",
                "crictl",
                "cni-plugins",
                "containerd",
                "runc",
                "cert-manager.yaml",
                "rook-crds.yaml",
                "rook-operator.yaml",
            ] {
                assert!(names.contains(&needed), "{version} lacks {needed}");
            }
        }
        // Only cert-manager's release manifest has no published digest, and says so.
        for a in &lock.artifacts {
            assert!(!a.source.is_empty());
            match a.name.as_str() {
                "cert-manager.yaml" => assert!(a.digest.is_none() && a.unpinned.is_some()),
                _ => assert!(a.digest.is_some(), "{} is not pinned", a.name),
            }
        }
    }

    #[test]
    fn a_cluster_gets_ingress_and_storage_files_only_when_it_asks_for_them() {
        let lock = Lock::embedded();
        let text = include_str!("../../examples/homelab.toml");
        let full = crate::spec::parse(Path::new("homelab.toml"), text, &lock.kubernetes_versions())
            .expect("the example is valid")
            .cluster;
        let names = |c: &crate::spec::Cluster| lock.for_cluster(c).map(|a| a.name.clone()).collect::<Vec<_>>();
        let all = names(&full);
        assert!(all.contains(&"cert-manager.yaml".to_string()));
        assert!(all.contains(&"rook-operator.yaml".to_string()));
        let mut bare = full.clone();
        bare.ingress = None;
        bare.storage = None;
        let bare = names(&bare);
        assert!(bare.contains(&"kubeadm".to_string()));
        assert!(
            bare.iter()
                .all(|n| !n.starts_with("rook-") && !n.starts_with("traefik-") && n != "cert-manager.yaml")
        );
    }

    #[test]
    fn malformed_lock_gets_line_and_column() {
        let text = "format = 1\n[kubernetes.\"1.0.0\"]\npause_image = \"p\"\n[images]\nflannel = \"f\"\nflannel_cni_plugin = \"c\"\nceph = \"c\"\ntraefik = \"t\"\n[[artifact]]\nname = \"x\"\nversion = \"1\"\nkind = \"binary\"\ninstall = \"/x\"\nurl = \"https://e/x\"\ndigest = \"sha256:zz\"\nsource = \"s\"\n";
        let err = Lock::parse(Path::new("artifacts.lock"), text).unwrap_err();
        let rendered = err.0.render(false);
        assert!(rendered.contains("artifacts.lock:15:10"), "{rendered}");
        assert!(rendered.contains("hex digits"), "{rendered}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = "format = 1\n[kubernetes.\"1.0.0\"]\npause_image = \"p\"\n[images]\nflannel = \"f\"\nflannel_cni_plugin = \"c\"\nceph = \"c\"\ntraefik = \"t\"\n[[artifact]]\nname = \"x\"\nversion = \"1\"\nkubernetes = \"9.9.9\"\nkind = \"binary\"\ninstall = \"/x\"\nurl = \"ftp://e/x\"\nsource = \"s\"\n";
        let err = Lock::parse(Path::new("l"), text).unwrap_err();
        assert_eq!(err.0.errors(), 3, "{}", err.0.render(false));
    }
}

//! `artifacts.lock`: the pins. The copy in the repository is compiled into the binary, so
//! a kubestick build always agrees with the lock it was released with; `--lock FILE`
//! reads another (maintainers, tests).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::digest::Digest;
use crate::diag::{Diagnostic, InvalidFile, Report};
use crate::release::Release;

const EMBEDDED: &str = include_str!("../../artifacts.lock");
pub const EMBEDDED_NAME: &str = "artifacts.lock (built in)";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub kubernetes: BTreeMap<String, KubernetesRelease>,
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
    #[serde(default, rename = "image")]
    pub images: Vec<Image>,
    /// SHA-256 of the lock file's bytes (recorded in each image's bill of materials).
    #[serde(skip)]
    pub sha256: String,
}

/// The lock format this kubestick reads. Format 1 named images by tag only.
pub const FORMAT: u32 = 2;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRelease {
    /// Where the release's image set (`kubeadm config images list`) was read.
    pub image_set: Option<String>,
}

/// Which nodes carry an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nodes {
    /// Every node (kube-proxy, coredns, pause, the add-ons' daemons).
    #[default]
    All,
    /// Control-plane nodes only (the API server, controller manager, scheduler, etcd).
    ControlPlane,
}

/// A container image, pulled by digest and carried on the stick.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// What templates call it (`images["kube-proxy"]`); unique per Kubernetes release.
    pub name: String,
    /// `registry/repository:tag`, always with the registry.
    pub reference: String,
    /// The Kubernetes release whose kubeadm runs it; absent for add-on images.
    pub kubernetes: Option<String>,
    #[serde(default)]
    pub nodes: Nodes,
    pub needs: Option<Needs>,
    /// The registry's top-level digest: an index for multi-platform images. sha256 only.
    pub digest: Option<Digest>,
    /// Why there is no digest; refused unless the user opts in, like unpinned files.
    pub unpinned: Option<String>,
    /// Where the digest (or the tag) was taken from.
    pub source: String,
}

impl Image {
    /// `repository:tag@digest` when the digest is known, else the tag reference.
    pub fn pinned_reference(&self, digest: Option<&Digest>) -> String {
        match digest.or(self.digest.as_ref()) {
            Some(d) => format!("{}@{d}", self.reference),
            None => self.reference.clone(),
        }
    }
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
        let mut lock: Lock = match toml::from_str(text) {
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
        if lock.format != FORMAT {
            let help = if lock.format == 1 {
                "format 1 pinned container images by tag only; take the [[image]] entries from the \
                 artifacts.lock of this kubestick's source, then set format = 2"
                    .to_string()
            } else {
                format!("this kubestick reads format = {FORMAT}; use the kubestick that wrote this lock")
            };
            report.push(
                Diagnostic::error("format", None, format!("lock format {} is not understood", lock.format)).help(help),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, a) in lock.artifacts.iter().enumerate() {
            let at = |field: &str| format!("artifact[{i}].{field}");
            check_pin(
                &lock,
                &mut report,
                &at,
                &format!("`{}`", a.name),
                a.kubernetes.as_ref(),
                &a.digest,
                &a.unpinned,
            );
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
        check_images(&lock, &mut report);
        if report.has_errors() {
            Err(InvalidFile(report))
        } else {
            use sha2::Digest as _;
            lock.sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
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

    /// Every image any cluster on Kubernetes `version` may run, in lock order.
    pub fn images_for_kubernetes<'a>(&'a self, version: &'a str) -> impl Iterator<Item = &'a Image> + 'a {
        self.images
            .iter()
            .filter(move |i| i.kubernetes.as_deref().is_none_or(|k| k == version))
    }

    /// The images one cluster's sticks carry: its release's, the add-ons' it asks for, and
    /// the cluster-wide add-ons of the previous minor release ([`BRIDGE`]).
    pub fn images_for_cluster<'a>(&'a self, cluster: &'a crate::spec::Cluster) -> impl Iterator<Item = &'a Image> + 'a {
        let previous = self.previous_release(&cluster.kubernetes_version);
        let bridge = self
            .images
            .iter()
            .filter(move |i| previous.is_some() && i.kubernetes == previous && BRIDGE.contains(&i.name.as_str()));
        self.images_for_kubernetes(&cluster.kubernetes_version)
            .chain(bridge)
            .filter(move |i| wanted(i.needs, cluster))
    }

    /// The newest release the lock pins of the minor release before `version`'s.
    pub fn previous_release(&self, version: &str) -> Option<String> {
        let this: Release = version.parse().ok()?;
        self.kubernetes
            .keys()
            .filter_map(|k| k.parse::<Release>().ok())
            .filter(|r| r.major == this.major && r.minor + 1 == this.minor)
            .max()
            .map(|r| r.to_string())
    }

    /// What the renderer takes from the lock for Kubernetes `version` (None if not pinned):
    /// each image's reference with its digest. `observed` supplies the digest recorded for
    /// an unpinned image the user opted in to; without one it is named by tag.
    pub fn pins(&self, version: &str, observed: impl Fn(&Image) -> Option<Digest>) -> Option<crate::render::Pins> {
        self.kubernetes.get(version)?;
        let images = self
            .images_for_kubernetes(version)
            .map(|i| (i.name.clone(), i.pinned_reference(observed(i).as_ref())))
            .collect();
        Some(crate::render::Pins { images })
    }

    /// What one cluster needs: its Kubernetes release, and the ingress and storage files
    /// only when the cluster file asks for those parts.
    pub fn for_cluster<'a>(&'a self, cluster: &'a crate::spec::Cluster) -> impl Iterator<Item = &'a Artifact> + 'a {
        self.for_kubernetes(&cluster.kubernetes_version)
            .filter(move |a| wanted(a.needs, cluster))
    }
}

/// The add-ons kubeadm deploys cluster-wide, of the previous minor release, carried on a
/// stick too: while a cluster is being upgraded by re-flashing, they stay on the old release
/// until every node runs the new one, and a re-flashed node runs them from its stick instead
/// of pulling them.
pub const BRIDGE: [&str; 2] = ["kube-proxy", "coredns"];

/// The rules files and images share: the release they name exists, and they have exactly
/// one of a digest and a reason for having none.
fn check_pin(
    lock: &Lock,
    report: &mut Report,
    at: &dyn Fn(&str) -> String,
    what: &str,
    kubernetes: Option<&String>,
    digest: &Option<Digest>,
    unpinned: &Option<String>,
) {
    if let Some(k) = kubernetes
        && !lock.kubernetes.contains_key(k)
    {
        report.push(
            Diagnostic::error(
                at("kubernetes"),
                None,
                format!("{what} names Kubernetes {k}, which has no [kubernetes.\"{k}\"] table"),
            )
            .help("add the release table or correct the version"),
        );
    }
    match (digest, unpinned) {
        (Some(_), Some(_)) => report.push(
            Diagnostic::error(at("unpinned"), None, format!("{what} has a digest and is marked unpinned"))
                .help("remove `unpinned` now that a published digest exists"),
        ),
        (None, None) => report.push(
            Diagnostic::error(at("digest"), None, format!("{what} has no digest")).help(
                "add the digest upstream publishes (for an image, the registry's), or `unpinned = \"why\"` if none is published",
            ),
        ),
        _ => {}
    }
}

fn wanted(needs: Option<Needs>, cluster: &crate::spec::Cluster) -> bool {
    match needs {
        None => true,
        Some(Needs::Ingress) => cluster.ingress.is_some(),
        Some(Needs::Storage) => cluster.storage.is_some(),
    }
}

/// The rules for `[[image]]` entries: a full tag reference, a sha256 digest or a reason
/// for its absence, a known release, one entry per name and release.
fn check_images(lock: &Lock, report: &mut Report) {
    let mut seen = BTreeMap::new();
    for (i, image) in lock.images.iter().enumerate() {
        let at = |field: &str| format!("image[{i}].{field}");
        if let Err(why) = super::oci::reference::ImageRef::parse(&image.reference) {
            report.push(
                Diagnostic::error(at("reference"), None, format!("`{}`: {why}", image.reference))
                    .help("write registry/repository:tag, e.g. \"registry.k8s.io/pause:3.10.2\""),
            );
        }
        check_pin(
            lock,
            report,
            &at,
            &format!("image `{}`", image.name),
            image.kubernetes.as_ref(),
            &image.digest,
            &image.unpinned,
        );
        if let Some(d) = &image.digest
            && d.algorithm != super::digest::Algorithm::Sha256
        {
            report.push(
                Diagnostic::error(
                    at("digest"),
                    None,
                    format!("image `{}`: registries address content by sha256", image.name),
                )
                .help("give the sha256 digest the registry reports (Docker-Content-Digest)"),
            );
        }
        if let Some(first) = seen.insert((image.name.clone(), image.kubernetes.clone()), i) {
            report.push(
                Diagnostic::error(
                    at("name"),
                    None,
                    format!("image `{}` is pinned twice (also image[{first}])", image.name),
                )
                .help("keep one entry per image and Kubernetes release"),
            );
        }
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
    fn a_stick_carries_the_previous_releases_cluster_wide_add_ons_and_nothing_else_of_it() {
        let lock = Lock::embedded();
        assert_eq!(lock.previous_release("1.36.4").as_deref(), Some("1.35.8"));
        assert_eq!(lock.previous_release("1.35.8"), None);
        let text = include_str!("../../examples/homelab.toml");
        let mut cluster = crate::spec::parse(
            Path::new("homelab.toml"),
            text,
            &crate::spec::Releases::pinned(lock.kubernetes_versions()),
        )
        .expect("the example is valid")
        .cluster;
        let of = |c: &crate::spec::Cluster, release: &str| {
            lock.images_for_cluster(c)
                .filter(|i| i.kubernetes.as_deref() == Some(release))
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(&cluster, "1.35.8"), ["kube-proxy", "coredns"]);
        assert!(of(&cluster, "1.36.4").contains(&"kube-apiserver".to_string()));
        // The oldest release has no release before it to bridge from.
        cluster.kubernetes_version = "1.35.8".into();
        assert!(of(&cluster, "1.36.4").is_empty());
        assert!(of(&cluster, "1.35.8").contains(&"etcd".to_string()));
    }

    #[test]
    fn a_cluster_gets_ingress_and_storage_files_only_when_it_asks_for_them() {
        let lock = Lock::embedded();
        let text = include_str!("../../examples/homelab.toml");
        let full = crate::spec::parse(
            Path::new("homelab.toml"),
            text,
            &crate::spec::Releases::pinned(lock.kubernetes_versions()),
        )
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
        let text = "format = 2\n[kubernetes.\"1.0.0\"]\n[[artifact]]\nname = \"x\"\nversion = \"1\"\nkind = \"binary\"\ninstall = \"/x\"\nurl = \"https://e/x\"\ndigest = \"sha256:zz\"\nsource = \"s\"\n";
        let err = Lock::parse(Path::new("artifacts.lock"), text).unwrap_err();
        let rendered = err.0.render(false);
        assert!(rendered.contains("artifacts.lock:9:10"), "{rendered}");
        assert!(rendered.contains("hex digits"), "{rendered}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = "format = 2\n[kubernetes.\"1.0.0\"]\n[[artifact]]\nname = \"x\"\nversion = \"1\"\nkubernetes = \"9.9.9\"\nkind = \"binary\"\ninstall = \"/x\"\nurl = \"ftp://e/x\"\nsource = \"s\"\n";
        let err = Lock::parse(Path::new("l"), text).unwrap_err();
        assert_eq!(err.0.errors(), 3, "{}", err.0.render(false));
    }

    #[test]
    fn image_entries_are_checked() {
        let text = "format = 2\n[kubernetes.\"1.0.0\"]\n\
            [[image]]\nname = \"a\"\nreference = \"pause:3\"\ndigest = \"sha512:{}\"\nsource = \"s\"\n\
            [[image]]\nname = \"a\"\nreference = \"r.io/a:1\"\nkubernetes = \"9.9.9\"\nsource = \"s\"\n\
            [[image]]\nname = \"a\"\nreference = \"r.io/a:1\"\nsource = \"s\"\nunpinned = \"u\"\n";
        let text = text.replace("{}", &"0".repeat(128));
        let err = Lock::parse(Path::new("l"), &text).unwrap_err();
        let rendered = err.0.render(false);
        // No registry, sha512, unknown release, no digest, and `a` twice.
        assert_eq!(err.0.errors(), 5, "{rendered}");
        assert!(rendered.contains("names no registry"), "{rendered}");
        assert!(rendered.contains("pinned twice"), "{rendered}");
    }

    #[test]
    fn format_1_is_refused_with_a_way_forward() {
        let err = Lock::parse(Path::new("l"), "format = 1\n[kubernetes.\"1.0.0\"]\n").unwrap_err();
        assert!(
            err.0.render(false).contains("container images by tag only"),
            "{}",
            err.0.render(false)
        );
    }

    #[test]
    fn built_in_lock_pins_kubeadms_image_set_and_every_template_image() {
        let lock = Lock::embedded();
        for version in lock.kubernetes_versions() {
            let names: Vec<&str> = lock.images_for_kubernetes(&version).map(|i| i.name.as_str()).collect();
            for needed in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "etcd",
                "coredns",
                "pause",
                "flannel",
                "flannel-cni-plugin",
                "ceph",
                "rook-ceph",
                "cephcsi",
                "csi-provisioner",
                "traefik",
                "cert-manager-controller",
                "cert-manager-acmesolver",
            ] {
                assert!(names.contains(&needed), "{version} lacks image {needed}");
            }
            let cp_only: Vec<&str> = lock
                .images_for_kubernetes(&version)
                .filter(|i| i.nodes == Nodes::ControlPlane)
                .map(|i| i.name.as_str())
                .collect();
            assert_eq!(
                cp_only,
                ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"]
            );
        }
        let k136: Vec<String> = lock
            .images_for_kubernetes("1.36.4")
            .filter(|i| i.kubernetes.is_some())
            .map(|i| i.reference.clone())
            .collect();
        // Exactly `kubeadm config images list --kubernetes-version v1.36.4`.
        assert_eq!(
            k136,
            [
                "registry.k8s.io/kube-apiserver:v1.36.4",
                "registry.k8s.io/kube-controller-manager:v1.36.4",
                "registry.k8s.io/kube-scheduler:v1.36.4",
                "registry.k8s.io/kube-proxy:v1.36.4",
                "registry.k8s.io/etcd:3.6.8-0",
                "registry.k8s.io/coredns/coredns:v1.14.2",
                "registry.k8s.io/pause:3.10.2",
            ]
        );
    }
}

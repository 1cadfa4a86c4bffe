//! `out/cluster.json`: what `kubestick vm` needs to know about a built cluster (node names,
//! roles, addresses, MACs, disks, images), written by `kubestick build` beside the images
//! so the VMs boot from exactly what was built, without the cluster file or its secrets.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::BadInput;
use crate::spec::{API_PORT, Cluster};

pub const FILE_NAME: &str = "cluster.json";
/// Bumped when a field changes meaning; older kubesticks then refuse instead of guessing.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub cluster: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub api_vip: Ipv4Addr,
    pub api_port: u16,
    pub ingress_vip: Option<Ipv4Addr>,
    pub admin_user: String,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub role: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// `/dev/disk/by-id/...` of the disk ceph gets, if the node has one.
    pub disk: Option<String>,
    /// File name of the node's image, relative to the directory holding this file.
    pub image: String,
}

impl Manifest {
    pub fn from_cluster(cluster: &Cluster) -> Manifest {
        Manifest {
            format: FORMAT,
            cluster: cluster.name.clone(),
            subnet: cluster.network.subnet,
            gateway: cluster.network.gateway,
            api_vip: cluster.network.api_vip,
            api_port: API_PORT,
            ingress_vip: cluster.ingress.as_ref().and(cluster.network.ingress_vip),
            admin_user: cluster.admin.user.clone(),
            nodes: cluster
                .nodes
                .iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    role: n.role.as_str().to_string(),
                    ip: n.ip,
                    mac: n.mac.clone(),
                    disk: n.disk.as_ref().map(|d| d.by_id.clone()),
                    image: format!("{}.img", n.name),
                })
                .collect(),
        }
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::fsx::write_atomic(&out.join(FILE_NAME), text.as_bytes(), crate::fsx::PUBLIC_MODE)
    }

    /// Reads `OUT/cluster.json`; a missing or foreign file is the user's to fix (exit 2).
    pub fn load(out: &Path) -> Result<Manifest> {
        let path = out.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BadInput(format!(
                    "{} does not exist: `kubestick vm` boots the images of a `kubestick build` output \
                     directory; run `kubestick build CLUSTER.toml -o {}` (builds before this version of \
                     kubestick did not write it)",
                    path.display(),
                    out.display()
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| BadInput(format!("{} is not a kubestick build manifest: {e}", path.display())))?;
        if manifest.format != FORMAT {
            return Err(BadInput(format!(
                "{} has format {}, this kubestick reads format {FORMAT}: rebuild with `kubestick build`",
                path.display(),
                manifest.format
            ))
            .into());
        }
        Ok(manifest)
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            BadInput(format!(
                "no node {name:?} in cluster {}; its nodes are {}",
                self.cluster,
                self.node_names().join(", ")
            ))
            .into()
        })
    }

    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    pub fn image_path(&self, out: &Path, node: &Node) -> PathBuf {
        out.join(&node.image)
    }

    /// The node whose MAC this is (compared case-insensitively, as MACs are written both ways).
    pub fn node_by_mac(&self, mac: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.mac.eq_ignore_ascii_case(mac))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The rehearsal cluster (qemu-tests/cluster.toml) as `kubestick build` describes it.
    pub fn rehearsal() -> Manifest {
        let node = |i: u8| Node {
            name: format!("optiplex-{i}"),
            role: "control-plane".into(),
            ip: Ipv4Addr::new(10, 77, 0, 20 + i),
            mac: format!("52:54:00:77:00:0{i}"),
            disk: Some(format!("/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE{i}")),
            image: format!("optiplex-{i}.img"),
        };
        Manifest {
            format: FORMAT,
            cluster: "rehearsal".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            api_vip: Ipv4Addr::new(10, 77, 0, 10),
            api_port: 6443,
            ingress_vip: Some(Ipv4Addr::new(10, 77, 0, 11)),
            admin_user: "kube".into(),
            nodes: (1..=3).map(node).collect(),
        }
    }

    #[test]
    fn round_trips_and_finds_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let m = rehearsal();
        m.write(dir.path()).unwrap();
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.node("optiplex-2").unwrap().ip, Ipv4Addr::new(10, 77, 0, 22));
        assert_eq!(back.node_by_mac("52:54:00:77:00:03").unwrap().name, "optiplex-3");
        let err = back.node("optiplex-9").unwrap_err();
        assert!(err.is::<BadInput>());
        assert!(err.to_string().contains("optiplex-1, optiplex-2, optiplex-3"), "{err}");
    }

    #[test]
    fn describes_the_cluster_file_it_was_built_from() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-tests/cluster.toml");
        let versions = crate::spec::Releases::pinned(crate::artifacts::lock::Lock::embedded().kubernetes_versions());
        let cluster = crate::spec::load(&path, &versions).unwrap().cluster;
        assert_eq!(Manifest::from_cluster(&cluster), rehearsal());
    }

    #[test]
    fn missing_file_says_how_to_make_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(err.is::<BadInput>());
        assert!(err.to_string().contains("kubestick build"), "{err}");
    }
}

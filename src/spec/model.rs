//! The cluster after validation: every address parsed, every default applied, every
//! cross-field rule checked. Later stages take this and never see raw input.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Serialize;

pub const API_PORT: u16 = 6443;

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    /// Without the leading `v`, e.g. `1.36.4`.
    pub kubernetes_version: String,
    pub dns_domain: String,
    pub timezone: Option<String>,
    pub network: Network,
    pub admin: Admin,
    pub cni: Cni,
    pub ingress: Option<Ingress>,
    pub storage: Option<Storage>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<IpAddr>,
    pub search_domains: Vec<String>,
    pub ntp: Vec<String>,
    pub api_vip: Ipv4Addr,
    pub ingress_vip: Option<Ipv4Addr>,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub user: String,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cni {
    pub plugin: &'static str,
    pub backend: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ingress {
    pub controller: &'static str,
    pub acme_email: String,
    pub acme_server: AcmeServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeServer {
    Production,
    Staging,
}

impl AcmeServer {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeServer::Production => "production",
            AcmeServer::Staging => "staging",
        }
    }

    pub fn directory_url(self) -> &'static str {
        match self {
            AcmeServer::Production => "https://acme-v02.api.letsencrypt.org/directory",
            AcmeServer::Staging => "https://acme-staging-v02.api.letsencrypt.org/directory",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub provider: &'static str,
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WipePolicy {
    /// Never clear anything: a disk with old contents is left for a person to clean.
    Never,
    /// Clear partition tables, LVM and filesystem signatures unless the disk already
    /// carries a ceph bluestore label (so reflashing a stick never destroys OSD data).
    IfNotOsd,
}

impl WipePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            WipePolicy::Never => "never",
            WipePolicy::IfNotOsd => "if-not-osd",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Full `/dev/disk/by-id/...` path.
    pub by_id: String,
    pub wipe: WipePolicy,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    /// Lowercase, colon-separated.
    pub mac: String,
    pub disk: Option<Disk>,
}

impl Cluster {
    pub fn control_plane(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::ControlPlane)
    }

    /// The node that runs `kubeadm init` when no cluster answers yet: the first
    /// control-plane node in the file. Validation guarantees there is one.
    pub fn init_node(&self) -> &Node {
        self.control_plane()
            .next()
            .expect("validated cluster has a control-plane node")
    }

    pub fn storage_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.disk.is_some())
    }

    pub fn api_endpoint(&self) -> String {
        format!("{}:{}", self.network.api_vip, API_PORT)
    }

    pub fn api_server_url(&self) -> String {
        format!("https://{}", self.api_endpoint())
    }
}

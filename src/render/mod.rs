//! Stage 3: Cluster + Secrets → every file a node receives, from the tera templates in
//! `templates/`. Pure: no I/O here (see [`output`]), and the same inputs give the same
//! bytes.

pub mod output;
mod templates;

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tera::Tera;

use crate::secrets::Secrets;
use crate::spec::{API_PORT, Cluster, Node, Role};

/// A file as it lands on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFile {
    /// Absolute path on the node.
    pub path: String,
    /// Octal, as cloud-init wants it ("0644").
    pub mode: String,
    /// The same mode in decimal, as Ignition wants it.
    pub mode_decimal: u32,
    pub content: String,
}

impl NodeFile {
    fn new(path: &str, mode: u32, content: String) -> Self {
        NodeFile {
            path: path.to_string(),
            mode: format!("{mode:04o}"),
            mode_decimal: mode,
            content,
        }
    }

    pub fn is_secret(&self) -> bool {
        self.mode_decimal & 0o077 == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unit {
    pub name: String,
    pub content: String,
    /// The targets its `[Install]` section names in `WantedBy=`: the image enables it
    /// there, as `systemctl enable` would. Empty for units another unit starts (a timer's
    /// service).
    pub wanted_by: Vec<String>,
}

impl Unit {
    fn new(name: String, content: String) -> Unit {
        let mut in_install = false;
        let mut wanted_by = Vec::new();
        for line in content.lines().map(str::trim) {
            if line.starts_with('[') {
                in_install = line == "[Install]";
            } else if let Some(targets) = line.strip_prefix("WantedBy=").filter(|_| in_install) {
                wanted_by.extend(targets.split_whitespace().map(String::from));
            }
        }
        Unit {
            name,
            content,
            wanted_by,
        }
    }
}

/// Everything rendered for one node.
#[derive(Debug, Clone)]
pub struct RenderedNode {
    pub name: String,
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
    pub ignition: String,
    /// This node's own files (also inside user-data and the Ignition config).
    pub files: Vec<NodeFile>,
}

/// Everything rendered for a cluster.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Files every node shares; the image build puts them into the root filesystem.
    pub common_files: Vec<NodeFile>,
    pub units: Vec<Unit>,
    pub nodes: Vec<RenderedNode>,
    pub admin_kubeconfig: String,
}

pub const MODE_SECRET: u32 = 0o600;
pub const MODE_FILE: u32 = 0o644;
pub const MODE_EXEC: u32 = 0o755;
pub const UNIT_DIR: &str = "/etc/systemd/system";
const ADDON_FLANNEL: &str = "/usr/local/share/kubestick/addons/flannel.yaml";
const ADDON_ROOK: &str = "/usr/local/share/kubestick/addons/rook-cluster.yaml";
const ADDON_ROOK_CSI_IMAGES: &str = "/usr/local/share/kubestick/addons/rook-csi-images.yaml";
const ADDON_STORAGECLASS: &str = "/usr/local/share/kubestick/addons/storageclass.yaml";
const ADDON_TRAEFIK: &str = "/usr/local/share/kubestick/addons/traefik.yaml";
const ADDON_ISSUER: &str = "/usr/local/share/kubestick/addons/cluster-issuer.yaml";

/// How many ceph monitors and managers the cluster runs: monitors need a majority, so an
/// odd count, one per node, at most 3 (enough to survive the loss of any one node).
#[derive(Debug, Serialize)]
struct CephDaemons {
    mons: usize,
    mgrs: usize,
}

impl CephDaemons {
    fn for_cluster(cluster: &Cluster) -> Self {
        let n = cluster.nodes.len();
        CephDaemons {
            mons: if n >= 3 { 3 } else { 1 },
            mgrs: n.min(2),
        }
    }
}

/// Values that only the artifact lock knows, handed in by the caller so that render does
/// not reach into the artifacts stage.
#[derive(Debug, Clone, Serialize)]
pub struct Pins {
    /// Image name in the lock → the reference manifests use (`repo:tag@sha256:...`).
    pub images: std::collections::BTreeMap<String, String>,
}

/// The images the templates name, and for which part of the cluster (None: every cluster).
const TEMPLATE_IMAGES: &[(&str, Option<&str>)] = &[
    ("pause", None),
    ("flannel", None),
    ("flannel-cni-plugin", None),
    ("ceph", Some("storage")),
    ("cephcsi", Some("storage")),
    ("csi-provisioner", Some("storage")),
    ("csi-attacher", Some("storage")),
    ("csi-resizer", Some("storage")),
    ("csi-snapshotter", Some("storage")),
    ("csi-node-driver-registrar", Some("storage")),
    ("csi-addons-sidecar", Some("storage")),
    ("traefik", Some("ingress")),
];

/// Every image a template names for this cluster must be pinned.
fn check_pins(cluster: &Cluster, pins: &Pins) -> Result<()> {
    let missing: Vec<&str> = TEMPLATE_IMAGES
        .iter()
        .filter(|(_, part)| match part {
            None => true,
            Some("storage") => cluster.storage.is_some(),
            Some(_) => cluster.ingress.is_some(),
        })
        .map(|(name, _)| *name)
        .filter(|name| !pins.images.contains_key(*name))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "the lock pins no image named {} for Kubernetes {}; the templates need them \
             (add [[image]] entries to the lock)",
            missing.join(", "),
            cluster.kubernetes_version
        )
    }
}

pub struct Renderer {
    tera: Tera,
}

#[derive(Serialize)]
struct Vrrp {
    priority: u32,
    weight: u32,
    api_router_id: u8,
    ingress_router_id: u8,
    peers: Vec<String>,
}

impl Renderer {
    pub fn new() -> Result<Self> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        tera.register_filter("b64", b64_filter);
        tera.add_raw_templates(templates::ALL.iter().copied())
            .map_err(tera_error)?;
        Ok(Renderer { tera })
    }

    pub fn render(&self, cluster: &Cluster, secrets: &Secrets, pins: &Pins) -> Result<Rendered> {
        check_pins(cluster, pins)?;
        let mut base = tera::Context::new();
        base.insert("cluster", cluster);
        base.insert("api_endpoint", &cluster.api_endpoint());
        base.insert("api_port", &API_PORT);
        base.insert("prefix_len", &cluster.network.subnet.prefix_len());
        base.insert("init_node", &cluster.init_node().name);
        base.insert("control_plane", &cluster.control_plane().collect::<Vec<_>>());
        base.insert("bootstrap_token", secrets.bootstrap_token.as_str());
        base.insert("discovery_hash", &secrets.discovery_hash);
        base.insert("images", &pins.images);
        base.insert("ceph", &CephDaemons::for_cluster(cluster));
        if let Some(ingress) = &cluster.ingress {
            base.insert("acme_directory", ingress.acme_server.directory_url());
        }

        // (path on the node, mode, template)
        let common = [
            (
                "/etc/modules-load.d/kubestick.conf",
                MODE_FILE,
                "system/modules-load.conf",
            ),
            ("/etc/sysctl.d/90-kubestick.conf", MODE_FILE, "system/sysctl.conf"),
            ("/etc/containerd/config.toml", MODE_FILE, "system/containerd.toml"),
            ("/usr/local/lib/kubestick/prepare", MODE_EXEC, "system/prepare"),
            ("/usr/local/lib/kubestick/images", MODE_EXEC, "firstboot/images"),
            ("/usr/local/lib/kubestick/storage", MODE_EXEC, "firstboot/storage"),
            ("/usr/local/lib/kubestick/bootstrap", MODE_EXEC, "firstboot/bootstrap"),
            ("/usr/local/lib/kubestick/status", MODE_EXEC, "firstboot/status"),
            ("/usr/local/lib/kubestick/addons", MODE_EXEC, "firstboot/addons"),
            ("/usr/local/lib/kubestick/certs", MODE_EXEC, "firstboot/certs"),
            ("/usr/local/lib/kubestick/upgrade", MODE_EXEC, "firstboot/upgrade"),
            // Sourced by bootstrap and certs.
            ("/usr/local/lib/kubestick/turn", MODE_FILE, "firstboot/turn"),
            (
                "/etc/udev/rules.d/90-kubestick-flannel.rules",
                MODE_FILE,
                "system/flannel-offload.rules",
            ),
            (ADDON_FLANNEL, MODE_FILE, "addons/flannel.yaml"),
            // kubeadm's patches for the control-plane static pods (kubeadm/waits.yaml names
            // the directory); workers carry them unused, as they do the CA certificate.
            (
                "/etc/kubestick/kubeadm-patches/etcd+strategic.yaml",
                MODE_FILE,
                "kubeadm/patches/etcd+strategic.yaml",
            ),
            (
                "/etc/kubestick/kubeadm-patches/kube-apiserver+strategic.yaml",
                MODE_FILE,
                "kubeadm/patches/kube-apiserver+strategic.yaml",
            ),
            (
                "/etc/kubestick/kubeadm-patches/kube-controller-manager+strategic.yaml",
                MODE_FILE,
                "kubeadm/patches/kube-controller-manager+strategic.yaml",
            ),
            (
                "/etc/kubestick/kubeadm-patches/kube-scheduler+strategic.yaml",
                MODE_FILE,
                "kubeadm/patches/kube-scheduler+strategic.yaml",
            ),
        ];
        // The cluster's add-on manifests, for the parts its file asks for.
        let storage = [
            (ADDON_ROOK, MODE_FILE, "addons/rook-cluster.yaml"),
            (ADDON_ROOK_CSI_IMAGES, MODE_FILE, "addons/rook-csi-images.yaml"),
            (ADDON_STORAGECLASS, MODE_FILE, "addons/storageclass.yaml"),
        ];
        let ingress = [
            (ADDON_TRAEFIK, MODE_FILE, "addons/traefik.yaml"),
            (ADDON_ISSUER, MODE_FILE, "addons/cluster-issuer.yaml"),
        ];
        let common_files = common
            .iter()
            .chain(storage.iter().filter(|_| cluster.storage.is_some()))
            .chain(ingress.iter().filter(|_| cluster.ingress.is_some()))
            .map(|(path, mode, template)| Ok(NodeFile::new(path, *mode, self.template(template, &base)?)))
            .collect::<Result<Vec<_>>>()?;
        let units = [
            "system/kubestick-prepare.service",
            "firstboot/kubestick-images.service",
            "firstboot/kubestick-storage.service",
            "firstboot/kubestick-bootstrap.service",
            "firstboot/kubestick-addons.service",
            "firstboot/kubestick-status.service",
            "firstboot/kubestick-status.timer",
            "firstboot/kubestick-status.path",
            "firstboot/kubestick-certs.service",
            "firstboot/kubestick-certs.timer",
            "firstboot/kubestick-upgrade.service",
            "firstboot/kubestick-upgrade.timer",
        ]
        .iter()
        .map(|t| {
            let name = t.rsplit('/').next().unwrap_or(t).to_string();
            Ok(Unit::new(name, self.template(t, &base)?))
        })
        .collect::<Result<Vec<_>>>()?;
        let nodes = cluster
            .nodes
            .iter()
            .map(|node| self.node(cluster, node, secrets, &base, &common_files, &units))
            .collect::<Result<Vec<_>>>()?;
        Ok(Rendered {
            common_files,
            units,
            nodes,
            admin_kubeconfig: secrets.admin_kubeconfig(&cluster.name, &cluster.api_server_url()),
        })
    }

    fn template(&self, name: &str, ctx: &tera::Context) -> Result<String> {
        self.tera
            .render(name, ctx)
            .map_err(tera_error)
            .with_context(|| format!("rendering template {name}"))
    }

    fn node(
        &self,
        cluster: &Cluster,
        node: &Node,
        secrets: &Secrets,
        base: &tera::Context,
        common_files: &[NodeFile],
        units: &[Unit],
    ) -> Result<RenderedNode> {
        let mut ctx = base.clone();
        ctx.insert("node", node);
        let is_cp = node.role == Role::ControlPlane;
        if is_cp {
            ctx.insert("vrrp", &vrrp(cluster, node));
        }

        let mut files = vec![NodeFile::new(
            "/etc/kubestick/node.env",
            MODE_FILE,
            self.template("node/node.env", &ctx)?,
        )];
        if node.name == cluster.init_node().name {
            files.push(NodeFile::new(
                "/etc/kubestick/kubeadm-init.yaml",
                MODE_SECRET,
                self.template("kubeadm/init.yaml", &ctx)?,
            ));
        }
        files.push(NodeFile::new(
            "/etc/kubestick/kubeadm-join.yaml",
            MODE_SECRET,
            self.template("kubeadm/join.yaml", &ctx)?,
        ));
        // Every node checks that the API at the VIP is this cluster's before joining it. Not
        // in /etc/kubernetes/pki on a worker: `kubeadm join` refuses a worker whose
        // pki/ca.crt exists (it writes the one discovery pinned itself).
        files.push(NodeFile::new(
            "/etc/kubestick/ca.crt",
            MODE_FILE,
            secrets.ca.cert_pem.clone(),
        ));
        if is_cp {
            files.push(NodeFile::new(
                "/etc/kubernetes/pki/ca.crt",
                MODE_FILE,
                secrets.ca.cert_pem.clone(),
            ));
            // For minting a short-lived admin credential from the CA on this node (the
            // bootstrap step uses one to forget an earlier life of a re-flashed node).
            files.push(NodeFile::new(
                "/etc/kubestick/kubeadm-cluster.yaml",
                MODE_FILE,
                self.template("kubeadm/cluster.yaml", &ctx)?,
            ));
            // Only control-plane nodes may hold CA keys: they issue their own serving
            // certificates from them when they join.
            let pki = [
                ("ca.key", &secrets.ca.key_pem, MODE_SECRET),
                ("front-proxy-ca.crt", &secrets.front_proxy_ca.cert_pem, MODE_FILE),
                ("front-proxy-ca.key", &secrets.front_proxy_ca.key_pem, MODE_SECRET),
                ("etcd/ca.crt", &secrets.etcd_ca.cert_pem, MODE_FILE),
                ("etcd/ca.key", &secrets.etcd_ca.key_pem, MODE_SECRET),
                ("sa.key", &secrets.service_account.private_pem, MODE_SECRET),
                ("sa.pub", &secrets.service_account.public_pem, MODE_FILE),
            ];
            for (name, content, mode) in pki {
                files.push(NodeFile::new(
                    &format!("/etc/kubernetes/pki/{name}"),
                    mode,
                    content.clone(),
                ));
            }
            files.push(NodeFile::new(
                "/etc/keepalived/keepalived.conf",
                MODE_FILE,
                self.template("keepalived/keepalived.conf", &ctx)?,
            ));
            files.push(NodeFile::new(
                "/usr/local/lib/kubestick/check-apiserver",
                MODE_EXEC,
                self.template("keepalived/check-apiserver", &ctx)?,
            ));
            if cluster.ingress.is_some() && cluster.network.ingress_vip.is_some() {
                files.push(NodeFile::new(
                    "/usr/local/lib/kubestick/check-ingress",
                    MODE_EXEC,
                    self.template("keepalived/check-ingress", &ctx)?,
                ));
            }
        }

        ctx.insert("files", &files);
        let user_data = self.template("cloud-init/user-data", &ctx)?;
        let network_config = self.template("cloud-init/network-config", &ctx)?;
        let digest = Sha256::new()
            .chain_update(&user_data)
            .chain_update(&network_config)
            .finalize();
        ctx.insert(
            "instance_id",
            &format!("{}-{}-{}", cluster.name, node.name, &hex::encode(digest)[..12]),
        );
        let meta_data = self.template("cloud-init/meta-data", &ctx)?;

        let mut ignition_files = vec![
            NodeFile::new(
                "/etc/systemd/network/10-kubestick-lan.link",
                MODE_FILE,
                self.template("ignition/lan.link", &ctx)?,
            ),
            NodeFile::new(
                "/etc/systemd/network/10-kubestick-lan.network",
                MODE_FILE,
                self.template("ignition/lan.network", &ctx)?,
            ),
        ];
        ignition_files.extend(common_files.iter().cloned());
        ignition_files.extend(files.iter().cloned());
        ctx.insert("ignition_files", &ignition_files);
        ctx.insert("units", units);
        let ignition = self.template("ignition/config.ign", &ctx)?;
        let ignition: serde_json::Value = serde_json::from_str(&ignition)
            .with_context(|| format!("the Ignition template produced invalid JSON for node {}", node.name))?;
        let ignition = serde_json::to_string_pretty(&ignition)? + "\n";

        Ok(RenderedNode {
            name: node.name.clone(),
            meta_data,
            user_data,
            network_config,
            ignition,
            files,
        })
    }
}

/// Priorities fall by node order so the init node holds the VIPs first; a failing health
/// check subtracts more than the whole spread, so a healthy peer always outranks it.
fn vrrp(cluster: &Cluster, node: &Node) -> Vrrp {
    let cps: Vec<&Node> = cluster.control_plane().collect();
    let index = cps.iter().position(|n| n.name == node.name).unwrap_or(0) as u32;
    let id = Sha256::digest(cluster.name.as_bytes())[0];
    // Router ids 1..=254, derived from the cluster name so two kubestick clusters on one
    // LAN are unlikely to collide; the ingress id is the next one.
    let api_router_id = id % 253 + 1;
    Vrrp {
        priority: 150 - 10 * index,
        weight: 10 * cps.len() as u32 + 10,
        api_router_id,
        ingress_router_id: api_router_id + 1,
        peers: cps
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.ip.to_string())
            .collect(),
    }
}

fn b64_filter(value: &tera::Value, _: &std::collections::HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    use base64::Engine as _;
    let s = value.as_str().ok_or_else(|| tera::Error::msg("b64 takes a string"))?;
    Ok(tera::Value::String(base64::engine::general_purpose::STANDARD.encode(s)))
}

/// tera hides the useful part of an error in its source chain.
fn tera_error(e: tera::Error) -> anyhow::Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    anyhow!(msg)
}

#[cfg(test)]
mod tests {
    use super::Unit;

    #[test]
    fn a_unit_is_wanted_by_the_targets_of_its_install_section_only() {
        let unit = Unit::new(
            "x.service".into(),
            "[Unit]\nWantedBy=not-this.target\n[Service]\nExecStart=/bin/true\n\n[Install]\n  WantedBy=multi-user.target cloud-init.target\nWantedBy=timers.target\n".into(),
        );
        assert_eq!(
            unit.wanted_by,
            ["multi-user.target", "cloud-init.target", "timers.target"]
        );
        let started_by_a_timer = Unit::new("y.service".into(), "[Service]\nExecStart=/bin/true\n".into());
        assert!(started_by_a_timer.wanted_by.is_empty());
    }
}

//! What `kubestick check` prints: who inits, who joins, which disk goes to ceph, and every
//! address the cluster will use, so a user can compare it with their router's view.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::model::{API_PORT, Cluster, Role};

pub fn plan(c: &Cluster) -> String {
    let mut out = String::new();
    let cps: Vec<_> = c.control_plane().collect();
    let workers = c.nodes.len() - cps.len();
    let disks = c.storage_nodes().count();
    let _ = writeln!(
        out,
        "Cluster {} — Kubernetes {}, {} node{} ({} control plane, {} worker{}), {} with a ceph disk",
        c.name,
        c.kubernetes_version,
        c.nodes.len(),
        if c.nodes.len() == 1 { "" } else { "s" },
        cps.len(),
        workers,
        if workers == 1 { "" } else { "s" },
        disks
    );
    let _ = writeln!(out);
    let holders: Vec<&str> = cps.iter().map(|n| n.name.as_str()).collect();
    let _ = writeln!(
        out,
        "  API        https://{}:{API_PORT}  virtual IP, held by one of: {}",
        c.network.api_vip,
        holders.join(", ")
    );
    if let (Some(ing), Some(vip)) = (&c.ingress, c.network.ingress_vip) {
        let _ = writeln!(
            out,
            "  Ingress    {vip} ports 80, 443  {} with Let's Encrypt ({}) for {}",
            ing.controller,
            ing.acme_server.as_str(),
            ing.acme_email
        );
    }
    let dns: Vec<String> = c.network.dns.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "  LAN        {} via {}, DNS {}",
        c.network.subnet,
        c.network.gateway,
        dns.join(", ")
    );
    let _ = writeln!(
        out,
        "  Pods       {} ({} {}, a /24 per node)",
        c.network.pod_cidr, c.cni.plugin, c.cni.backend
    );
    let _ = writeln!(
        out,
        "  Services   {} (cluster DNS {})",
        c.network.service_cidr, c.dns_domain
    );
    if let Some(s) = &c.storage {
        let _ = writeln!(
            out,
            "  Storage    {}, {} replica{} across hosts, default StorageClass",
            s.provider,
            s.replicas,
            if s.replicas == 1 { "" } else { "s" }
        );
    }

    let _ = writeln!(out, "\nFirst boot (in any order; nodes wait for each other):");
    let init = c.init_node();
    for n in &c.nodes {
        let step = if n.name == init.name {
            "kubeadm init   (first control-plane node; joins instead if the cluster already answers)".to_string()
        } else if n.role == Role::ControlPlane {
            format!("kubeadm join --control-plane via {}", c.api_endpoint())
        } else {
            format!("kubeadm join via {}", c.api_endpoint())
        };
        let _ = writeln!(out, "  {:<16} {step}", n.name);
    }

    let _ = writeln!(out, "\nNodes:");
    let _ = writeln!(
        out,
        "  {:<16} {:<14} {:<16} {:<18} CEPH DISK (WIPE POLICY)",
        "NAME", "ROLE", "IP", "MAC"
    );
    for n in &c.nodes {
        let disk = n
            .disk
            .as_ref()
            .map_or("-".to_string(), |d| format!("{} ({})", d.by_id, d.wipe.as_str()));
        let _ = writeln!(
            out,
            "  {:<16} {:<14} {:<16} {:<18} {disk}",
            n.name,
            n.role.as_str(),
            n.ip,
            n.mac
        );
    }

    let _ = writeln!(out, "\nAddresses in use on {}:", c.network.subnet);
    let mut used: Vec<(Ipv4Addr, String)> = vec![
        (c.network.gateway, "gateway".into()),
        (c.network.api_vip, "API virtual IP".into()),
    ];
    if let Some(vip) = c.network.ingress_vip {
        used.push((vip, "ingress virtual IP".into()));
    }
    used.extend(c.nodes.iter().map(|n| (n.ip, format!("node {}", n.name))));
    used.sort();
    for (ip, what) in used {
        let _ = writeln!(out, "  {:<16} {what}", ip.to_string());
    }
    let _ = writeln!(out, "Keep these out of your router's DHCP pool.");
    out
}

//! `kubestick vm status`: per node whether its QEMU runs, whether its address answers (SSH
//! through the forwarded port: the host reaches the node over the segment), how far its
//! first boot got (from its serial log), and who holds the API virtual IP (from the ARP the
//! hub saw) and whether the API answers there.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::image::manifest::Manifest;
use crate::vm::hub::read_arp_table;
use crate::vm::serial::{self, Summary};
use crate::vm::state::{Saved, StateDir};
use crate::vm::{network, process};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct Status {
    pub cluster: String,
    pub state_dir: String,
    pub accel: Option<String>,
    pub segment: bool,
    pub host_access: bool,
    pub api: Api,
    pub kubeconfig: String,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
pub struct Api {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub host_port: u16,
    /// The HTTP status /livez answered with through the forward, if anything answered.
    pub livez: Option<u16>,
    pub holder: Option<String>,
    pub holder_since: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pid: Option<i32>,
    pub ssh_port: Option<u16>,
    /// sshd on the node's address sent its banner through the forward.
    pub reachable: bool,
    pub serial_log: String,
    pub serial: Summary,
}

/// True if an SSH server greets through `port` within the timeout. A bare TCP connect is
/// not enough: QEMU's user network accepts on the host side before it reaches the guest.
pub fn ssh_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

/// The status of `GET /livez` through the forward. Only whether and what it answers is
/// wanted here, without credentials, so the certificate is not checked; the kubeconfig
/// written for the host checks it properly.
pub fn livez(port: u16) -> Option<u16> {
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(PROBE_TIMEOUT)
        .build()
        .ok()?;
    client
        .get(format!("https://127.0.0.1:{port}/livez"))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

pub fn collect(state: &StateDir, saved: &Saved, manifest: &Manifest) -> Status {
    let arp = read_arp_table(&state.arp_table());
    let holder = arp.get(&manifest.api_vip);
    let api_port = saved.ports.api;
    let api = std::thread::spawn(move || livez(api_port));
    let probes: Vec<_> = manifest
        .nodes
        .iter()
        .map(|n| {
            let port = saved.ports.ssh.get(&n.name).copied();
            let files = state.node(&n.name);
            let pid = process::running(&files.pid, &files.pid);
            let probe = std::thread::spawn(move || pid.is_some() && port.is_some_and(ssh_answers));
            (n, port, files, pid, probe)
        })
        .collect();
    let nodes = probes
        .into_iter()
        .map(|(n, port, files, pid, probe)| NodeStatus {
            name: n.name.clone(),
            ip: n.ip,
            pid,
            ssh_port: port,
            reachable: probe.join().unwrap_or(false),
            serial_log: files.serial_log.display().to_string(),
            serial: serial::summarize(&String::from_utf8_lossy(
                &std::fs::read(&files.serial_log).unwrap_or_default(),
            )),
        })
        .collect();
    Status {
        cluster: manifest.cluster.clone(),
        state_dir: state.root().display().to_string(),
        accel: saved.accel.as_ref().map(|p| p.accel.as_str().to_string()),
        segment: network::hub_running(state).is_some(),
        host_access: network::hostnet_running(state).is_some(),
        api: Api {
            vip: manifest.api_vip,
            port: manifest.api_port,
            host_port: api_port,
            livez: api.join().unwrap_or(None),
            holder: holder.map(|e| {
                manifest
                    .node_by_mac(&e.mac)
                    .map_or_else(|| format!("unknown MAC {}", e.mac), |n| n.name.clone())
            }),
            holder_since: holder.map(|e| e.since),
        },
        kubeconfig: state.kubeconfig().display().to_string(),
        nodes,
    }
}

pub fn print(st: &Status, admin_user: &str) {
    println!(
        "Cluster {} ({} VMs, state in {})",
        st.cluster,
        st.accel.as_deref().unwrap_or("no"),
        st.state_dir
    );
    let width = st.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    println!("  {:<width$}  {:<18} {:<10} FIRST BOOT", "NODE", "QEMU", "ADDRESS");
    for n in &st.nodes {
        let qemu = n.pid.map_or("stopped".to_string(), |p| format!("running ({p})"));
        let reach = match (n.pid, n.reachable) {
            (None, _) => "-",
            (Some(_), true) => "answers",
            (Some(_), false) => "no answer",
        };
        println!("  {:<width$}  {qemu:<18} {reach:<10} {}", n.name, n.serial.progress());
    }
    let api = match st.api.livez {
        Some(code) => format!("answers (/livez: HTTP {code})"),
        None => "does not answer".to_string(),
    };
    let stopped = |name: &str| st.nodes.iter().any(|n| n.name == name && n.pid.is_none());
    let holder = match st.api.holder.as_deref() {
        None => "nobody seen yet (from ARP on the segment)".to_string(),
        Some(h) if stopped(h) => format!("nobody: the last holder, {h}, is stopped and no other node took it over"),
        Some(h) => h.to_string(),
    };
    println!(
        "  API {}:{} via https://127.0.0.1:{}: {api}; VIP held by {holder}",
        st.api.vip, st.api.port, st.api.host_port
    );
    if !st.segment {
        println!(
            "  the segment's hub is not running: `kubestick vm up` starts it (running VMs then need `vm stop`/`vm start`)"
        );
    } else if !st.host_access {
        println!("  the host's port on the segment is not running: `kubestick vm up` starts it");
    }
    println!("  kubeconfig: {}", st.kubeconfig);
    for n in &st.nodes {
        if let (Some(_), Some(port)) = (n.pid, n.ssh_port) {
            println!("  ssh -p {port} {admin_user}@127.0.0.1   # {}", n.name);
        }
    }
}

pub fn run(state: &StateDir, json: bool) -> Result<()> {
    let saved = state.require()?;
    let manifest = Manifest::load(&saved.out)?;
    let st = collect(state, &saved, &manifest);
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print(&st, &manifest.admin_user);
    }
    Ok(())
}

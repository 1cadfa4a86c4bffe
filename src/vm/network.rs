//! Starting the segment: the hub (a `kubestick vm hub` process) and the host's port on it
//! (a machine-less QEMU with a restricted user-mode network and the forwards).

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::image::manifest::Manifest;
use crate::vm::state::{Saved, StateDir};
use crate::vm::{hostnet, process, qemu};

pub fn hub_running(state: &StateDir) -> Option<i32> {
    process::running(&state.hub_pid(), &state.hub_socket())
}

pub fn hostnet_running(state: &StateDir) -> Option<i32> {
    process::running(&state.net_pid(), &state.net_pid())
}

/// What `ensure` found and did.
pub struct Segment {
    /// The hub had to be started while VMs were running: they are cut off (QEMU 7.2's stream
    /// netdev does not reconnect) until they are restarted.
    pub hub_restarted: bool,
}

/// Starts whatever part of the segment is not running.
pub fn ensure(state: &StateDir, saved: &Saved, manifest: &Manifest) -> Result<Segment> {
    let mut hub_restarted = false;
    if hub_running(state).is_none() {
        start_hub(state)?;
        hub_restarted = true;
        // The host's port was attached to the old hub, if any; it must join the new one.
        if hostnet_running(state).is_some() {
            process::kill(&state.net_pid(), &state.net_pid())?;
        }
    }
    if hostnet_running(state).is_none() {
        start_hostnet(state, saved, manifest)?;
    }
    Ok(Segment { hub_restarted })
}

fn start_hub(state: &StateDir) -> Result<()> {
    let exe = std::env::current_exe().context("finding the kubestick executable to run the hub")?;
    let socket = state.hub_socket();
    let mut cmd = Command::new(exe);
    cmd.args(["vm", "hub", "--socket"])
        .arg(&socket)
        .arg("--arp")
        .arg(state.arp_table());
    let pid = process::spawn_detached(&mut cmd, &state.hub_log())?;
    crate::fsx::write_atomic(&state.hub_pid(), format!("{pid}\n").as_bytes(), crate::fsx::PUBLIC_MODE)?;
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        if !process::is_ours(pid, &socket) || start.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(state.hub_log()).unwrap_or_default();
            bail!(
                "the segment's hub did not start; {}:\n{}",
                state.hub_log().display(),
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_hostnet(state: &StateDir, saved: &Saved, manifest: &Manifest) -> Result<()> {
    let forwards = hostnet::forwards(&saved.ports, manifest);
    hostnet::check_ports_free(&forwards)?;
    let (dns, dhcp_start) = hostnet::slirp_addresses(manifest)?;
    let args = qemu::hostnet_args(&qemu::HostNet {
        subnet: manifest.subnet,
        gateway: manifest.gateway,
        dns,
        dhcp_start,
        forwards: &forwards,
        hub: &state.hub_socket(),
        pidfile: &state.net_pid(),
    });
    qemu::check_contained(&args)?;
    process::run_qemu_daemon(&saved.settings.qemu, &args, "the host's port on the segment")
}

/// Stops the host's port and the hub (after the VMs: a hub stopping first would cut them off).
pub fn stop(state: &StateDir) -> Result<()> {
    process::kill(&state.net_pid(), &state.net_pid())?;
    process::kill(&state.hub_pid(), &state.hub_socket())?;
    let _ = std::fs::remove_file(state.hub_socket());
    Ok(())
}

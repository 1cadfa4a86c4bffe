//! `vm stop NODE` (a power cut), `vm down` (shut everything down, keep the disks) and
//! `vm destroy` (remove the VM state; the images are never touched).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::image::manifest::Manifest;
use crate::vm::state::StateDir;
use crate::vm::{network, process, qmp, up};

/// SIGKILL to the node's QEMU: the guest gets no shutdown, its disks keep whatever reached
/// them, exactly like pulling a PC's power cord.
pub fn stop(state: &StateDir, node: &str) -> Result<()> {
    let saved = state.require()?;
    let manifest = Manifest::load(&saved.out)?;
    manifest.node(node)?;
    let files = state.node(node);
    let _lock = state.lock()?;
    if process::kill(&files.pid, &files.pid)? {
        up::mark_power_cut(&files, node)?;
        println!(
            "{node}: power cut (its QEMU was killed with SIGKILL). `kubestick vm start {node}` powers it on again."
        );
    } else {
        println!("{node} is not running.");
    }
    Ok(())
}

/// Every node of the state directory, from the manifest or, if the build output is gone,
/// from the saved ports (one per node ever started).
fn all_nodes(state: &StateDir) -> Result<Vec<String>> {
    let saved = state.require()?;
    Ok(match Manifest::load(&saved.out) {
        Ok(m) => m.nodes.iter().map(|n| n.name.clone()).collect(),
        Err(_) => saved.ports.ssh.keys().cloned().collect(),
    })
}

/// Presses every running node's power button, waits up to `timeout` for the guests to shut
/// down, cuts the power of any still running, then stops the segment.
pub fn down(state: &StateDir, force: bool, timeout: Duration) -> Result<()> {
    let nodes = all_nodes(state)?;
    let _lock = state.lock()?;
    let running: Vec<(String, i32)> = nodes
        .iter()
        .filter_map(|n| {
            let f = state.node(n);
            process::running(&f.pid, &f.pid).map(|pid| (n.clone(), pid))
        })
        .collect();
    if !force {
        for (n, _) in &running {
            if let Err(e) = qmp::powerdown(&state.node(n).qmp) {
                eprintln!("warning: could not press {n}'s power button ({e:#}); its power will be cut");
            }
        }
        let spinner = crate::progress::spinner(std::io::stderr().is_terminal(), "");
        let start = Instant::now();
        loop {
            let left: Vec<&str> = running
                .iter()
                .filter(|(n, pid)| process::is_ours(*pid, &state.node(n).pid))
                .map(|(n, _)| n.as_str())
                .collect();
            if left.is_empty() || start.elapsed() > timeout {
                break;
            }
            spinner.set_message(format!("waiting for {} to shut down", left.join(", ")));
            std::thread::sleep(Duration::from_millis(250));
        }
        spinner.finish_and_clear();
    }
    for (n, _) in &running {
        let f = state.node(n);
        if process::kill(&f.pid, &f.pid)? {
            up::mark_power_cut(&f, n)?;
            if !force {
                eprintln!("{n} did not shut down within {}s: its power was cut", timeout.as_secs());
            }
        }
    }
    network::stop(state)?;
    if running.is_empty() {
        println!("No VM was running; the network segment is stopped.");
    } else {
        println!(
            "Stopped {} (disks, boot overlays and serial logs kept in {}). `kubestick vm up` starts them again.",
            running.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            state.root().display()
        );
    }
    Ok(())
}

/// Cuts every VM's power and removes the state directory's contents: overlays, SATA disks,
/// logs. The images in the build output are not in it and stay.
pub fn destroy(state: &StateDir) -> Result<()> {
    let nodes = all_nodes(state)?;
    {
        let _lock = state.lock()?;
        for n in &nodes {
            let f = state.node(n);
            process::kill(&f.pid, &f.pid)?;
        }
        network::stop(state)?;
    }
    state.remove(&nodes)?;
    println!(
        "Removed the VMs' disks, overlays and logs from {} (the images are untouched).",
        state.root().display()
    );
    Ok(())
}

//! `vm up` and `vm start`: prepare each node's files (overlay, UEFI variables, SATA disk)
//! and power it on.

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::error::BadInput;
use crate::fsx;
use crate::image::manifest::{Manifest, Node};
use crate::vm::accel::{self, Accel, Choice};
use crate::vm::disk::{self, SataIdentity};
use crate::vm::state::{NodeDir, Saved, Settings, StateDir};
use crate::vm::stick::Stick;
use crate::vm::{MachineArgs, hostnet, kubeconfig, network, process, qemu, serial};

const GIB: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const DEFAULT_OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Request<'a> {
    pub out: &'a Path,
    pub state: Option<&'a Path>,
    pub nodes: &'a [String],
    pub machine: &'a MachineArgs,
    pub reflash: bool,
    pub wait: Option<Duration>,
    /// Days the started nodes' clocks run ahead of the host's (a drill).
    pub clock_ahead_days: Option<u32>,
}

/// Every node's SATA identity, or one error listing each node whose disk cannot be emulated.
fn identities<'a>(manifest: &'a Manifest, nodes: &[&'a Node]) -> Result<Vec<(&'a Node, Option<SataIdentity>)>> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for &n in nodes {
        match n.disk.as_deref().map(disk::sata_identity).transpose() {
            Ok(id) => ok.push((n, id)),
            Err(e) => bad.push(format!("node {}: {e}", n.name)),
        }
    }
    if !bad.is_empty() {
        return Err(BadInput(format!(
            "{} in {}:\n  {}\n  fix: rehearse with a copy of the cluster file whose `disk` names are ata- names, \
             and build that copy",
            if bad.len() == 1 {
                "a disk name cannot be emulated"
            } else {
                "disk names cannot be emulated"
            },
            manifest.cluster,
            bad.join("\n  ")
        ))
        .into());
    }
    Ok(ok)
}

fn select<'a>(manifest: &'a Manifest, names: &[String]) -> Result<Vec<&'a Node>> {
    if names.is_empty() {
        return Ok(manifest.nodes.iter().collect());
    }
    names.iter().map(|n| manifest.node(n)).collect()
}

fn settings(machine: &MachineArgs, previous: Option<&Settings>) -> Result<Settings> {
    let d = Settings {
        memory_mib: 2048,
        cpus: 2,
        disk_gib: 20,
        boot_gib: 16,
        ovmf_code: DEFAULT_OVMF_CODE.into(),
        ovmf_vars: DEFAULT_OVMF_VARS.into(),
        qemu: "qemu-system-x86_64".into(),
        stick: Stick::Full,
    };
    let base = previous.unwrap_or(&d);
    let s = Settings {
        memory_mib: machine.memory.unwrap_or(base.memory_mib),
        cpus: machine.cpus.unwrap_or(base.cpus),
        disk_gib: machine.disk_size.unwrap_or(base.disk_gib),
        boot_gib: machine.boot_size.unwrap_or(base.boot_gib),
        ovmf_code: machine.ovmf_code.clone().unwrap_or_else(|| base.ovmf_code.clone()),
        ovmf_vars: machine.ovmf_vars.clone().unwrap_or_else(|| base.ovmf_vars.clone()),
        qemu: machine.qemu.clone().unwrap_or_else(|| base.qemu.clone()),
        stick: machine.stick.unwrap_or(base.stick),
    };
    if s.memory_mib < 512 {
        return Err(BadInput(format!(
            "--memory {} MiB is too little for a node; give at least 512 (kubeadm wants 1700 on control-plane nodes)",
            s.memory_mib
        ))
        .into());
    }
    if s.cpus == 0 || s.disk_gib == 0 || s.boot_gib == 0 {
        return Err(BadInput("--cpus, --disk-size and --boot-size must be at least 1".into()).into());
    }
    for (path, flag) in [(&s.ovmf_code, "--ovmf-code"), (&s.ovmf_vars, "--ovmf-vars")] {
        if !path.is_file() {
            return Err(BadInput(format!(
                "the UEFI firmware file {} does not exist: install Debian's `ovmf` package (apt-get install ovmf), \
                 or give the file with {flag}",
                path.display()
            ))
            .into());
        }
    }
    Ok(s)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Identifies the image an overlay was made from: its line in SHA256SUMS (which `build`
/// rewrites with every image), else its size and modification time.
fn image_stamp(out: &Path, node: &Node) -> Result<String> {
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap_or_default();
    if let Some(line) = sums.lines().find(|l| l.ends_with(&format!("  {}", node.image))) {
        return Ok(line.to_string());
    }
    let image = out.join(&node.image);
    let meta = fs::metadata(&image).with_context(|| format!("reading {}", image.display()))?;
    Ok(format!("{} bytes, modified {:?}", meta.len(), meta.modified()?))
}

/// Appends a line to the node's serial log (QEMU appends after it), so each power-on and
/// power cut is visible in the log between the guest's own lines.
fn mark(files: &NodeDir, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.serial_log)
        .with_context(|| format!("opening {}", files.serial_log.display()))?;
    writeln!(f, "\n{text}")?;
    Ok(())
}

pub fn mark_power_cut(files: &NodeDir, node: &str) -> Result<()> {
    mark(
        files,
        &format!("[kubestick vm] power cut: {node} at {} (SIGKILL)", now()),
    )
}

/// Creates what the node needs that does not exist yet. A fresh boot overlay is the
/// equivalent of a freshly flashed USB stick; the SATA disk is kept unless destroyed.
fn prepare(out: &Path, saved: &Saved, node: &Node, files: &NodeDir, sata: bool, reflash: bool) -> Result<()> {
    let image = out.join(&node.image);
    let stamp = image_stamp(out, node)?;
    if reflash {
        for f in [&files.boot, &files.vars, &files.image_stamp] {
            match fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", f.display()));
                }
                _ => {}
            }
        }
    }
    if files.boot.exists() {
        let made_from = fs::read_to_string(&files.image_stamp).unwrap_or_default();
        if made_from.trim() != stamp.trim() {
            return Err(BadInput(format!(
                "{} changed since {}'s boot overlay was made from it (rebuilt?); an overlay only works over the \
                 image it was made from. Boot the new image as a re-flashed stick (the SATA disk is kept): \
                 `kubestick vm start {} --reflash`",
                image.display(),
                node.name,
                node.name
            ))
            .into());
        }
    } else {
        let size = (u64::from(saved.settings.boot_gib) * GIB).max(fs::metadata(&image)?.len());
        let partial = files.dir.join("boot.qcow2.partial");
        let _ = fs::remove_file(&partial);
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(&partial)
            .arg(size.to_string())
            .status()
            .context("running qemu-img (install it: apt-get install qemu-utils)")?;
        if !status.success() {
            bail!(
                "qemu-img could not create an overlay over {} ({status})",
                image.display()
            );
        }
        // The guest writes its keys and tokens into it.
        fs::set_permissions(&partial, fs::Permissions::from_mode(fsx::SECRET_MODE))?;
        fsx::write_atomic(&files.image_stamp, format!("{stamp}\n").as_bytes(), fsx::PUBLIC_MODE)?;
        fs::rename(&partial, &files.boot)?;
    }
    if !files.vars.exists() {
        let vars = fs::read(&saved.settings.ovmf_vars)
            .with_context(|| format!("reading {}", saved.settings.ovmf_vars.display()))?;
        fsx::write_atomic(&files.vars, &vars, fsx::SECRET_MODE)?;
    }
    if sata && !files.sata.exists() {
        let partial = files.dir.join("sata.raw.partial");
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(fsx::SECRET_MODE)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        f.set_len(u64::from(saved.settings.disk_gib) * GIB)?;
        f.sync_all()?;
        fs::rename(&partial, &files.sata)?;
    }
    Ok(())
}

fn start_node(
    state: &StateDir,
    saved: &Saved,
    accel: Accel,
    node: &Node,
    sata: Option<&SataIdentity>,
    reflash: bool,
    clock_ahead_days: Option<u32>,
) -> Result<bool> {
    let files = state.node(&node.name);
    if let Some(pid) = process::running(&files.pid, &files.pid) {
        if reflash {
            return Err(BadInput(format!(
                "{} is running (pid {pid}); stop it first (`kubestick vm stop {}`), as you would unplug a PC before \
                 re-flashing its stick",
                node.name, node.name
            ))
            .into());
        }
        return Ok(false);
    }
    prepare(&saved.out, saved, node, &files, sata.is_some(), reflash)?;
    let rtc_base = clock_ahead_days.map(|days| qemu::rtc_base(now() + u64::from(days) * 86_400));
    let args = qemu::node_args(&qemu::NodeVm {
        name: &node.name,
        accel,
        settings: &saved.settings,
        files: &files,
        mac: &node.mac,
        sata,
        hub: &state.hub_socket(),
        rtc_base: rtc_base.as_deref(),
    });
    qemu::check_contained(&args)?;
    mark(
        &files,
        &format!(
            "{} {} at {} ({}{}{})",
            serial::POWER_ON,
            node.name,
            now(),
            accel.as_str(),
            if reflash { ", re-flashed from the image" } else { "" },
            clock_ahead_days.map_or(String::new(), |d| format!(", clock {d} days ahead"))
        ),
    )?;
    process::run_qemu_daemon(&saved.settings.qemu, &args, &node.name)?;
    Ok(true)
}

pub fn run(req: &Request<'_>) -> Result<()> {
    let out = std::path::absolute(req.out)?;
    let manifest = Manifest::load(&out)?;
    let chosen = select(&manifest, req.nodes)?;
    let nodes = identities(&manifest, &chosen)?;
    for (n, _) in &nodes {
        let image = manifest.image_path(&out, n);
        if !image.is_file() {
            return Err(BadInput(format!(
                "{} does not exist: build the images with `kubestick build CLUSTER.toml -o {}`",
                image.display(),
                out.display()
            ))
            .into());
        }
    }
    let state = StateDir::resolve(&out, req.state);
    if state.root() == out {
        return Err(BadInput(format!(
            "the VM state directory must not be the image directory {}; leave out --state (it defaults to {}/vm)",
            out.display(),
            out.display()
        ))
        .into());
    }
    let previous = state.load()?;
    if let Some(p) = &previous
        && p.out != out
    {
        return Err(BadInput(format!(
            "{} holds the VMs of {}, not {}; give another --state DIR, or `kubestick vm destroy --state {}` first",
            state.root().display(),
            p.out.display(),
            out.display(),
            state.root().display()
        ))
        .into());
    }
    let settings = settings(req.machine, previous.as_ref().map(|p| &p.settings))?;
    let names: Vec<&str> = manifest.node_names();
    state.create(&names)?;
    let _lock = state.lock()?;
    let mut saved = previous.unwrap_or_else(|| Saved::new(out.clone(), settings.clone()));
    saved.settings = settings;
    hostnet::allocate_ports(&mut saved.ports, &manifest)?;

    let show = std::io::stderr().is_terminal();
    let probe = {
        let spinner = crate::progress::spinner(
            show && req.machine.accel == Choice::Auto,
            "checking whether KVM works (booting the image's kernel)",
        );
        let image = manifest.image_path(&out, nodes[0].0);
        let p = accel::decide(req.machine.accel, saved.accel.as_ref(), &saved.settings.qemu, &image)?;
        spinner.finish_and_clear();
        p
    };
    if probe.accel == Accel::Tcg {
        eprintln!(
            "notice: using TCG, QEMU's CPU emulator, which is much slower than KVM: {}",
            probe.reason
        );
    }
    saved.accel = Some(probe.clone());
    state.save(&saved)?;

    let segment = network::ensure(&state, &saved, &manifest)?;
    kubeconfig::write(
        &out,
        &state.kubeconfig(),
        manifest.api_vip,
        manifest.api_port,
        saved.ports.api,
    )?;
    let mut cut_off = Vec::new();
    let mut started = Vec::new();
    for (n, id) in &nodes {
        let files = state.node(&n.name);
        if segment.hub_restarted && process::running(&files.pid, &files.pid).is_some() {
            cut_off.push(n.name.clone());
        }
        if start_node(
            &state,
            &saved,
            probe.accel,
            n,
            id.as_ref(),
            req.reflash,
            req.clock_ahead_days,
        )? {
            started.push(n.name.clone());
        } else {
            println!("{} is already running.", n.name);
        }
    }
    print_summary(&state, &saved, &manifest, probe.accel, &started);
    if !cut_off.is_empty() {
        eprintln!(
            "warning: the segment's hub had stopped and was started again; {} lost the network: restart them with \
             `kubestick vm stop NODE` and `kubestick vm start NODE`",
            cut_off.join(", ")
        );
    }
    if let Some(timeout) = req.wait {
        // Nodes that were already running are waited for too: --wait promises they are up.
        let all: Vec<String> = nodes.iter().map(|(n, _)| n.name.clone()).collect();
        wait_booted(&state, &all, timeout, show)?;
    }
    Ok(())
}

fn print_summary(state: &StateDir, saved: &Saved, manifest: &Manifest, accel: Accel, started: &[String]) {
    if !started.is_empty() {
        println!(
            "Started {} ({}, {} CPU{}, {} MiB each{}) on a private network segment.",
            started.join(", "),
            accel.as_str(),
            saved.settings.cpus,
            if saved.settings.cpus == 1 { "" } else { "s" },
            saved.settings.memory_mib,
            match saved.settings.stick {
                Stick::Full => String::new(),
                other => format!(", booting from a {} stick", other.as_str()),
            }
        );
    }
    println!(
        "  API         https://127.0.0.1:{} -> {}:{}   KUBECONFIG={}",
        saved.ports.api,
        manifest.api_vip,
        manifest.api_port,
        state.kubeconfig().display()
    );
    if let (Some(vip), Some(http), Some(https)) = (
        manifest.ingress_vip,
        saved.ports.ingress_http,
        saved.ports.ingress_https,
    ) {
        println!("  ingress     http://127.0.0.1:{http} https://127.0.0.1:{https} -> {vip}:80,443");
    }
    for n in &manifest.nodes {
        if let Some(port) = saved.ports.ssh.get(&n.name) {
            println!(
                "  {:<11} ssh -p {port} {}@127.0.0.1   serial log {}",
                n.name,
                manifest.admin_user,
                state.node(&n.name).serial_log.display()
            );
        }
    }
    println!("Next: `kubestick vm status`, `kubestick vm console NODE`; `kubestick vm down` shuts them down.");
}

/// Waits until every node in `names` has printed its identity line in this power-on.
fn wait_booted(state: &StateDir, names: &[String], timeout: Duration, show: bool) -> Result<()> {
    let start = Instant::now();
    let spinner = crate::progress::spinner(show, "");
    loop {
        let pending: Vec<&String> = names
            .iter()
            .filter(|n| {
                let log = fs::read(state.node(n).serial_log).unwrap_or_default();
                let log = String::from_utf8_lossy(&log);
                serial::summarize(serial::since_power_on(&log)).report.is_none()
            })
            .collect();
        if pending.is_empty() {
            spinner.finish_and_clear();
            let secs = start.elapsed().as_secs();
            match names {
                [one] => println!("{one} booted and configured itself in {secs}s."),
                _ => println!("All {} nodes booted and configured themselves in {secs}s.", names.len()),
            }
            return Ok(());
        }
        if start.elapsed() > timeout {
            spinner.finish_and_clear();
            let n = pending[0];
            let log = fs::read(state.node(n).serial_log).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let tail: Vec<String> = serial::since_power_on(&log)
                .lines()
                .rev()
                .take(20)
                .map(serial::clean)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "{} did not finish booting within {}s; the end of {}:\n{}",
                pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                timeout.as_secs(),
                state.node(n).serial_log.display(),
                tail.join("\n")
            );
        }
        spinner.set_message(format!(
            "waiting for {} to boot",
            pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `vm start NODE`: the settings and image directory of the last `vm up`.
pub fn start(
    state_dir: &StateDir,
    node: &str,
    machine: &MachineArgs,
    reflash: bool,
    wait: Option<Duration>,
    clock_ahead_days: Option<u32>,
) -> Result<()> {
    let saved = state_dir.require()?;
    let out: PathBuf = saved.out.clone();
    run(&Request {
        out: &out,
        state: Some(state_dir.root()),
        nodes: &[node.to_string()],
        machine,
        reflash,
        wait,
        clock_ahead_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::tests::rehearsal;

    #[test]
    fn every_unemulatable_disk_is_named_at_once() {
        let mut m = rehearsal();
        m.nodes[0].disk = Some("/dev/disk/by-id/nvme-Samsung_SSD_980_S1".into());
        m.nodes[2].disk = Some("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4".into());
        let all: Vec<&Node> = m.nodes.iter().collect();
        let err = identities(&m, &all).unwrap_err();
        assert!(err.is::<BadInput>());
        let msg = err.to_string();
        assert!(msg.contains("node optiplex-1: /dev/disk/by-id/nvme-Samsung"), "{msg}");
        assert!(msg.contains("node optiplex-3: /dev/disk/by-id/wwn-"), "{msg}");
        assert!(!msg.contains("optiplex-2"), "{msg}");
        m.nodes[1].disk = None;
        let ids = identities(&m, &[&m.nodes[1]]).unwrap();
        assert_eq!(ids[0].1, None, "a node without disk gets no SATA disk");
    }

    #[test]
    fn settings_default_then_stick() {
        let none = MachineArgs::default();
        let s = settings(
            &MachineArgs {
                ovmf_code: Some("/dev/null".into()),
                ovmf_vars: Some("/dev/null".into()),
                ..none.clone()
            },
            None,
        );
        // /dev/null is not a regular file: the firmware check names the flag.
        let err = s.unwrap_err();
        assert!(err.is::<BadInput>() && err.to_string().contains("--ovmf-code"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("CODE.fd");
        let vars = dir.path().join("VARS.fd");
        fs::write(&code, b"").unwrap();
        fs::write(&vars, b"").unwrap();
        let first = settings(
            &MachineArgs {
                cpus: Some(1),
                ovmf_code: Some(code.clone()),
                ovmf_vars: Some(vars.clone()),
                ..none.clone()
            },
            None,
        )
        .unwrap();
        assert_eq!((first.cpus, first.memory_mib, first.disk_gib), (1, 2048, 20));
        // A later command without flags keeps what the first one chose.
        let again = settings(&none, Some(&first)).unwrap();
        assert_eq!(again, first);
        let err = settings(
            &MachineArgs {
                memory: Some(128),
                ..none
            },
            Some(&first),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--memory"), "{err}");
    }

    #[test]
    fn prepare_makes_an_overlay_keeps_the_disk_and_notices_a_rebuilt_image() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipped: qemu-img is not installed (scripts/host-deps.sh installs it)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let m = rehearsal();
        let node = &m.nodes[0];
        fs::write(out.join(&node.image), vec![0u8; 1 << 20]).unwrap();
        fs::write(out.join("SHA256SUMS"), format!("aaaa  {}\n", node.image)).unwrap();
        fs::write(out.join("VARS.fd"), b"nvram").unwrap();
        let state = StateDir::resolve(out, None);
        state.create(&["optiplex-1"]).unwrap();
        let mut settings = qemu_settings(out);
        settings.disk_gib = 1;
        let saved = Saved::new(out.to_path_buf(), settings);
        let files = state.node("optiplex-1");

        prepare(out, &saved, node, &files, true, false).unwrap();
        assert!(files.boot.exists() && files.vars.exists());
        assert_eq!(fs::metadata(&files.sata).unwrap().len(), GIB);
        fs::write(&files.sata, b"bluestore block device").unwrap();

        // A rebuilt image: refused until re-flashed; the re-flash keeps the SATA disk.
        fs::write(out.join("SHA256SUMS"), format!("bbbb  {}\n", node.image)).unwrap();
        let err = prepare(out, &saved, node, &files, true, false).unwrap_err();
        assert!(err.is::<BadInput>() && err.to_string().contains("--reflash"), "{err}");
        prepare(out, &saved, node, &files, true, true).unwrap();
        assert_eq!(
            fs::read_to_string(&files.image_stamp).unwrap().trim(),
            "bbbb  optiplex-1.img"
        );
        assert_eq!(fs::read(&files.sata).unwrap(), b"bluestore block device");
        // The image itself is never written.
        assert_eq!(fs::read(out.join(&node.image)).unwrap(), vec![0u8; 1 << 20]);
    }

    fn qemu_settings(dir: &Path) -> Settings {
        Settings {
            memory_mib: 1024,
            cpus: 1,
            disk_gib: 1,
            boot_gib: 1,
            ovmf_code: dir.join("VARS.fd"),
            ovmf_vars: dir.join("VARS.fd"),
            qemu: "qemu-system-x86_64".into(),
            stick: Stick::Full,
        }
    }
}

//! `kubestick vm`: rehearse a built cluster as VMs on this machine, before touching hardware.
//! Each node image boots under QEMU with UEFI, through a copy-on-write overlay (the image is
//! never modified), with a virtual SATA disk whose by-id name is the one cluster.toml gives,
//! the node's MAC, and all nodes on one private L2 segment (a hub on a unix socket) that the
//! host reaches only through forwards on 127.0.0.1. No root is needed.
//!
//! What the build says about the nodes comes from [`crate::image::manifest`] (`out/cluster.json`).
//! One module per job: [`state`] (the VM state directory), [`disk`] (by-id name → SATA model and serial), [`accel`] (KVM or
//! TCG), [`stick`] (the boot disk's speed), [`qemu`] (command lines), [`hostnet`] (addresses and forwards of the host's port),
//! [`hub`] (the segment), [`network`] (starting both), [`up`] and [`down`] (the lifecycle),
//! [`serial`] and [`status`] (what the nodes say), [`console`] and [`qmp`] (talking to a VM),
//! [`kubeconfig`] (a kubeconfig for the host), [`process`] (pid files).

pub mod accel;
pub mod console;
pub mod disk;
pub mod down;
pub mod hostnet;
pub mod hub;
pub mod kubeconfig;
pub mod network;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod serial;
pub mod state;
pub mod status;
pub mod stick;
pub mod up;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::image::manifest::Manifest;
use crate::vm::state::StateDir;

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub action: Action,
}

/// Where the VMs' state lives: `--state DIR`, or `vm/` inside the build output directory.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// The `kubestick build` output directory the VMs were started from
    #[arg(short, long, value_name = "OUT_DIR", default_value = "out")]
    pub out: PathBuf,
    /// The VM state directory [default: OUT_DIR/vm]
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl Where {
    fn dir(&self) -> StateDir {
        StateDir::resolve(&self.out, self.state.as_deref())
    }
}

/// How the VMs are made. Given to `vm up`, remembered for later `vm up`/`vm start`.
#[derive(Debug, Clone, Default, Args)]
pub struct MachineArgs {
    /// Memory per VM in MiB [default: 2048, or what the last `vm up` used]
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Virtual CPUs per VM [default: 2, or what the last `vm up` used]
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Size of each node's SATA disk in GiB, when it is first created [default: 20]
    #[arg(long, value_name = "GIB")]
    pub disk_size: Option<u32>,
    /// Size of the USB stick each node boots from, in GiB (the root filesystem grows into
    /// it on first boot) [default: 16]
    #[arg(long, value_name = "GIB")]
    pub boot_size: Option<u32>,
    /// Accelerator: auto uses KVM if it boots the image's kernel here, else TCG (slow)
    #[arg(long, value_enum, env = "KUBESTICK_ACCEL", default_value = "auto")]
    pub accel: accel::Choice,
    /// UEFI firmware code [default: /usr/share/OVMF/OVMF_CODE_4M.fd, Debian's `ovmf` package]
    #[arg(long, value_name = "FILE", env = "KUBESTICK_OVMF_CODE")]
    pub ovmf_code: Option<PathBuf>,
    /// UEFI variable store template, copied per VM [default: /usr/share/OVMF/OVMF_VARS_4M.fd]
    #[arg(long, value_name = "FILE", env = "KUBESTICK_OVMF_VARS")]
    pub ovmf_vars: Option<PathBuf>,
    /// QEMU binary [default: qemu-system-x86_64]
    #[arg(long, value_name = "FILE", env = "KUBESTICK_QEMU")]
    pub qemu: Option<PathBuf>,
    /// The USB stick each node boots from: `full` (the host disk's speed) or `usb2`, throttled
    /// to a cheap USB 2 stick (30 MB/s read, 8 MB/s write, 1500/500 random reads/writes a
    /// second) [default: full, or what the last `vm up` used]
    #[arg(long, value_enum, value_name = "SPEED")]
    pub stick: Option<stick::Stick>,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Boot the nodes of a built cluster as VMs, in the background
    ///
    /// Reads OUT_DIR/cluster.json and OUT_DIR/<node>.img, both written by `kubestick build`.
    /// Each node boots with UEFI from a copy-on-write overlay over its image (the image is
    /// never modified), with a SATA disk named as cluster.toml says (created on the first
    /// `up`, kept by `down`) and the node's MAC, on a private network segment. The host
    /// reaches it only through ports on 127.0.0.1: the API virtual IP (a kubeconfig for it is
    /// written to the state directory), the ingress virtual IP, and SSH to each node. Nothing
    /// is sent anywhere else. Serial logs are in the state directory (OUT_DIR/vm by default).
    Up {
        /// The `kubestick build` output directory
        #[arg(value_name = "OUT_DIR", default_value = "out")]
        out: PathBuf,
        /// Only these nodes [default: all]; others can be started later with `vm start`
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// The VM state directory [default: OUT_DIR/vm]
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        #[command(flatten)]
        machine: MachineArgs,
        /// Wait until every started node has booted and configured itself (its
        /// `kubestick: node=...` line on the console), at most SECONDS
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "900")]
        wait: Option<u64>,
    },
    /// Per node: QEMU running, address answering, first-boot progress; the API and who holds its virtual IP
    Status {
        #[command(flatten)]
        at: Where,
        /// Print JSON (for scripts)
        #[arg(long)]
        json: bool,
    },
    /// Attach this terminal to a node's serial console (Ctrl-] leaves)
    Console {
        /// The node
        node: String,
        #[command(flatten)]
        at: Where,
    },
    /// Cut a node's power: its QEMU is killed with SIGKILL, like pulling the cord (a drill)
    Stop {
        /// The node
        node: String,
        #[command(flatten)]
        at: Where,
    },
    /// Power a stopped node on again (with the settings of the last `vm up`)
    Start {
        /// The node
        node: String,
        /// Boot a fresh overlay from the image, as if its USB stick had been re-flashed
        /// (the SATA disk is kept)
        #[arg(long)]
        reflash: bool,
        /// Accelerator [default: the one the last `vm up` used]
        #[arg(long, value_enum, env = "KUBESTICK_ACCEL", default_value = "auto")]
        accel: accel::Choice,
        #[command(flatten)]
        at: Where,
        /// Wait until the node has booted, at most SECONDS
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "900")]
        wait: Option<u64>,
        /// Start the node with its clock DAYS ahead of the host's (QEMU -rtc base=), as if it
        /// had been off that long: a drill for certificate expiry. Later starts without it go
        /// back in time, which the node's certificates will not accept
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
        clock_ahead: Option<u32>,
    },
    /// Shut every VM down (ACPI power button, then power cut after --timeout) and stop the
    /// network segment; disks, overlays and logs are kept for the next `vm up`
    Down {
        #[command(flatten)]
        at: Where,
        /// Cut the power at once instead of shutting down
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guests to shut down
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
    /// Stop every VM and remove the VM state (disks, overlays, logs); the images stay
    Destroy {
        #[command(flatten)]
        at: Where,
    },
    /// The network segment's hub (started by `vm up`)
    #[command(hide = true)]
    Hub {
        /// Unix socket to serve
        #[arg(long)]
        socket: PathBuf,
        /// Where to write who claimed which address in ARP
        #[arg(long)]
        arp: PathBuf,
    },
}

pub fn run(args: VmArgs) -> Result<()> {
    match args.action {
        Action::Up {
            out,
            nodes,
            state,
            machine,
            wait,
        } => up::run(&up::Request {
            out: &out,
            state: state.as_deref(),
            nodes: &nodes,
            machine: &machine,
            reflash: false,
            wait: wait.map(Duration::from_secs),
            clock_ahead_days: None,
        }),
        Action::Status { at, json } => status::run(&at.dir(), json),
        Action::Console { node, at } => {
            let state = at.dir();
            let saved = state.require()?;
            Manifest::load(&saved.out)?.node(&node)?;
            console::attach(&state.node(&node).console, &node)
        }
        Action::Stop { node, at } => down::stop(&at.dir(), &node),
        Action::Start {
            node,
            reflash,
            accel,
            at,
            wait,
            clock_ahead,
        } => up::start(
            &at.dir(),
            &node,
            &MachineArgs {
                accel,
                ..MachineArgs::default()
            },
            reflash,
            wait.map(Duration::from_secs),
            clock_ahead,
        ),
        Action::Down { at, force, timeout } => down::down(&at.dir(), force, Duration::from_secs(timeout)),
        Action::Destroy { at } => down::destroy(&at.dir()),
        Action::Hub { socket, arp } => hub::run(&socket, &arp),
    }
}

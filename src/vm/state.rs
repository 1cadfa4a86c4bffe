//! The VM state directory (default `OUT/vm/`): everything `kubestick vm` creates, so the
//! build output stays untouched and `vm destroy` knows exactly what to remove.
//!
//! ```text
//! state.json            settings, forwarded ports, accelerator probe, the image directory
//! vm.lock               held while a command changes VMs
//! hub.sock hub.pid hub.log  the L2 segment (a `kubestick vm hub` process)
//! arp.json              who answered ARP for which address, as the hub saw it
//! net.pid net.log       the host's port on the segment (QEMU user-mode netdev, restrict=on)
//! kubeconfig            the admin kubeconfig pointed at the forwarded API port
//! <node>/boot.qcow2     copy-on-write overlay over OUT/<node>.img (the "USB stick")
//! <node>/vars.fd        the node's UEFI variables (a copy of OVMF_VARS)
//! <node>/sata.raw       the node's SATA disk (sparse), kept across down/up
//! <node>/serial.log     everything the node wrote to its serial console
//! <node>/console.sock   its serial console (`kubestick vm console`)
//! <node>/qmp.sock       QEMU's control socket (power button for `vm down`)
//! <node>/qemu.pid       pid of its QEMU while it runs
//! <node>/image.stamp    which image the overlay was made from
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::error::BadInput;
use crate::fsx;
use crate::vm::accel::Probe;
use crate::vm::stick::Stick;

/// `sun_path` holds 108 bytes including the terminating NUL.
const UNIX_PATH_MAX: usize = 107;
const FORMAT: u32 = 1;

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// One node's files in the state directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub dir: PathBuf,
    pub boot: PathBuf,
    pub vars: PathBuf,
    pub sata: PathBuf,
    pub serial_log: PathBuf,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub pid: PathBuf,
    pub image_stamp: PathBuf,
}

/// Per-node files `destroy` removes; anything else found in a node directory is left.
const NODE_FILES: &[&str] = &[
    "boot.qcow2",
    "vars.fd",
    "sata.raw",
    "serial.log",
    "console.sock",
    "qmp.sock",
    "qemu.pid",
    "image.stamp",
];
const TOP_FILES: &[&str] = &[
    "state.json",
    "hub.sock",
    "hub.pid",
    "hub.log",
    "arp.json",
    "net.pid",
    "net.log",
    "kubeconfig",
];

impl StateDir {
    /// `--state DIR` if given, else `OUT/vm`; made absolute, because the paths end up in
    /// QEMU command lines, which is how a pid is recognised as one of ours later.
    pub fn resolve(out: &Path, state: Option<&Path>) -> StateDir {
        let root = state.map_or_else(|| out.join("vm"), Path::to_path_buf);
        StateDir {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exists(&self) -> bool {
        self.state_file().exists()
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("vm.lock")
    }
    pub fn hub_socket(&self) -> PathBuf {
        self.root.join("hub.sock")
    }
    pub fn hub_pid(&self) -> PathBuf {
        self.root.join("hub.pid")
    }
    pub fn hub_log(&self) -> PathBuf {
        self.root.join("hub.log")
    }
    pub fn arp_table(&self) -> PathBuf {
        self.root.join("arp.json")
    }
    pub fn net_pid(&self) -> PathBuf {
        self.root.join("net.pid")
    }
    pub fn net_log(&self) -> PathBuf {
        self.root.join("net.log")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    pub fn node(&self, name: &str) -> NodeDir {
        let dir = self.root.join(name);
        NodeDir {
            boot: dir.join("boot.qcow2"),
            vars: dir.join("vars.fd"),
            sata: dir.join("sata.raw"),
            serial_log: dir.join("serial.log"),
            console: dir.join("console.sock"),
            qmp: dir.join("qmp.sock"),
            pid: dir.join("qemu.pid"),
            image_stamp: dir.join("image.stamp"),
            dir,
        }
    }

    /// Creates the directory (0700: the overlays hold the nodes' secrets) and checks that
    /// the unix sockets that will live in it have paths the kernel accepts.
    pub fn create(&self, nodes: &[&str]) -> Result<()> {
        let longest = nodes
            .iter()
            .map(|n| self.node(n).console)
            .chain([self.hub_socket()])
            .max_by_key(|p| p.as_os_str().len())
            .expect("at least the hub socket");
        let abs = std::path::absolute(&longest).unwrap_or(longest);
        if abs.as_os_str().len() > UNIX_PATH_MAX {
            return Err(BadInput(format!(
                "the VM state directory {} is too deep for unix sockets ({} is {} bytes, at most {UNIX_PATH_MAX}); \
                 give a shorter one with --state DIR",
                self.root.display(),
                abs.display(),
                abs.as_os_str().len()
            ))
            .into());
        }
        fsx::create_dir_mode(&self.root, fsx::PRIVATE_DIR_MODE)?;
        for n in nodes {
            fsx::create_dir_mode(&self.node(n).dir, fsx::PRIVATE_DIR_MODE)?;
        }
        Ok(())
    }

    /// Held while a command starts, stops or removes VMs, so two commands never race.
    pub fn lock(&self) -> Result<fs::File> {
        fsx::lock_exclusive(&self.lock_file())
    }

    pub fn load(&self) -> Result<Option<Saved>> {
        let path = self.state_file();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let saved: Saved = serde_json::from_str(&text)
                    .with_context(|| format!("reading {} (remove it with `kubestick vm destroy`)", path.display()))?;
                if saved.format != FORMAT {
                    anyhow::bail!(
                        "{} was written by another kubestick version (format {}); run `kubestick vm destroy` and `vm up` again",
                        path.display(),
                        saved.format
                    );
                }
                Ok(Some(saved))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The saved state, or the error a user sees when no VMs were ever set up here.
    pub fn require(&self) -> Result<Saved> {
        self.load()?.ok_or_else(|| {
            BadInput(format!(
                "no VMs here: {} does not exist; start them with `kubestick vm up OUT_DIR` (or pass the --state DIR `vm up` used)",
                self.state_file().display()
            ))
            .into()
        })
    }

    pub fn save(&self, saved: &Saved) -> Result<()> {
        let mut text = serde_json::to_string_pretty(saved)?;
        text.push('\n');
        fsx::write_atomic(&self.state_file(), text.as_bytes(), fsx::SECRET_MODE)
    }

    /// Removes what kubestick created here (never the images, which live elsewhere), then
    /// the directories if nothing else is left in them.
    pub fn remove(&self, nodes: &[String]) -> Result<()> {
        let gone = |p: PathBuf| match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        };
        for n in nodes {
            let dir = self.node(n).dir;
            for f in NODE_FILES {
                gone(dir.join(f))?;
            }
            let _ = fs::remove_dir(&dir);
        }
        for f in TOP_FILES {
            gone(self.root.join(f))?;
        }
        gone(self.lock_file())?;
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }
}

/// Options of `vm up` that later commands (`vm start`) reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Size of each node's SATA disk.
    pub disk_gib: u32,
    /// Virtual size of the boot disk (the USB stick); the root filesystem grows into it.
    pub boot_gib: u32,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    pub qemu: PathBuf,
    /// The boot disk's speed (state files from before this option: full speed).
    #[serde(default)]
    pub stick: Stick,
}

/// Host ports forwarded to the segment, chosen on the first `vm up` and kept, so the
/// kubeconfig and SSH commands stay valid across `down`/`up`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub api: u16,
    pub ingress_http: Option<u16>,
    pub ingress_https: Option<u16>,
    pub ssh: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub format: u32,
    /// The build output directory (absolute), where the images and cluster.json are.
    pub out: PathBuf,
    pub settings: Settings,
    pub ports: Ports,
    pub accel: Option<Probe>,
}

impl Saved {
    pub fn new(out: PathBuf, settings: Settings) -> Saved {
        Saved {
            format: FORMAT,
            out,
            settings,
            ports: Ports::default(),
            accel: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn settings() -> Settings {
        Settings {
            memory_mib: 2048,
            cpus: 2,
            disk_gib: 10,
            boot_gib: 16,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            qemu: "qemu-system-x86_64".into(),
            stick: Stick::Full,
        }
    }

    #[test]
    fn defaults_beside_the_images_and_can_be_moved() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(StateDir::resolve(Path::new("out"), None).root(), cwd.join("out/vm"));
        assert_eq!(
            StateDir::resolve(Path::new("out"), Some(Path::new("/tmp/x"))).root(),
            Path::new("/tmp/x")
        );
        let s = StateDir::resolve(Path::new("/srv/out"), None);
        assert_eq!(s.node("optiplex-1").sata, Path::new("/srv/out/vm/optiplex-1/sata.raw"));
    }

    #[test]
    fn saves_loads_and_removes_only_its_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::resolve(tmp.path(), None);
        assert!(state.load().unwrap().is_none());
        let err = state.require().unwrap_err();
        assert!(err.is::<BadInput>() && err.to_string().contains("vm up"), "{err}");

        state.create(&["n1"]).unwrap();
        assert_eq!(fs::metadata(state.root()).unwrap().permissions().mode() & 0o777, 0o700);
        let mut saved = Saved::new(tmp.path().to_path_buf(), settings());
        saved.ports.api = 40000;
        saved.ports.ssh.insert("n1".into(), 40001);
        state.save(&saved).unwrap();
        assert_eq!(state.load().unwrap().unwrap(), saved);

        fs::write(state.node("n1").sata, b"disk").unwrap();
        fs::write(state.node("n1").serial_log, b"log").unwrap();
        fs::write(state.root().join("mine.txt"), b"a user's file").unwrap();
        fs::write(tmp.path().join("n1.img"), b"image").unwrap();
        state.remove(&["n1".into()]).unwrap();
        assert!(!state.node("n1").dir.exists());
        assert!(!state.exists());
        // Someone else's file keeps the directory; the image beside it is untouched.
        assert!(state.root().join("mine.txt").exists());
        assert!(tmp.path().join("n1.img").exists());
    }

    #[test]
    fn refuses_socket_paths_the_kernel_cannot_bind() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(100));
        let err = StateDir::resolve(tmp.path(), Some(&deep)).create(&["n1"]).unwrap_err();
        assert!(err.is::<BadInput>());
        assert!(err.to_string().contains("--state"), "{err}");
        assert!(!deep.exists());
    }
}

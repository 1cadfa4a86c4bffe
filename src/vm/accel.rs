//! KVM when it really works, TCG otherwise. A trivial KVM guest is not enough: on some hosts
//! KVM starts but hangs as soon as a real kernel runs, so the probe boots the image's own
//! kernel (read from its EFI System Partition) until it panics for lack of a root
//! filesystem; `panic=-1` reboots at once and `-no-reboot` turns that into QEMU exiting.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::image::{ESP_SIZE, MIB};

/// How long the image's kernel may take to reach its panic under KVM. It takes about a
/// second where KVM works; where it hangs, it never gets there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model: the host's with KVM; with TCG, everything QEMU can emulate.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// KVM if the probe boots a kernel with it, else TCG
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The outcome of a probe, kept in state.json until the host reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub accel: Accel,
    /// /proc/sys/kernel/random/boot_id when probed: a reboot (new kernel, module options)
    /// can change the answer.
    pub boot_id: String,
    pub reason: String,
    /// Chosen with --accel rather than probed.
    #[serde(default)]
    pub forced: bool,
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Decides the accelerator: a choice given now wins, then the one made in this boot of the
/// host (probed, or given to an earlier `vm up`), then a new probe with `image`'s kernel.
pub fn decide(choice: Choice, cached: Option<&Probe>, qemu: &Path, image: &Path) -> Result<Probe> {
    let forced = |accel: Accel| Probe {
        accel,
        boot_id: boot_id(),
        reason: format!("{} chosen with --accel / KUBESTICK_ACCEL", accel.as_str()),
        forced: true,
    };
    match choice {
        Choice::Kvm => return Ok(forced(Accel::Kvm)),
        Choice::Tcg => return Ok(forced(Accel::Tcg)),
        Choice::Auto => {}
    }
    if let Some(p) = cached
        && p.boot_id == boot_id()
    {
        return Ok(p.clone());
    }
    probe(qemu, image)
}

fn probe(qemu: &Path, image: &Path) -> Result<Probe> {
    let tcg = |reason: String| Probe {
        accel: Accel::Tcg,
        boot_id: boot_id(),
        reason,
        forced: false,
    };
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok(tcg(format!("/dev/kvm is not usable ({e})")));
    }
    let dir = tempfile::tempdir()?;
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, kernel_from_image(image)?)?;
    let mut child = Command::new(qemu)
        .args(["-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "none"])
        .args(["-no-reboot", "-append", "panic=-1", "-kernel"])
        .arg(&kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", qemu.display()))?;
    let start = Instant::now();
    while start.elapsed() < PROBE_TIMEOUT {
        if let Some(status) = child.try_wait()? {
            return Ok(if status.success() {
                Probe {
                    accel: Accel::Kvm,
                    boot_id: boot_id(),
                    reason: format!("KVM booted the image's kernel in {:.1}s", start.elapsed().as_secs_f64()),
                    forced: false,
                }
            } else {
                tcg(format!("QEMU with KVM failed ({status})"))
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(tcg(format!(
        "KVM did not boot the image's kernel within {}s (it hangs on this host)",
        PROBE_TIMEOUT.as_secs()
    )))
}

/// `vmlinuz` from the image's EFI System Partition (FAT32 at 1 MiB; see crate::image).
pub fn kernel_from_image(image: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let region = crate::image::fat::Region::new(&mut file, MIB, ESP_SIZE);
    let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new())
        .with_context(|| format!("reading the EFI System Partition of {}", image.display()))?;
    let mut kernel = Vec::new();
    fs.root_dir()
        .open_file("vmlinuz")
        .with_context(|| format!("no vmlinuz on the EFI System Partition of {}", image.display()))?
        .read_to_end(&mut kernel)?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_choice_needs_no_probe() {
        let p = decide(
            Choice::Tcg,
            None,
            Path::new("/nonexistent/qemu"),
            Path::new("/nonexistent.img"),
        )
        .unwrap();
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.reason.contains("--accel") && p.forced);
    }

    #[test]
    fn a_probe_from_this_boot_is_reused_one_from_another_is_not() {
        let cached = Probe {
            accel: Accel::Kvm,
            boot_id: boot_id(),
            reason: "KVM booted the image's kernel in 1.0s".into(),
            forced: false,
        };
        let p = decide(
            Choice::Auto,
            Some(&cached),
            Path::new("/nonexistent/qemu"),
            Path::new("/x.img"),
        )
        .unwrap();
        assert_eq!(p, cached);
        let stale = Probe {
            boot_id: "another boot".into(),
            ..cached
        };
        // A new probe runs, which needs the image (or finds /dev/kvm unusable first).
        match decide(
            Choice::Auto,
            Some(&stale),
            Path::new("/nonexistent/qemu"),
            Path::new("/nonexistent.img"),
        ) {
            Ok(p) => assert_eq!(p.accel, Accel::Tcg, "{p:?}"),
            Err(e) => assert!(e.to_string().contains("/nonexistent.img"), "{e}"),
        }
    }

    #[test]
    fn reads_the_kernel_from_an_esp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(MIB + ESP_SIZE).unwrap();
        crate::image::fat::write_volume(
            crate::image::fat::Region::new(&mut file, MIB, ESP_SIZE),
            &crate::image::fat::Volume {
                fat_type: fatfs::FatType::Fat32,
                label: "EFI",
                volume_id: 1,
                bytes_per_cluster: 1024,
                epoch: 0,
            },
            &[("vmlinuz".into(), b"a kernel".as_slice())],
        )
        .unwrap();
        drop(file);
        assert_eq!(kernel_from_image(&path).unwrap(), b"a kernel");
    }
}

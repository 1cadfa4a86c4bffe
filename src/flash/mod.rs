//! `kubestick flash`: writing a node image to a USB stick, the last step before a PC boots.
//!
//! A wrong device name destroys someone's data, so the checks come first and nothing is
//! written unless all pass: the target must be a whole disk ([`devices::System::evaluate`]),
//! removable or on USB (unless `--force-non-removable`), not hold the running system, have
//! nothing mounted or stacked on it, be writable and at least as large as the image; the
//! image must be a non-empty regular file; and the user types the node name (or passes
//! `--yes`). Only then is the image written, first MiB last, flushed, read back past the
//! page cache and compared by SHA-256 ([`write`]), and the kernel asked to re-read the
//! partition table.
//!
//! The disks are described by sysfs, `/proc/self/mountinfo` and `/dev`. Three environment
//! variables move those roots so the tests can describe disks that do not exist:
//! `KUBESTICK_SYSFS_ROOT` (default `/sys`), `KUBESTICK_PROC_ROOT` (default `/proc`) and
//! `KUBESTICK_DEV_ROOT` (default `/dev`). A device named `/dev/...` on the command line, or
//! by an absolute symlink, is looked up under the dev root. In a fake dev root a device node
//! may be a regular file of the device's size; it is then matched to sysfs by name and
//! written like a device, minus the block-device-only steps (`O_EXCL`, `O_DIRECT` writes,
//! `BLKRRPART`).

pub mod devices;
pub mod write;

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use devices::{MountedPart, Roots, System, Target, format_size};
use write::{Device, Readback};

#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The node image to write, e.g. out/optiplex-1.img
    #[arg(required_unless_present = "list")]
    pub image: Option<PathBuf>,
    /// The whole disk to overwrite: /dev/sdX or /dev/disk/by-id/usb-...
    #[arg(required_unless_present = "list")]
    pub device: Option<PathBuf>,
    /// Show the removable and USB disks (model, size, serial, mounts); write nothing
    #[arg(long, conflicts_with_all = ["image", "device"])]
    pub list: bool,
    /// Overwrite DEVICE without asking for the node name first
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Allow a disk that is neither removable nor on USB (an internal disk): make sure it
    /// is the right one
    #[arg(long)]
    pub force_non_removable: bool,
}

/// A mistake by the user (wrong device, refused target, declined confirmation): the CLI
/// exits 2 for these. Each names the device or file and says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum FlashRefusal {
    #[error("give IMAGE and DEVICE (`kubestick flash out/<node>.img /dev/sdX`), or --list")]
    Usage,
    #[error("the image {} {why}; give a node image such as out/<node>.img", image.display())]
    ImageUnusable { image: PathBuf, why: String },
    #[error("the image {} is empty; build it again", image.display())]
    ImageEmpty { image: PathBuf },
    #[error("{device} does not exist; `kubestick flash --list` shows the sticks this machine sees")]
    NoSuchDevice { device: String },
    #[error("{device} is not a disk ({why}); name a whole disk such as /dev/sdb (`kubestick flash --list` shows them)")]
    NotADisk { device: String, why: String },
    #[error("{device} is a partition of {disk}; an image replaces the whole disk, so name the disk: {disk}")]
    Partition { device: String, disk: String },
    #[error(
        "{device} holds the running system (/ is mounted from {root_source}); flashing it would destroy this \
         machine's own installation. Choose a stick from `kubestick flash --list`"
    )]
    SystemDisk { device: String, root_source: String },
    #[error(
        "{device} ({description}) is neither removable nor on USB, so it is probably an internal disk; \
         check the name with `kubestick flash --list`, or pass --force-non-removable if you are sure"
    )]
    NotRemovable { device: String, description: String },
    #[error(
        "{device} has mounted partitions: {}; unmount them first: umount {}",
        join(.mounts), umount_args(.mounts)
    )]
    Mounted { device: String, mounts: Vec<MountedPart> },
    #[error(
        "{device} is in use by {} (LVM, RAID or an open encrypted volume); release it first \
         (`vgchange -an VG`, `cryptsetup close NAME` or `mdadm --stop`)",
        .holders.join(", ")
    )]
    InUse { device: String, holders: Vec<String> },
    #[error(
        "{device} is busy: the kernel refused exclusive access (mounted, swap, RAID, LVM, or another \
         program has it open); stop whatever uses it and try again"
    )]
    Busy { device: String },
    #[error("{device} is read-only (is the write-protect switch on the card or stick set?)")]
    ReadOnly { device: String },
    #[error("{device} has no medium (its size is 0); insert the card, or check the name with `kubestick flash --list`")]
    NoMedium { device: String },
    #[error(
        "{device} is too small: it holds {} ({device_size} bytes), the image needs {} ({image_size} bytes); \
         use a stick of at least {1}",
        format_size(*.device_size), format_size(*.image_size)
    )]
    TooSmall {
        device: String,
        device_size: u64,
        image_size: u64,
    },
    #[error("refusing to write to {device}:{}", bullets(.reasons))]
    Several { device: String, reasons: Vec<FlashRefusal> },
    #[error(
        "stdin is not a terminal, so kubestick cannot ask before overwriting {device}; \
         pass --yes to confirm on the command line"
    )]
    NoTerminal { device: String },
    #[error("{} the node name `{expected}`; nothing was written to {device}", typed_description(.typed))]
    NotConfirmed {
        device: String,
        typed: String,
        expected: String,
    },
}

fn join(mounts: &[MountedPart]) -> String {
    mounts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn umount_args(mounts: &[MountedPart]) -> String {
    let mut points: Vec<String> = mounts
        .iter()
        .map(|m| shell_quote(&m.mount_point.to_string_lossy()))
        .collect();
    points.dedup();
    points.join(" ")
}

fn bullets(reasons: &[FlashRefusal]) -> String {
    reasons.iter().map(|r| format!("\n  - {r}")).collect()
}

fn typed_description(typed: &str) -> String {
    if typed.is_empty() {
        "nothing was typed instead of".to_string()
    } else {
        format!("`{typed}` is not")
    }
}

/// Quotes for a POSIX shell when needed, so the suggested command can be pasted.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `kubestick flash`: `--list`, or check, confirm, write, verify.
pub fn run(args: &FlashArgs) -> Result<()> {
    let roots = Roots::from_env();
    if args.list {
        return list(&roots);
    }
    let (Some(image), Some(device)) = (&args.image, &args.device) else {
        return Err(FlashRefusal::Usage.into());
    };
    let image_size = check_image(image)?;
    let system = System::read(&roots)?;
    let target = system.evaluate(device, image_size, args.force_non_removable)?;
    let name = target.disk.path();

    let mut sink = match Device::open(&target.node) {
        Ok(d) => d,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => FlashRefusal::Busy { device: name }.into(),
                Some(libc::EROFS) => FlashRefusal::ReadOnly { device: name }.into(),
                Some(libc::EACCES | libc::EPERM) => anyhow::Error::new(e).context(format!(
                    "opening {name} for writing; writing to a disk needs root: use sudo"
                )),
                _ => anyhow::Error::new(e).context(format!("opening {name} for writing")),
            });
        }
    };
    let node = node_name(image);
    confirm(&target, device, image, image_size, &node, args.yes)?;

    let progress = io::stderr().is_terminal();
    let written = write::write_verified(image, &mut sink, &target.node, &name, progress)?;
    let rate = (written.bytes as f64 / written.write_time.as_secs_f64().max(1e-9)) as u64;
    println!(
        "Wrote {} ({}) to {name} in {:.1} s ({}/s).",
        image.display(),
        format_size(written.bytes),
        written.write_time.as_secs_f64(),
        format_size(rate)
    );
    let how = match written.readback {
        Readback::Direct => "bypassing the page cache",
        Readback::DroppedCache => "after dropping it from the page cache",
    };
    println!(
        "Verified: read {} back from {name} {how}; its SHA-256 matches the image (sha256:{}).",
        format_size(written.bytes),
        written.sha256
    );
    if sink.is_block_device()
        && let Err(e) = sink.reread_partition_table()
    {
        // The stick is written and verified; only this machine's view of it is stale.
        eprintln!(
            "warning: the kernel did not re-read the partition table of {name} ({e}); \
             unplug and replug it before looking at its partitions here"
        );
    }
    println!("{name} is ready for {node}.");
    Ok(())
}

/// The image's size, once it is known to be a non-empty regular file.
fn check_image(image: &Path) -> Result<u64> {
    let unusable = |why: &str| FlashRefusal::ImageUnusable {
        image: image.to_path_buf(),
        why: why.to_string(),
    };
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unusable("does not exist").into()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", image.display())),
    };
    if meta.is_dir() {
        return Err(unusable("is a directory").into());
    }
    if !meta.is_file() {
        return Err(unusable("is not a regular file").into());
    }
    if meta.len() == 0 {
        return Err(FlashRefusal::ImageEmpty {
            image: image.to_path_buf(),
        }
        .into());
    }
    Ok(meta.len())
}

/// `out/optiplex-1.img` → `optiplex-1`: what the user types to confirm.
fn node_name(image: &Path) -> String {
    image
        .file_stem()
        .map_or_else(|| image.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// Shows what will be destroyed and, unless `yes`, waits for the node name on stdin.
fn confirm(target: &Target, given: &Path, image: &Path, image_size: u64, node: &str, yes: bool) -> Result<()> {
    let device = target.disk.path();
    let mut err = io::stderr().lock();
    let alias = if given.as_os_str() == device.as_str() {
        String::new()
    } else {
        format!(" ({})", given.display())
    };
    writeln!(err, "Everything on {device}{alias} will be destroyed:")?;
    writeln!(err, "  {}", target.disk.description())?;
    if !target.disk.partitions.is_empty() {
        let parts: Vec<_> = target
            .disk
            .partitions
            .iter()
            .map(|p| devices::dev_path(&p.name))
            .collect();
        writeln!(err, "  partitions: {}", parts.join(", "))?;
    }
    writeln!(
        err,
        "It will hold node {node}: {} ({}).",
        image.display(),
        format_size(image_size)
    )?;
    if yes {
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        return Err(FlashRefusal::NoTerminal { device }.into());
    }
    write!(err, "Type the node name ({node}) to continue: ")?;
    err.flush()?;
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    let typed = answer.trim();
    if typed != node {
        return Err(FlashRefusal::NotConfirmed {
            device,
            typed: typed.to_string(),
            expected: node.to_string(),
        }
        .into());
    }
    Ok(())
}

/// `--list`: the disks a stick could be, with what a person needs to recognise theirs.
fn list(roots: &Roots) -> Result<()> {
    let system = System::read(roots)?;
    let candidates = system.candidates();
    if candidates.is_empty() {
        println!("No removable or USB disks found; plug in a stick (internal disks are never listed).");
        return Ok(());
    }
    let system_disks = system.root_disks();
    println!("Removable and USB disks:");
    for disk in candidates {
        let serial = disk
            .serial
            .as_deref()
            .map_or_else(|| "no serial".to_string(), |s| format!("serial {s}"));
        println!(
            "  {:<12} {:>9}  {}, {serial}",
            disk.path(),
            format_size(disk.size),
            disk.model_name()
        );
        let mut notes = Vec::new();
        if let Some(id) = system.by_id(disk) {
            notes.push(id);
        }
        let mounts = system.mounts_on(disk);
        if !mounts.is_empty() {
            notes.push(format!("mounted: {}", join(&mounts)));
        }
        if system_disks.contains(&disk.name) {
            notes.push("holds the running system; cannot be flashed".to_string());
        }
        if disk.read_only {
            notes.push("read-only (write-protect switch?)".to_string());
        }
        for note in notes {
            // Under the model, past the device and size columns.
            println!("{:26}{note}", "");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Debug, Parser)]
    #[command(help_expected = true)]
    struct Cli {
        #[command(flatten)]
        flash: FlashArgs,
    }

    #[test]
    fn arguments_are_consistent_and_documented() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["k", "--list"]).is_ok());
        assert!(Cli::try_parse_from(["k", "a.img"]).is_err());
        assert!(Cli::try_parse_from(["k", "--list", "a.img"]).is_err());
        let cli = Cli::try_parse_from(["k", "a.img", "/dev/sdb", "--yes"]).unwrap();
        assert!(cli.flash.yes && !cli.flash.force_non_removable);
    }

    #[test]
    fn node_names_and_quoting() {
        assert_eq!(node_name(Path::new("out/optiplex-1.img")), "optiplex-1");
        assert_eq!(shell_quote("/media/me/STICK"), "/media/me/STICK");
        assert_eq!(shell_quote("/media/me/MY STICK"), "'/media/me/MY STICK'");
        assert_eq!(shell_quote("/mnt/it's"), r"'/mnt/it'\''s'");
    }

    #[test]
    fn several_reasons_are_listed_one_per_line() {
        let r = FlashRefusal::Several {
            device: "/dev/sdb".into(),
            reasons: vec![
                FlashRefusal::ReadOnly {
                    device: "/dev/sdb".into(),
                },
                FlashRefusal::TooSmall {
                    device: "/dev/sdb".into(),
                    device_size: 1_000_000,
                    image_size: 2_000_000,
                },
            ],
        };
        assert_eq!(
            r.to_string(),
            "refusing to write to /dev/sdb:\n  - /dev/sdb is read-only (is the write-protect switch on the card \
             or stick set?)\n  - /dev/sdb is too small: it holds 1.0 MB (1000000 bytes), the image needs 2.0 MB \
             (2000000 bytes); use a stick of at least 2.0 MB"
        );
    }
}

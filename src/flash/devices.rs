//! What the kernel says about the disks: sysfs attributes, partitions, holders and mounts,
//! read through [`Roots`] so that tests can describe disks that do not exist. Everything
//! here only reads; deciding happens in [`System::evaluate`].

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result};

use super::FlashRefusal;

/// Where sysfs, procfs and the device nodes are. Tests point these at fake trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sysfs: PathBuf,
    pub proc: PathBuf,
    pub dev: PathBuf,
}

impl Roots {
    /// The running system's `/sys`, `/proc` and `/dev`.
    pub fn system() -> Roots {
        Roots {
            sysfs: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }

    /// `KUBESTICK_SYSFS_ROOT`, `KUBESTICK_PROC_ROOT` and `KUBESTICK_DEV_ROOT`, each
    /// defaulting to the real directory.
    pub fn from_env() -> Roots {
        let var = |name: &str, default: &str| {
            let dir = std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from);
            std::path::absolute(&dir).unwrap_or(dir)
        };
        Roots {
            sysfs: var("KUBESTICK_SYSFS_ROOT", "/sys"),
            proc: var("KUBESTICK_PROC_ROOT", "/proc"),
            dev: var("KUBESTICK_DEV_ROOT", "/dev"),
        }
    }

    /// `/dev/sdb` → `<dev root>/sdb`, so that users (and tests) can always name devices
    /// the way they appear on a real system.
    fn in_dev_root(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/dev") {
            Ok(rest) if self.dev != Path::new("/dev") => self.dev.join(rest),
            _ => path.to_path_buf(),
        }
    }

    /// Follows symlinks as if the dev root were `/dev`: an absolute link to `/dev/...`
    /// stays inside the root, a relative one (`../../sdb` in `disk/by-id/`) is joined.
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let mut path = normalize(&std::path::absolute(self.in_dev_root(path))?);
        // The kernel's own limit on nested symlinks.
        for _ in 0..40 {
            match fs::read_link(&path) {
                Ok(target) if target.is_absolute() => path = normalize(&self.in_dev_root(&target)),
                Ok(target) => path = normalize(&path.parent().unwrap_or(Path::new("/")).join(target)),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Ok(path),
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "too many levels of symbolic links at {}",
            path.display()
        )))
    }

    /// The kernel name of a node inside the dev root: `<root>/sdb` → `sdb`,
    /// `<root>/cciss/c0d0` → `cciss!c0d0` (sysfs spells `/` as `!`).
    fn kernel_name(&self, resolved: &Path) -> Option<String> {
        let rel = resolved.strip_prefix(&self.dev).ok()?;
        let name = rel.to_str()?.replace('/', "!");
        (!name.is_empty()).then_some(name)
    }
}

/// Lexically removes `.` and `..`; enough for the relative links udev creates.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A device number, as in sysfs `dev` files and the third field of mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn parse(s: &str) -> Option<DevNum> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    fn of_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub dev: Option<DevNum>,
}

/// A whole disk as `/sys/block/<name>` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `sdb`, `mmcblk0`, `dm-0`.
    pub name: String,
    pub dev: Option<DevNum>,
    /// Bytes (sysfs counts 512-byte sectors whatever the device's block size).
    pub size: u64,
    /// The `removable` attribute: the medium can be taken out of the drive (card readers,
    /// many sticks).
    pub removable: bool,
    /// Attached through USB: its sysfs path runs through a USB controller.
    pub usb: bool,
    /// An SD card in a built-in reader (`device/type` is `SD`; eMMC says `MMC`).
    pub sd_card: bool,
    pub read_only: bool,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub partitions: Vec<Partition>,
    /// What is stacked on this disk or its partitions: `dm-0`, `md127`.
    pub holders: Vec<String>,
    /// What this disk is stacked on (for `dm-*` and `md*`).
    pub slaves: Vec<String>,
    /// The device-mapper name (`vg-root`) of a `dm-*` disk.
    pub dm_name: Option<String>,
}

impl Disk {
    pub fn path(&self) -> String {
        dev_path(&self.name)
    }

    /// What `--list` offers and a flash accepts without `--force-non-removable`.
    pub fn is_portable(&self) -> bool {
        self.removable || self.usb || self.sd_card
    }

    /// Kernel-made block devices that are never a stick: loop files, RAM disks, compressed
    /// swap, device-mapper and RAID volumes, optical and floppy drives.
    pub fn is_virtual(&self) -> bool {
        self.kind().is_some()
    }

    fn kind(&self) -> Option<&'static str> {
        const KINDS: [(&str, &str); 8] = [
            ("loop", "a loop device"),
            ("zram", "a compressed RAM disk"),
            ("ram", "a RAM disk"),
            ("dm-", "a device-mapper volume"),
            ("md", "a software RAID array"),
            ("sr", "an optical drive"),
            ("fd", "a floppy drive"),
            ("nbd", "a network block device"),
        ];
        KINDS
            .iter()
            .find(|(prefix, _)| self.name.starts_with(prefix))
            .map(|(_, kind)| *kind)
    }

    /// `SanDisk Cruzer Blade`, `a loop device`, or `unknown model`.
    pub fn model_name(&self) -> String {
        if let Some(kind) = self.kind() {
            return kind.to_string();
        }
        let name = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            "unknown model".to_string()
        } else {
            name
        }
    }

    /// `SanDisk Cruzer Blade, 32.0 GB, serial 4C53…`: what a person reads on the stick.
    pub fn description(&self) -> String {
        let serial = self
            .serial
            .as_deref()
            .map_or_else(|| "no serial".to_string(), |s| format!("serial {s}"));
        format!("{}, {}, {serial}", self.model_name(), format_size(self.size))
    }
}

/// `/dev/<name>`, turning sysfs's `!` back into `/`.
pub fn dev_path(name: &str) -> String {
    format!("/dev/{}", name.replace('!', "/"))
}

/// Sizes the way the label on a stick states them (decimal units): a "32 GB" stick holds
/// about 31.0 GB, which a person recognises; 28.9 GiB they would not.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount source: `/dev/sdb1`, `/dev/mapper/vg-root`, `tmpfs`, `overlay`.
    pub source: String,
}

/// Parses mountinfo (proc(5)): `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3
/// /dev/root rw`. The optional fields before `-` vary in number; paths escape space, tab,
/// newline and backslash as octal (`\040`). Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let dev = DevNum::parse(left.nth(2)?)?;
            let mount_point = PathBuf::from(unescape(left.nth(1)?));
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let source = unescape(right.next()?);
            Some(Mount {
                dev,
                mount_point,
                fstype,
                source,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mount that keeps a disk busy: shown to the user and turned into a `umount` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedPart {
    /// `/dev/sdc1` (or the mount source, e.g. `/dev/mapper/luks-…`).
    pub device: String,
    pub mount_point: PathBuf,
}

impl fmt::Display for MountedPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.device, self.mount_point.display())
    }
}

/// A target that passed every check: what will be overwritten, and the node to open.
#[derive(Debug, Clone)]
pub struct Target {
    pub disk: Disk,
    /// The device node to open (inside the dev root).
    pub node: PathBuf,
    /// True for a real block device, false for a stand-in regular file (tests).
    pub block_device: bool,
}

/// The disks and mounts of one system, read once.
#[derive(Debug, Clone)]
pub struct System {
    pub roots: Roots,
    pub disks: Vec<Disk>,
    pub mounts: Vec<Mount>,
}

impl System {
    pub fn read(roots: &Roots) -> Result<System> {
        let block = roots.sysfs.join("block");
        let mut disks = Vec::new();
        let entries = fs::read_dir(&block).with_context(|| format!("listing the disks in {}", block.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing the disks in {}", block.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A disk unplugged while we look is simply not there.
            if let Ok(disk) = read_disk(roots, &name) {
                disks.push(disk);
            }
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        let mountinfo = roots.proc.join("self/mountinfo");
        let text =
            fs::read_to_string(&mountinfo).with_context(|| format!("reading the mounts in {}", mountinfo.display()))?;
        Ok(System {
            roots: roots.clone(),
            disks,
            mounts: parse_mountinfo(&text),
        })
    }

    /// What `--list` shows: whole, non-empty, removable or USB disks.
    pub fn candidates(&self) -> Vec<&Disk> {
        self.disks
            .iter()
            .filter(|d| !d.is_virtual() && d.is_portable() && d.size > 0)
            .collect()
    }

    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// The kernel name of the disk or partition with this device number.
    fn name_of(&self, dev: DevNum) -> Option<&str> {
        self.disks.iter().find_map(|d| {
            if d.dev == Some(dev) {
                return Some(d.name.as_str());
            }
            d.partitions
                .iter()
                .find(|p| p.dev == Some(dev))
                .map(|p| p.name.as_str())
        })
    }

    /// The whole disk a partition belongs to.
    fn parent_of(&self, partition: &str) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| d.partitions.iter().any(|p| p.name == partition))
    }

    /// The physical disks under a disk or partition: a partition's disk; for `dm-*` and
    /// `md*`, whatever they are stacked on, recursively (LVM on LUKS on a partition).
    fn disks_under(&self, name: &str, depth: u32) -> Vec<String> {
        if depth > 16 {
            return Vec::new();
        }
        if let Some(disk) = self.parent_of(name) {
            return vec![disk.name.clone()];
        }
        match self.disk(name) {
            Some(disk) if !disk.slaves.is_empty() => {
                let mut out: Vec<String> = disk
                    .slaves
                    .iter()
                    .flat_map(|s| self.disks_under(s, depth + 1))
                    .collect();
                out.sort();
                out.dedup();
                out
            }
            Some(disk) => vec![disk.name.clone()],
            None => Vec::new(),
        }
    }

    /// The disks a mount lives on: by device number, or by its source path when the
    /// filesystem reports an anonymous device (btrfs: `0:27`).
    fn disks_of_mount(&self, mount: &Mount) -> Vec<String> {
        if let Some(name) = self.name_of(mount.dev) {
            return self.disks_under(name, 0);
        }
        if mount.source.starts_with("/dev/")
            && let Ok(resolved) = self.roots.resolve(Path::new(&mount.source))
        {
            let by_number = fs::metadata(&resolved)
                .ok()
                .filter(|m| m.file_type().is_block_device())
                .and_then(|m| self.name_of(DevNum::of_rdev(m.rdev())).map(str::to_string));
            if let Some(name) = by_number.or_else(|| self.roots.kernel_name(&resolved)) {
                return self.disks_under(&name, 0);
            }
        }
        Vec::new()
    }

    /// The mounts on `disk`, its partitions, or anything stacked on them.
    pub fn mounts_on(&self, disk: &Disk) -> Vec<MountedPart> {
        self.mounts
            .iter()
            .filter(|m| self.disks_of_mount(m).contains(&disk.name))
            .map(|m| MountedPart {
                device: if m.source.starts_with("/dev/") {
                    m.source.clone()
                } else {
                    self.name_of(m.dev).map_or_else(|| m.dev.to_string(), dev_path)
                },
                mount_point: m.mount_point.clone(),
            })
            .collect()
    }

    /// The disks holding the running system's root filesystem.
    pub fn root_disks(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .mounts
            .iter()
            .filter(|m| m.mount_point == Path::new("/"))
            .flat_map(|m| self.disks_of_mount(m))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn root_source(&self) -> String {
        self.mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == Path::new("/"))
            .map_or_else(String::new, |m| m.source.clone())
    }

    /// Finds the whole disk `device` names (a node in the dev root or a symlink to one,
    /// such as `/dev/disk/by-id/usb-…`) and refuses partitions and non-disks.
    pub fn resolve(&self, device: &Path) -> Result<(&Disk, PathBuf, bool), FlashRefusal> {
        let given = device.display().to_string();
        let not_found = || FlashRefusal::NoSuchDevice { device: given.clone() };
        let resolved = self.roots.resolve(device).map_err(|_| not_found())?;
        let meta = fs::metadata(&resolved).map_err(|_| not_found())?;
        let block = meta.file_type().is_block_device();
        let name = if block {
            let dev = DevNum::of_rdev(meta.rdev());
            self.name_of(dev)
                .map(str::to_string)
                .ok_or_else(|| FlashRefusal::NotADisk {
                    device: given.clone(),
                    why: format!("the kernel lists no disk with device number {dev} in /sys/block"),
                })?
        } else {
            // Only a stand-in for a device node (the tests' fake /dev) is looked up by name;
            // a real /dev holds no regular files for disks.
            let why = if meta.is_dir() {
                "it is a directory"
            } else if meta.file_type().is_char_device() {
                "it is a character device, not a block device"
            } else {
                "it is a regular file, not a block device"
            };
            let not_a_disk = || FlashRefusal::NotADisk {
                device: given.clone(),
                why: why.to_string(),
            };
            if !meta.is_file() {
                return Err(not_a_disk());
            }
            let name = self.roots.kernel_name(&resolved).ok_or_else(not_a_disk)?;
            if self.disk(&name).is_none() && self.parent_of(&name).is_none() {
                return Err(not_a_disk());
            }
            name
        };
        if let Some(disk) = self.parent_of(&name) {
            return Err(FlashRefusal::Partition {
                device: dev_path(&name),
                disk: disk.path(),
            });
        }
        let disk = self.disk(&name).ok_or_else(not_found)?;
        Ok((disk, resolved, block))
    }

    /// Everything that makes `device` a wrong target for an image of `image_size` bytes.
    /// Several reasons are reported together so one run shows everything to fix.
    pub fn evaluate(&self, device: &Path, image_size: u64, force_non_removable: bool) -> Result<Target, FlashRefusal> {
        let (disk, node, block_device) = self.resolve(device)?;
        let mut reasons = Vec::new();
        if self.root_disks().contains(&disk.name) {
            // Nothing else matters, and "unmount /" or "--force" would be bad advice.
            return Err(FlashRefusal::SystemDisk {
                device: disk.path(),
                root_source: self.root_source(),
            });
        }
        if !force_non_removable && !disk.is_portable() {
            reasons.push(FlashRefusal::NotRemovable {
                device: disk.path(),
                description: disk.description(),
            });
        }
        let mounts = self.mounts_on(disk);
        if !mounts.is_empty() {
            reasons.push(FlashRefusal::Mounted {
                device: disk.path(),
                mounts,
            });
        } else if !disk.holders.is_empty() {
            // Mounted stacks are reported above; this is LVM, RAID or an open LUKS volume.
            reasons.push(FlashRefusal::InUse {
                device: disk.path(),
                holders: disk
                    .holders
                    .iter()
                    .map(|h| match self.disk(h).and_then(|d| d.dm_name.as_deref()) {
                        Some(dm) => format!("{h} ({dm})"),
                        None => h.clone(),
                    })
                    .collect(),
            });
        }
        if disk.read_only {
            reasons.push(FlashRefusal::ReadOnly { device: disk.path() });
        }
        if disk.size == 0 && !disk.is_virtual() {
            reasons.push(FlashRefusal::NoMedium { device: disk.path() });
        } else if disk.size < image_size {
            reasons.push(FlashRefusal::TooSmall {
                device: disk.path(),
                device_size: disk.size,
                image_size,
            });
        }
        match reasons.len() {
            0 => Ok(Target {
                disk: disk.clone(),
                node,
                block_device,
            }),
            1 => Err(reasons.remove(0)),
            _ => Err(FlashRefusal::Several {
                device: disk.path(),
                reasons,
            }),
        }
    }

    /// A stable name for the disk in `<dev>/disk/by-id`, preferring the USB one.
    pub fn by_id(&self, disk: &Disk) -> Option<String> {
        let dir = self.roots.dev.join("disk/by-id");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let resolved = self.roots.resolve(&e.path()).ok()?;
                (self.roots.kernel_name(&resolved)? == disk.name).then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        names.sort_by_key(|n| (!n.starts_with("usb-"), n.clone()));
        names.first().map(|n| format!("/dev/disk/by-id/{n}"))
    }
}

/// Reads one sysfs attribute, trimmed; `None` when absent or empty.
pub fn attr(dir: &Path, name: &str) -> Option<String> {
    let value = fs::read_to_string(dir.join(name)).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn read_disk(roots: &Roots, name: &str) -> io::Result<Disk> {
    let dir = roots.sysfs.join("block").join(name);
    // /sys/block/<name> links to the device's place in the hardware tree, e.g.
    // devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/.../block/sdb.
    let real = fs::canonicalize(&dir)?;
    let devices = roots.sysfs.join("devices");
    let in_tree = real.strip_prefix(&roots.sysfs).unwrap_or(&real);
    let usb = in_tree.to_string_lossy().contains("/usb");

    let mut partitions = Vec::new();
    let mut holders = list_names(&dir.join("holders"));
    for child in list_names(&dir) {
        let part_dir = dir.join(&child);
        if part_dir.join("partition").is_file() {
            holders.extend(list_names(&part_dir.join("holders")));
            partitions.push(Partition {
                dev: attr(&part_dir, "dev").as_deref().and_then(DevNum::parse),
                name: child,
            });
        }
    }
    holders.sort();
    holders.dedup();

    let device = dir.join("device");
    let usb_dir = if usb { usb_device_dir(&real, &devices) } else { None };
    let from_usb = |name: &str| usb_dir.as_deref().and_then(|d| attr(d, name));
    Ok(Disk {
        name: name.to_string(),
        dev: attr(&dir, "dev").as_deref().and_then(DevNum::parse),
        size: attr(&dir, "size")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |sectors| sectors.saturating_mul(512)),
        removable: attr(&dir, "removable").as_deref() == Some("1"),
        usb,
        sd_card: attr(&device, "type").as_deref() == Some("SD"),
        read_only: attr(&dir, "ro").as_deref() == Some("1"),
        vendor: attr(&device, "vendor").or_else(|| from_usb("manufacturer")),
        model: attr(&device, "model").or_else(|| from_usb("product")),
        serial: attr(&device, "serial")
            .or_else(|| attr(&dir, "serial"))
            .or_else(|| from_usb("serial")),
        partitions,
        holders,
        slaves: list_names(&dir.join("slaves")),
        dm_name: attr(&dir, "dm/name"),
    })
}

/// The nearest USB device above a disk in the hardware tree (the one with `idVendor`):
/// the stick itself, never the hub or controller above it, whose serial would mislead.
fn usb_device_dir(real: &Path, devices: &Path) -> Option<PathBuf> {
    let devices = fs::canonicalize(devices).unwrap_or_else(|_| devices.to_path_buf());
    real.ancestors()
        .take_while(|d| d.starts_with(&devices) && *d != devices)
        .find(|d| d.join("idVendor").is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_with_optional_fields_and_escapes() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
95 27 8:33 / /media/me/MY\\040STICK rw,nosuid shared:45 master:3 - vfat /dev/sdc1 rw,fmask=0022
garbage line
96 27 0:45 /@home /home rw - btrfs /dev/nvme0n1p3 rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].dev, DevNum { major: 8, minor: 2 });
        assert_eq!(mounts[1].mount_point, Path::new("/"));
        assert_eq!(mounts[1].source, "/dev/sda2");
        assert_eq!(mounts[2].mount_point, Path::new("/media/me/MY STICK"));
        assert_eq!(mounts[2].fstype, "vfat");
        assert_eq!(mounts[2].source, "/dev/sdc1");
        assert_eq!(mounts[3].dev, DevNum { major: 0, minor: 45 });
    }

    #[test]
    fn unescape_leaves_lone_backslashes() {
        assert_eq!(unescape("a\\011b\\134c"), "a\tb\\c");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("x\\9"), "x\\9");
    }

    #[test]
    fn sizes_read_like_the_label() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(999), "999 B");
        assert_eq!(format_size(1000), "1.0 kB");
        assert_eq!(format_size(31_004_295_168), "31.0 GB");
        assert_eq!(format_size(15_931_539_456), "15.9 GB");
        assert_eq!(format_size(999_999_999), "1.0 GB");
        assert_eq!(format_size(2 * 1024 * 1024 * 1024), "2.1 GB");
        assert_eq!(format_size(4_000_787_030_016), "4.0 TB");
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(DevNum::parse("8:16\n"), Some(DevNum { major: 8, minor: 16 }));
        assert_eq!(DevNum::parse("8"), None);
        assert_eq!(DevNum::parse("a:b"), None);
        assert_eq!(dev_path("cciss!c0d0"), "/dev/cciss/c0d0");
    }

    /// A minimal fake sysfs/proc/dev for the stacking cases the integration tests skip.
    struct Fake {
        _dir: tempfile::TempDir,
        roots: Roots,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            let roots = Roots {
                sysfs: root.join("sys"),
                proc: root.join("proc"),
                dev: root.join("dev"),
            };
            for d in [&roots.sysfs.join("block"), &roots.proc.join("self"), &roots.dev] {
                fs::create_dir_all(d).unwrap();
            }
            Fake { _dir: dir, roots }
        }

        fn write(&self, rel: &str, contents: &str) {
            let p = self.roots.sysfs.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, contents).unwrap();
        }

        /// A disk whose hardware path is `devices/<hw>/block/<name>`.
        fn disk(&self, hw: &str, name: &str, dev: &str, sectors: u64, removable: bool) {
            let real = format!("devices/{hw}/block/{name}");
            self.write(&format!("{real}/dev"), dev);
            self.write(&format!("{real}/size"), &sectors.to_string());
            self.write(&format!("{real}/removable"), if removable { "1" } else { "0" });
            std::os::unix::fs::symlink(format!("../{real}"), self.roots.sysfs.join("block").join(name)).unwrap();
            // Like sysfs: `device` is the SCSI (or other) device the disk hangs off.
            std::os::unix::fs::symlink("../..", self.roots.sysfs.join(&real).join("device")).unwrap();
            fs::write(self.roots.dev.join(name), b"").unwrap();
        }

        fn partition(&self, hw: &str, disk: &str, name: &str, dev: &str) {
            let base = format!("devices/{hw}/block/{disk}/{name}");
            self.write(&format!("{base}/dev"), dev);
            self.write(&format!("{base}/partition"), "1");
            fs::write(self.roots.dev.join(name), b"").unwrap();
        }

        fn mountinfo(&self, text: &str) {
            fs::write(self.roots.proc.join("self/mountinfo"), text).unwrap();
        }
    }

    const SATA: &str = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";
    const USB: &str = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";

    #[test]
    fn root_on_lvm_is_traced_through_device_mapper_slaves() {
        let f = Fake::new();
        f.disk(SATA, "sda", "8:0", 1 << 30, false);
        f.partition(SATA, "sda", "sda1", "8:1");
        f.partition(SATA, "sda", "sda3", "8:3");
        f.write(&format!("devices/{SATA}/block/sda/sda3/holders/dm-0"), "");
        f.disk("virtual", "dm-0", "253:0", 1 << 29, false);
        f.write("devices/virtual/block/dm-0/slaves/sda3", "");
        f.write("devices/virtual/block/dm-0/dm/name", "vg-root\n");
        f.disk(USB, "sdb", "8:16", 1 << 25, true);
        f.mountinfo("27 1 253:0 / / rw - ext4 /dev/mapper/vg-root rw\n");
        let system = System::read(&f.roots).unwrap();
        assert_eq!(system.root_disks(), vec!["sda".to_string()]);
        assert_eq!(system.disk("sda").unwrap().holders, vec!["dm-0".to_string()]);
        let err = system.evaluate(Path::new("/dev/sda"), 1, true).unwrap_err();
        assert!(matches!(err, FlashRefusal::SystemDisk { .. }), "{err}");
        assert!(err.to_string().contains("/dev/mapper/vg-root"), "{err}");
        assert!(system.evaluate(Path::new("/dev/sdb"), 1, false).is_ok());
    }

    #[test]
    fn btrfs_root_with_an_anonymous_device_is_found_by_its_source() {
        let f = Fake::new();
        f.disk("pci0000:00/0000:00:1d.0/nvme/nvme0", "nvme0n1", "259:0", 1 << 30, false);
        f.partition("pci0000:00/0000:00:1d.0/nvme/nvme0", "nvme0n1", "nvme0n1p3", "259:3");
        f.mountinfo("27 1 0:27 /@ / rw - btrfs /dev/nvme0n1p3 rw\n");
        let system = System::read(&f.roots).unwrap();
        assert_eq!(system.root_disks(), vec!["nvme0n1".to_string()]);
    }

    #[test]
    fn holders_without_mounts_mean_in_use() {
        let f = Fake::new();
        f.disk(USB, "sdb", "8:16", 1 << 25, true);
        f.partition(USB, "sdb", "sdb1", "8:17");
        f.write(&format!("devices/{USB}/block/sdb/sdb1/holders/dm-3"), "");
        f.disk("virtual", "dm-3", "253:3", 1 << 24, false);
        f.write("devices/virtual/block/dm-3/dm/name", "luks-1234\n");
        f.mountinfo("");
        let system = System::read(&f.roots).unwrap();
        let err = system.evaluate(Path::new("/dev/sdb"), 1, false).unwrap_err();
        assert!(err.to_string().contains("dm-3 (luks-1234)"), "{err}");
    }

    #[test]
    fn usb_attributes_come_from_the_nearest_usb_device() {
        let f = Fake::new();
        f.disk(USB, "sdb", "8:16", 62_521_344, true);
        f.write("devices/pci0000:00/0000:00:14.0/usb2/idVendor", "1d6b");
        f.write("devices/pci0000:00/0000:00:14.0/usb2/serial", "0000:00:14.0");
        f.write("devices/pci0000:00/0000:00:14.0/usb2/2-1/idVendor", "0781");
        f.write("devices/pci0000:00/0000:00:14.0/usb2/2-1/serial", "4C530001230830117\n");
        f.write("devices/pci0000:00/0000:00:14.0/usb2/2-1/manufacturer", "SanDisk\n");
        f.write(&format!("devices/{USB}/model"), "Cruzer Blade    \n");
        f.mountinfo("");
        let system = System::read(&f.roots).unwrap();
        let d = system.disk("sdb").unwrap();
        assert!(d.usb && d.removable && d.is_portable());
        assert_eq!(d.serial.as_deref(), Some("4C530001230830117"));
        assert_eq!(d.vendor.as_deref(), Some("SanDisk"));
        assert_eq!(
            d.description(),
            "SanDisk Cruzer Blade, 32.0 GB, serial 4C530001230830117"
        );

        // A stick without a serial must not borrow the controller's.
        fs::remove_file(f.roots.sysfs.join("devices/pci0000:00/0000:00:14.0/usb2/2-1/serial")).unwrap();
        let system = System::read(&f.roots).unwrap();
        assert_eq!(system.disk("sdb").unwrap().serial, None);
    }

    #[test]
    fn links_resolve_inside_the_dev_root() {
        let f = Fake::new();
        f.disk(USB, "sdb", "8:16", 1 << 25, true);
        fs::create_dir_all(f.roots.dev.join("disk/by-id")).unwrap();
        std::os::unix::fs::symlink("../../sdb", f.roots.dev.join("disk/by-id/usb-Stick_123-0:0")).unwrap();
        std::os::unix::fs::symlink("/dev/sdb", f.roots.dev.join("stick")).unwrap();
        assert_eq!(
            f.roots.resolve(Path::new("/dev/disk/by-id/usb-Stick_123-0:0")).unwrap(),
            f.roots.dev.join("sdb")
        );
        assert_eq!(
            f.roots.resolve(Path::new("/dev/stick")).unwrap(),
            f.roots.dev.join("sdb")
        );
        f.mountinfo("");
        let system = System::read(&f.roots).unwrap();
        let disk = system.disk("sdb").unwrap();
        assert_eq!(system.by_id(disk).as_deref(), Some("/dev/disk/by-id/usb-Stick_123-0:0"));
    }
}

//! Stage 6: bootable disk images. One base image per cluster (EFI System Partition with
//! systemd-boot, kernel and initrd; the ext4 root made by `mke2fs -d` from the composed
//! tarball), then per node a sparse copy of it with that node's GPT and CIDATA partition.
//!
//! ```text
//! 1 MiB       GPT + protective MBR
//! 128 MiB     EFI System Partition  FAT32  EFI/BOOT/BOOTX64.EFI, loader/, vmlinuz, initrd.img
//! 16 MiB      CIDATA                FAT16  meta-data, user-data, network-config
//! rest        root                  ext4   last, so growpart can extend it over the stick
//! 1 MiB       backup GPT
//! ```

pub mod fat;
pub mod gpt_table;
pub mod manifest;
pub mod sparse;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::render::RenderedNode;
use crate::rootfs::compose;
use crate::rootfs::tools;

pub const MIB: u64 = 1024 * 1024;
pub const ESP_SIZE: u64 = 128 * MIB;
pub const CIDATA_SIZE: u64 = 16 * MIB;
/// Room on the root filesystem beyond its contents until growpart enlarges it on first boot.
const ROOT_SLACK: u64 = 512 * MIB;

/// Partition offsets and sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp: (u64, u64),
    pub cidata: (u64, u64),
    pub root: (u64, u64),
    pub total: u64,
}

impl Layout {
    pub fn for_root_size(root: u64) -> Layout {
        let root = root.div_ceil(MIB) * MIB;
        let esp = (MIB, ESP_SIZE);
        let cidata = (esp.0 + esp.1, CIDATA_SIZE);
        let root_part = (cidata.0 + cidata.1, root);
        Layout {
            esp,
            cidata,
            root: root_part,
            total: root_part.0 + root + MIB,
        }
    }
}

/// Stable identifiers, so rebuilds of the same cluster are comparable byte for byte.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub disk: Uuid,
    pub esp: Uuid,
    pub cidata: Uuid,
    /// Shared by every node of a cluster: the loader entry on the shared ESP names it.
    pub root: Uuid,
    pub esp_volume_id: u32,
    pub cidata_volume_id: u32,
}

fn derived_uuid(parts: &[&str]) -> Uuid {
    let digest = Sha256::digest(parts.join("\0").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl Ids {
    pub fn new(cluster: &str, node: Option<&str>) -> Ids {
        let node = node.unwrap_or("");
        let volume_id = |what: &str| {
            u32::from_le_bytes(
                derived_uuid(&["kubestick", cluster, node, what]).as_bytes()[..4]
                    .try_into()
                    .expect("4 bytes"),
            )
        };
        Ids {
            disk: derived_uuid(&["kubestick", cluster, node, "disk"]),
            esp: derived_uuid(&["kubestick", cluster, "esp"]),
            cidata: derived_uuid(&["kubestick", cluster, node, "cidata"]),
            root: derived_uuid(&["kubestick", cluster, "root"]),
            esp_volume_id: volume_id("esp"),
            cidata_volume_id: volume_id("cidata"),
        }
    }
}

/// A finished base image and what node images made from it need to know.
#[derive(Debug, Clone)]
pub struct Base {
    pub path: PathBuf,
    pub layout: Layout,
    /// The time every filesystem in the images carries (SOURCE_DATE_EPOCH).
    pub epoch: u64,
}

/// e2fsprogs stamps superblocks and inodes with the clock unless told a time; these make it
/// use `epoch` and nothing from the host.
fn e2fs_env(cmd: &mut Command, epoch: u64) -> &mut Command {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env_remove("E2FSPROGS_FAKE_TIME")
        .env("TZ", "UTC")
}

/// The cluster-wide base image: ESP and root, no node identity. Every time in it is `epoch`.
pub fn build_base(rootfs_tar: &Path, cluster: &str, epoch: u64, out: &Path) -> Result<Layout> {
    let mke2fs = tools::require_mke2fs()?;
    let content = fs::metadata(rootfs_tar)
        .with_context(|| format!("reading {}", rootfs_tar.display()))?
        .len();
    // ext4 needs room for inodes, journal and metadata on top of the contents.
    let layout = Layout::for_root_size(content + content / 5 + ROOT_SLACK);
    let ids = Ids::new(cluster, None);

    let boot = compose::read_files(rootfs_tar, |p| {
        (p.starts_with("boot/vmlinuz-") || p.starts_with("boot/initrd.img-"))
            || p == "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    })?;
    let pick = |prefix: &str| -> Result<&Vec<u8>> {
        boot.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .max_by(|a, b| a.0.cmp(b.0))
            .map(|(_, v)| v)
            .with_context(|| format!("the root filesystem has no {prefix}*: is linux-image-amd64 / systemd-boot-efi in rootfs/packages.list?"))
    };
    let (kernel, initrd, bootloader) = (
        pick("boot/vmlinuz-")?,
        pick("boot/initrd.img-")?,
        pick("usr/lib/systemd/boot/efi/")?,
    );

    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o600))?;
    file.set_len(layout.total)?;

    let loader_conf = b"timeout 0\neditor no\nconsole-mode keep\n".to_vec();
    let entry = format!(
        "title   kubestick node ({cluster})\nlinux   /vmlinuz\ninitrd  /initrd.img\n\
         options root=PARTUUID={} rw console=tty0 console=ttyS0,115200n8\n",
        ids.root
    );
    fat::write_volume(
        fat::Region::new(&mut file, layout.esp.0, layout.esp.1),
        &fat::Volume {
            fat_type: fatfs::FatType::Fat32,
            label: "EFI",
            volume_id: ids.esp_volume_id,
            bytes_per_cluster: 1024,
            epoch,
        },
        &[
            ("EFI/BOOT/BOOTX64.EFI".into(), bootloader.as_slice()),
            ("loader/loader.conf".into(), loader_conf.as_slice()),
            ("loader/entries/kubestick.conf".into(), entry.as_bytes()),
            ("vmlinuz".into(), kernel.as_slice()),
            ("initrd.img".into(), initrd.as_slice()),
        ],
    )?;
    file.sync_all()?;
    drop(file);

    let status = e2fs_env(&mut Command::new(&mke2fs), epoch)
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-m", "1", "-U"])
        .arg(ids.root.to_string())
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={},root_owner=0:0",
            layout.root.0, ids.root
        ))
        .arg("-d")
        .arg(rootfs_tar)
        .arg(out)
        .arg(format!("{}k", layout.root.1 / 1024))
        .status()
        .with_context(|| format!("running {}", mke2fs.display()))?;
    if !status.success() {
        bail!(
            "{} failed ({status}) making the root filesystem from {}",
            mke2fs.display(),
            rootfs_tar.display()
        );
    }
    Ok(layout)
}

/// One node's image: a sparse copy of the base, its GPT, its CIDATA partition, and its bill
/// of materials at [`compose::BOM_PATH`] in the root filesystem.
pub fn build_node(base: &Base, cluster: &str, node: &RenderedNode, bom: &[u8], out: &Path) -> Result<()> {
    let layout = &base.layout;
    let partial = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("node.img")
    ));
    let _ = fs::remove_file(&partial);
    let _unfinished = crate::interrupt::track(&partial);
    let result = (|| -> Result<()> {
        sparse::copy(&base.path, &partial)?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o600))?;
        let mut file = fs::OpenOptions::new().read(true).write(true).open(&partial)?;
        let ids = Ids::new(cluster, Some(&node.name));
        gpt_table::write(&mut file, layout, &ids)?;
        fat::write_volume(
            fat::Region::new(&mut file, layout.cidata.0, layout.cidata.1),
            &fat::Volume {
                fat_type: fatfs::FatType::Fat16,
                label: "CIDATA",
                volume_id: ids.cidata_volume_id,
                bytes_per_cluster: 2048,
                epoch: base.epoch,
            },
            &[
                ("meta-data".into(), node.meta_data.as_bytes()),
                ("user-data".into(), node.user_data.as_bytes()),
                ("network-config".into(), node.network_config.as_bytes()),
            ],
        )?;
        file.sync_all()?;
        drop(file);
        write_root_file(&partial, layout.root.0, compose::BOM_PATH, bom, base.epoch)
            .context("writing the bill of materials into the root filesystem")?;
        crate::interrupt::pause_point("node-image");
        Ok(())
    })();
    match result {
        Ok(()) => fs::rename(&partial, out).with_context(|| format!("moving the finished image to {}", out.display())),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e.context(format!("building {}", out.display())))
        }
    }
}

/// Writes `data` as `path` (root-owned, 0644, dated `epoch`) into the ext4 filesystem at
/// `offset` in `image`, with e2fsprogs' debugfs: no mount, no root.
pub fn write_root_file(image: &Path, offset: u64, path: &str, data: &[u8], epoch: u64) -> Result<()> {
    let debugfs = tools::require("debugfs", "write into the root filesystem", "e2fsprogs")?;
    let scratch = tempfile::tempdir()?;
    let local = scratch.path().join("file");
    fs::write(&local, data)?;
    // debugfs copies the local file's mode and owner; neither may come from the host.
    fs::set_permissions(&local, fs::Permissions::from_mode(0o644))?;
    let commands = scratch.path().join("commands");
    fs::write(
        &commands,
        format!(
            "rm {path}\nwrite {local} {path}\nset_inode_field {path} uid 0\nset_inode_field {path} gid 0\n\
             set_inode_field {path} mode 0100644\n",
            local = local.display()
        ),
    )?;
    let out = e2fs_env(&mut Command::new(&debugfs), epoch)
        .arg("-w")
        .arg("-f")
        .arg(&commands)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .with_context(|| format!("running {}", debugfs.display()))?;
    // debugfs exits 0 even when a command fails; its complaints are on stderr. The `rm` of a
    // file that is not there yet is expected.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs ") && !l.contains("File not found by ext2_lookup"))
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!("{} failed writing {path}: {}", debugfs.display(), complaints.join("; "));
    }
    Ok(())
}

/// Reads `path` from the ext4 filesystem at `offset` in `image` (debugfs, read-only).
pub fn read_root_file(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>> {
    let debugfs = tools::require("debugfs", "read the root filesystem", "e2fsprogs")?;
    let out = Command::new(&debugfs)
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .with_context(|| format!("running {}", debugfs.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.lines().any(|l| !l.starts_with("debugfs ")) {
        bail!("{} holds no {path}: {}", image.display(), stderr.trim());
    }
    Ok(out.stdout)
}

/// `SHA256SUMS` in the format `sha256sum -c` reads.
pub fn write_checksums(dir: &Path, images: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    for image in images {
        let (digest, _) =
            crate::artifacts::digest::of_reader(crate::artifacts::digest::Algorithm::Sha256, File::open(image)?)?;
        text.push_str(&format!(
            "{}  {}\n",
            digest.hex,
            image.file_name().and_then(|n| n.to_str()).unwrap_or_default()
        ));
    }
    crate::fsx::write_atomic(&dir.join("SHA256SUMS"), text.as_bytes(), crate::fsx::PUBLIC_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_mib_aligned_with_root_last() {
        let l = Layout::for_root_size(1000 * MIB + 5);
        assert_eq!(l.esp, (MIB, ESP_SIZE));
        assert_eq!(l.cidata.0, MIB + ESP_SIZE);
        assert_eq!(l.root.0, l.cidata.0 + CIDATA_SIZE);
        assert_eq!(l.root.1, 1001 * MIB);
        assert_eq!(l.total, l.root.0 + l.root.1 + MIB);
        for off in [l.esp.0, l.cidata.0, l.root.0, l.total] {
            assert_eq!(off % MIB, 0);
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = Ids::new("homelab", Some("n1"));
        let b = Ids::new("homelab", Some("n2"));
        assert_eq!(a.disk, Ids::new("homelab", Some("n1")).disk);
        assert_ne!(a.disk, b.disk);
        assert_ne!(a.cidata, b.cidata);
        assert_eq!(a.root, b.root);
        assert_eq!(a.esp, b.esp);
        assert_ne!(a.root, Ids::new("other", Some("n1")).root);
    }
}

//! The GPT and its protective MBR (the gpt crate leaves the MBR to the caller), with the
//! partition GUIDs from [`Ids`](super::Ids) so rebuilt images are comparable.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{Context as _, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types;

use super::{Ids, Layout};

const SECTOR: u64 = 512;

pub fn write(file: &mut File, layout: &Layout, ids: &Ids) -> Result<()> {
    let sectors = layout.total / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(file).context("writing the protective MBR")?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(file, Some(ids.disk))
        .context("creating the GPT")?;
    let part = |(start, len): (u64, u64), kind: partition_types::Type, guid: uuid::Uuid, name: &str| Partition {
        part_type_guid: kind,
        part_guid: guid,
        first_lba: start / SECTOR,
        last_lba: (start + len) / SECTOR - 1,
        flags: 0,
        name: name.to_string(),
    };
    let partitions = BTreeMap::from([
        (1, part(layout.esp, partition_types::EFI, ids.esp, "EFI System")),
        (2, part(layout.cidata, partition_types::BASIC, ids.cidata, "CIDATA")),
        (3, part(layout.root, partition_types::LINUX_ROOT_X64, ids.root, "root")),
    ]);
    disk.update_partitions(partitions)
        .context("laying out the partitions")?;
    disk.write().context("writing the GPT")?;
    Ok(())
}

/// Where the root partition (Linux root x86-64) of a kubestick image starts, in bytes.
pub fn root_offset(image: &std::path::Path) -> Result<u64> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(image)
        .with_context(|| format!("{} has no readable GPT", image.display()))?;
    disk.partitions()
        .values()
        .find(|p| p.part_type_guid == partition_types::LINUX_ROOT_X64)
        .with_context(|| format!("{} has no root partition", image.display()))?
        .bytes_start(LogicalBlockSize::Lb512)
        .context("reading the root partition's start")
}

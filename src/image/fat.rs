//! FAT filesystems written straight into a region of the image file (fatfs): the EFI
//! System Partition (FAT32) and the CIDATA partition (FAT16). No mkfs, no mounts.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{Context as _, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

/// A window of `len` bytes at `start` in a file, seen as a whole device.
pub struct Region<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Region<'a> {
    pub fn new(file: &'a mut File, start: u64, len: u64) -> Self {
        Region {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Region<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if pos < 0 || pos > self.len as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

pub struct Volume<'a> {
    pub fat_type: FatType,
    /// 11 bytes, space padded.
    pub label: &'a str,
    pub volume_id: u32,
    /// Small clusters keep mtools and firmware happy on small FAT32 volumes.
    pub bytes_per_cluster: u32,
    /// Seconds since 1970 that every directory entry carries (the build's SOURCE_DATE_EPOCH).
    pub epoch: u64,
}

/// The one time fatfs stamps on every entry, instead of its default (1 Jan 1980 without
/// chrono, the clock with it).
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// `epoch` as a FAT time (UTC: FAT has no zone, and the host's must not leak in), clamped
/// to the years FAT can hold.
fn fat_time(epoch: u64) -> fatfs::DateTime {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch.min(4_354_819_198) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    if t.year() < 1980 {
        return fatfs::DateTime {
            date: fatfs::Date {
                year: 1980,
                month: 1,
                day: 1,
            },
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        };
    }
    fatfs::DateTime {
        date: fatfs::Date {
            year: t.year() as u16,
            month: u8::from(t.month()) as u16,
            day: t.day() as u16,
        },
        time: fatfs::Time {
            hour: t.hour() as u16,
            min: t.minute() as u16,
            sec: t.second() as u16,
            millis: 0,
        },
    }
}

/// Formats `region` (which must be zeroed, as a new sparse image is) and writes `files`,
/// given as `dir/sub/name` paths, creating directories as needed.
pub fn write_volume(region: Region<'_>, volume: &Volume<'_>, files: &[(String, &[u8])]) -> Result<()> {
    let mut label = [b' '; 11];
    for (slot, b) in label.iter_mut().zip(volume.label.bytes()) {
        *slot = b.to_ascii_uppercase();
    }
    let mut region = region;
    fatfs::format_volume(
        &mut region,
        FormatVolumeOptions::new()
            .fat_type(volume.fat_type)
            .bytes_per_cluster(volume.bytes_per_cluster)
            .volume_label(label)
            .volume_id(volume.volume_id),
    )
    .with_context(|| format!("formatting the {} partition", volume.label))?;
    // fatfs 0.3 wants a provider that lives forever; one small one per volume written.
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(volume.epoch))));
    let fs = FileSystem::new(&mut region, FsOptions::new().time_provider(clock))
        .with_context(|| format!("opening the new {} filesystem", volume.label))?;
    if fs.fat_type() != volume.fat_type {
        anyhow::bail!(
            "the {} partition came out {:?} instead of {:?}",
            volume.label,
            fs.fat_type(),
            volume.fat_type
        );
    }
    {
        let root = fs.root_dir();
        for (path, data) in files {
            let mut dir = root.clone();
            let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let name = parts.pop().context("empty path")?;
            for part in parts {
                dir = match dir.open_dir(part) {
                    Ok(d) => d,
                    Err(_) => dir
                        .create_dir(part)
                        .with_context(|| format!("creating {part} on {}", volume.label))?,
                };
            }
            let mut file = dir
                .create_file(name)
                .with_context(|| format!("creating {path} on {}", volume.label))?;
            file.truncate()?;
            // fatfs allocates cluster by cluster; large writes keep that cheap.
            for chunk in data.chunks(1 << 20) {
                file.write_all(chunk)
                    .with_context(|| format!("writing {path} on {}", volume.label))?;
            }
            file.flush()?;
        }
    }
    // Counting the free clusters also records them in FAT32's FSInfo sector, which fsck
    // otherwise reports as uninitialised.
    fs.stats()
        .with_context(|| format!("counting free space on {}", volume.label))?;
    fs.unmount()
        .with_context(|| format!("closing the {} filesystem", volume.label))?;
    fix_dot_entries(&mut region).with_context(|| format!("repairing directory entries on {}", volume.label))?;
    Ok(())
}

const ENTRY: usize = 32;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
const DELETED: u8 = 0xe5;

/// fatfs 0.3.6 writes a long-name entry in front of every directory's `.` and `..` and
/// points `..` of the root's children at the root's cluster; the FAT specification (and
/// fsck.fat) want `.` and `..` as the first two plain entries and cluster 0 for the root.
/// Rewrites the first slots of every subdirectory accordingly, marking the stray long-name
/// slots deleted.
fn fix_dot_entries(disk: &mut Region<'_>) -> io::Result<()> {
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut boot)?;
    let bytes_per_sector = u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    let sectors_per_cluster = u64::from(boot[13]);
    let reserved = u64::from(u16::from_le_bytes([boot[14], boot[15]]));
    let fats = u64::from(boot[16]);
    let root_entries = u64::from(u16::from_le_bytes([boot[17], boot[18]]));
    let fat16_size = u64::from(u16::from_le_bytes([boot[22], boot[23]]));
    let fat_size = if fat16_size != 0 {
        fat16_size
    } else {
        u64::from(u32::from_le_bytes([boot[36], boot[37], boot[38], boot[39]]))
    };
    let root_dir_sectors = (root_entries * ENTRY as u64).div_ceil(bytes_per_sector);
    let data_start = (reserved + fats * fat_size + root_dir_sectors) * bytes_per_sector;
    let cluster_bytes = (sectors_per_cluster * bytes_per_sector) as usize;
    let cluster_offset = |c: u64| data_start + (c - 2) * cluster_bytes as u64;
    let is_fat32 = fat16_size == 0;
    // The root directory: a cluster chain on FAT32, a fixed region before the data on FAT16.
    let root_cluster = u64::from(u32::from_le_bytes([boot[44], boot[45], boot[46], boot[47]]));
    let (root_offset, root_len) = if is_fat32 {
        (cluster_offset(root_cluster), cluster_bytes)
    } else {
        (
            (reserved + fats * fat_size) * bytes_per_sector,
            (root_entries as usize) * ENTRY,
        )
    };

    // (offset of the directory's first cluster, cluster of its parent; 0 for the root)
    let mut todo: Vec<(u64, usize, u64)> = vec![(root_offset, root_len, 0)];
    let mut first = true;
    while let Some((offset, len, parent)) = todo.pop() {
        let mut buf = vec![0u8; len];
        disk.seek(SeekFrom::Start(offset))?;
        disk.read_exact(&mut buf)?;
        let this_cluster = if first {
            0
        } else {
            (offset - data_start) / cluster_bytes as u64 + 2
        };
        if !first {
            let mut plain: Vec<[u8; ENTRY]> = Vec::new();
            for slot in buf.chunks(ENTRY).take_while(|e| e[0] != 0) {
                if slot[11] != ATTR_LFN && slot[0] != DELETED {
                    plain.push(slot.try_into().expect("32 bytes"));
                }
                if plain.len() == 2 {
                    break;
                }
            }
            if plain.len() == 2 && &plain[0][..11] == b".          " && &plain[1][..11] == b"..         " {
                let (mut dot, mut dotdot) = (plain[0], plain[1]);
                set_cluster(&mut dot, this_cluster);
                set_cluster(&mut dotdot, parent);
                for (index, slot) in buf.chunks_mut(ENTRY).take_while(|e| e[0] != 0).enumerate() {
                    let name = &slot[..11];
                    let is_dot = slot[11] != ATTR_LFN && (name == b".          " || name == b"..         ");
                    let is_dot_lfn = slot[11] == ATTR_LFN && index < 4;
                    if is_dot || is_dot_lfn {
                        slot[0] = DELETED;
                    }
                }
                buf[..ENTRY].copy_from_slice(&dot);
                buf[ENTRY..2 * ENTRY].copy_from_slice(&dotdot);
                disk.seek(SeekFrom::Start(offset))?;
                disk.write_all(&buf)?;
            }
        }
        for slot in buf.chunks(ENTRY).take_while(|e| e[0] != 0) {
            let name = &slot[..11];
            if slot[0] == DELETED || slot[11] == ATTR_LFN || slot[11] & ATTR_DIRECTORY == 0 || name[0] == b'.' {
                continue;
            }
            let cluster = u64::from(u16::from_le_bytes([slot[20], slot[21]])) << 16
                | u64::from(u16::from_le_bytes([slot[26], slot[27]]));
            if cluster >= 2 {
                todo.push((cluster_offset(cluster), cluster_bytes, this_cluster));
            }
        }
        first = false;
    }
    disk.flush()
}

fn set_cluster(entry: &mut [u8; ENTRY], cluster: u64) {
    entry[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    entry[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

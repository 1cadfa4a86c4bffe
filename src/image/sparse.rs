//! Copying the base image for each node without copying its holes: a reflink where the
//! filesystem can share blocks (btrfs, XFS), else only the data ranges (SEEK_DATA /
//! SEEK_HOLE with copy_file_range), so a node image costs about what `cp --sparse=always`
//! does.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use anyhow::{Context as _, Result};

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    let src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let len = src.metadata()?.len();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    // SAFETY: both descriptors are open for the duration of the call.
    if unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    dst.set_len(len)?;
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: plain lseek on an open descriptor.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let (mut off_in, mut off_out) = (data, data);
        while off_in < end {
            // SAFETY: offsets are valid pointers to locals; descriptors are open.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    (end - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                // Across filesystems (or where the kernel lacks it) copy the range by hand.
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                ) {
                    copy_range(&src, &dst, off_in as u64, (end - off_in) as u64)
                        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
                    break;
                }
                return Err(err).with_context(|| format!("copying {} to {}", from.display(), to.display()));
            }
            if n == 0 {
                break;
            }
        }
        offset = end;
    }
    // The caller flushes once, after writing the node's own partitions.
    Ok(())
}

fn copy_range(src: &File, dst: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = src.read_at(&mut buf[..want], start + done)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], start + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn copies_data_and_keeps_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let mut f = File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 1 << 20]).unwrap();
        f.seek(SeekFrom::Start(63 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let b = tmp.path().join("b");
        super::copy(&a, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let allocated = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(allocated < 8 << 20, "{allocated} bytes allocated for 1 MiB of data");
    }

    use std::fs::File;
}

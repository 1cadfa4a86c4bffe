//! Writing an image onto a disk and proving it arrived.
//!
//! Order, after coreos-installer: the target's first MiB (partition tables, boot code) is
//! zeroed and flushed first, then the rest of the image is written, and the image's own
//! first MiB goes in last. A write cut short by Ctrl-C, a pulled stick or a crash leaves
//! a disk without a partition table, which no firmware boots, never a half-written one
//! that might. Then everything is flushed, read back and its SHA-256 compared with the
//! image's; on a mismatch the first MiB is zeroed again, so a bad copy does not boot either.
//!
//! Block devices are written and read back with `O_DIRECT`: progress shows what reached
//! the device rather than the page cache, the machine does not pile up gigabytes of dirty
//! pages in front of a slow stick, and the readback comes from the device. Regular files
//! (the tests' stand-in devices, the benchmark) are written through the page cache and
//! flushed with `fdatasync`; `posix_fadvise(DONTNEED)` then drops their cached pages (on
//! ext4 this empties the file's cache, as `fincore` shows) and the readback asks for
//! `O_DIRECT` as well, which ext4, xfs and, since Linux 6.6, tmpfs grant. Where a
//! filesystem refuses `O_DIRECT`, the readback goes through the cache just dropped. On
//! tmpfs the pages are the file, so there the readback checks the only copy there is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use sha2::{Digest as _, Sha256};

/// Bytes per read and write: long sequential writes are what USB flash controllers are
/// fastest at, and 4 MiB still moves the progress bar several times a second on a slow
/// stick.
pub const BUFFER: usize = 4 * 1024 * 1024;

/// `O_DIRECT` needs buffers, offsets and lengths aligned to the logical block size; 4096
/// suits both 512-byte and 4K-sector devices.
pub const ALIGN: usize = 4096;

/// The part of the image held back and written last: GPT and MBR live in the first
/// sectors, and 1 MiB is where partitioning tools start the first partition.
pub const HEAD: usize = 1024 * 1024;

/// `_IO(0x12, 95)` from `<linux/fs.h>`: re-read the partition table. libc does not export it.
const BLKRRPART: libc::Ioctl = 0x125f;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("reading the image {}", image.display())]
    ReadImage {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} changed while it was being written ({got} bytes instead of {expected}); \
         flash it again once nothing is rebuilding it",
        image.display()
    )]
    ImageChanged { image: PathBuf, expected: u64, got: u64 },
    #[error("writing {target} at byte {offset} (was the stick pulled out?)")]
    Write {
        target: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {target} to the device (was the stick pulled out?)")]
    Sync {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {target} back to verify it")]
    ReadBack {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{target} does not hold the image: it reads back as sha256:{actual}, the image is \
         sha256:{expected}. The stick may be failing or fake (smaller than it claims); its \
         first MiB was zeroed so it will not boot. Use another stick"
    )]
    Mismatch {
        target: String,
        expected: String,
        actual: String,
    },
}

/// A zeroed buffer whose start is aligned for `O_DIRECT`, carved out of a slightly larger
/// `Vec` so no allocation code of our own is needed.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + ALIGN];
        // align_offset may in principle decline; then writes simply fall back to the cache.
        let start = match storage.as_ptr().align_offset(ALIGN) {
            n if n < ALIGN => n,
            _ => 0,
        };
        AlignedBuf { storage, start, len }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Where an image goes: positioned writes plus a flush to stable storage. [`Device`] is the
/// real one; the tests record calls to check the order.
pub trait Sink {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Forgets cached copies of the first `len` bytes so that a readback reaches the device.
    fn drop_cache(&mut self, _len: u64) {}
}

/// An open target: a block device (exclusive, `O_DIRECT`) or a regular file.
pub struct Device {
    file: File,
    block: bool,
    direct: bool,
}

impl Device {
    /// Opens `path` for writing. A block device is opened with `O_EXCL`, which the kernel
    /// refuses (`EBUSY`) while anything mounts or claims it (a filesystem, swap, RAID, LVM,
    /// an open LUKS volume), and with `O_DIRECT` where the driver allows. A regular file is
    /// neither created nor truncated: it stands in for a device of its size.
    pub fn open(path: &Path) -> io::Result<Device> {
        let block = fs::metadata(path)?.file_type().is_block_device();
        if !block {
            let file = OpenOptions::new().write(true).open(path)?;
            return Ok(Device {
                file,
                block,
                direct: false,
            });
        }
        let open = |flags| OpenOptions::new().write(true).custom_flags(flags).open(path);
        match open(libc::O_EXCL | libc::O_DIRECT) {
            Ok(file) => Ok(Device {
                file,
                block,
                direct: true,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Device {
                file: open(libc::O_EXCL)?,
                block,
                direct: false,
            }),
            Err(e) => Err(e),
        }
    }

    pub fn is_block_device(&self) -> bool {
        self.block
    }

    /// Asks the kernel to re-read the partition table (`BLKRRPART`), so the new partitions
    /// show up without replugging. Only meaningful for block devices.
    pub fn reread_partition_table(&self) -> io::Result<()> {
        const ATTEMPTS: u32 = 20;
        for attempt in 1..=ATTEMPTS {
            // SAFETY: BLKRRPART takes no argument; the descriptor is open for the call.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // udev probes the disk right after our writes and lets go within moments.
            if e.raw_os_error() != Some(libc::EBUSY) || attempt == ATTEMPTS {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        unreachable!("the loop returns on its last attempt")
    }
}

impl Sink for Device {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct && !direct_ok(buf, offset) {
            // An image's last chunk need not be a whole number of blocks.
            set_direct(&self.file, false)?;
            self.direct = false;
        }
        match self.file.write_all_at(buf, offset) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // A device with larger blocks than ALIGN, or a driver that accepted the flag
                // at open but not the transfer: positioned writes can simply be repeated.
                set_direct(&self.file, false)?;
                self.direct = false;
                self.file.write_all_at(buf, offset)
            }
            other => other,
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&mut self, len: u64) {
        fadvise_dontneed(&self.file, len);
    }
}

fn direct_ok(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(ALIGN)
        && buf.len().is_multiple_of(ALIGN)
        && offset.is_multiple_of(ALIGN as u64)
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Best effort: a failure only means the readback may be served from memory.
fn fadvise_dontneed(file: &File, len: u64) {
    // SAFETY: advisory call on a descriptor we own.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            libc::off_t::try_from(len).unwrap_or(0),
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes `size` bytes of `image` to `sink`, first MiB last (see the module doc), flushes,
/// and returns the image's SHA-256 (hex), computed on the way.
pub fn write_image(
    image: &mut impl Read,
    size: u64,
    sink: &mut impl Sink,
    image_path: &Path,
    target: &str,
    bar: &ProgressBar,
) -> Result<String, FlashError> {
    let read_err = |source| FlashError::ReadImage {
        image: image_path.to_path_buf(),
        source,
    };
    let write_err = |offset| {
        move |source| FlashError::Write {
            target: target.to_string(),
            offset,
            source,
        }
    };
    let sync_err = |source| FlashError::Sync {
        target: target.to_string(),
        source,
    };
    let changed = |got| FlashError::ImageChanged {
        image: image_path.to_path_buf(),
        expected: size,
        got,
    };
    let mut image = image.take(size);
    let mut hasher = Sha256::new();

    let head_len = size.min(HEAD as u64) as usize;
    let mut head = AlignedBuf::new(head_len);
    let got = read_full(&mut image, &mut head).map_err(read_err)?;
    if got < head_len {
        return Err(changed(got as u64));
    }
    hasher.update(&head[..]);
    // Whatever booted from this disk before must not boot from a half-written one.
    sink.write_at(&AlignedBuf::new(head_len), 0).map_err(write_err(0))?;
    sink.sync().map_err(sync_err)?;

    let mut buf = AlignedBuf::new(BUFFER);
    let mut offset = head_len as u64;
    loop {
        let n = read_full(&mut image, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sink.write_at(&buf[..n], offset).map_err(write_err(offset))?;
        offset += n as u64;
        bar.inc(n as u64);
    }
    if offset < size {
        return Err(changed(offset));
    }
    sink.write_at(&head, 0).map_err(write_err(0))?;
    bar.inc(head_len as u64);
    sink.sync().map_err(sync_err)?;
    Ok(hex::encode(hasher.finalize()))
}

/// How the readback avoided the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// `O_DIRECT`: every byte came from the device (or the file's disk blocks).
    Direct,
    /// The target refused `O_DIRECT`; its cached pages were dropped first.
    DroppedCache,
}

/// Reads the first `size` bytes of `path` past the page cache and hashes them.
pub fn read_back(path: &Path, size: u64, bar: &ProgressBar) -> io::Result<(String, Readback)> {
    let (file, mut direct) = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (File::open(path)?, false),
        Err(e) => return Err(e),
    };
    if !direct {
        fadvise_dontneed(&file, size);
    }
    let mut buf = AlignedBuf::new(BUFFER);
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(BUFFER as u64) as usize;
        // O_DIRECT reads whole blocks; bytes past the image are read but not hashed.
        let ask = if direct { want.next_multiple_of(ALIGN) } else { want };
        let n = match read_full(&mut Positioned(&file, offset), &mut buf[..ask]) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                set_direct(&file, false)?;
                fadvise_dontneed(&file, size);
                direct = false;
                continue;
            }
            other => other?,
        };
        if n < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it ended after {} of {size} bytes", offset + n as u64),
            ));
        }
        hasher.update(&buf[..want]);
        offset += want as u64;
        bar.inc(want as u64);
    }
    let how = if direct {
        Readback::Direct
    } else {
        Readback::DroppedCache
    };
    Ok((hex::encode(hasher.finalize()), how))
}

/// `pread` as a `Read`, starting at an offset.
struct Positioned<'a>(&'a File, u64);

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// What a finished flash did.
#[derive(Debug, Clone)]
pub struct Written {
    pub bytes: u64,
    /// The image's SHA-256 (hex), which the readback matched.
    pub sha256: String,
    pub write_time: Duration,
    pub verify_time: Duration,
    pub readback: Readback,
}

/// Writes `image_path` through `sink` (which writes to `target_path`), then reads
/// `target_path` back and compares digests. `target` names it in messages. On any failure
/// after the first byte was written, the first MiB is zeroed again (best effort).
pub fn write_verified(
    image_path: &Path,
    sink: &mut impl Sink,
    target_path: &Path,
    target: &str,
    progress: bool,
) -> Result<Written, FlashError> {
    let read_err = |source| FlashError::ReadImage {
        image: image_path.to_path_buf(),
        source,
    };
    let mut image = File::open(image_path).map_err(read_err)?;
    let size = image.metadata().map_err(read_err)?.len();

    let write_bar = crate::progress::bytes(progress, size, "writing");
    let start = Instant::now();
    let written = write_image(&mut image, size, sink, image_path, target, &write_bar);
    write_bar.finish_and_clear();
    let expected = written.inspect_err(|_| wipe_head(sink, size))?;
    let write_time = start.elapsed();

    sink.drop_cache(size);
    let verify_bar = crate::progress::bytes(progress, size, "verifying");
    let start = Instant::now();
    let read = read_back(target_path, size, &verify_bar);
    verify_bar.finish_and_clear();
    let (actual, readback) = read
        .map_err(|source| FlashError::ReadBack {
            target: target.to_string(),
            source,
        })
        .inspect_err(|_| wipe_head(sink, size))?;
    if actual != expected {
        wipe_head(sink, size);
        return Err(FlashError::Mismatch {
            target: target.to_string(),
            expected,
            actual,
        });
    }
    Ok(Written {
        bytes: size,
        sha256: expected,
        write_time,
        verify_time: start.elapsed(),
        readback,
    })
}

/// Zeroes the first MiB so a bad or partial copy cannot boot. Errors are ignored: this
/// runs after another failure, which is the one to report.
fn wipe_head(sink: &mut impl Sink, size: u64) {
    let len = size.min(HEAD as u64) as usize;
    if sink.write_at(&AlignedBuf::new(len), 0).is_ok() {
        let _ = sink.sync();
    }
}

/// Writes and verifies `image` onto `target` (an existing block device or regular file),
/// without any of the checks or questions of `kubestick flash`. For benchmarks and tests.
pub fn write_and_verify(image: &Path, target: &Path, progress: bool) -> anyhow::Result<Written> {
    let mut device = Device::open(target).with_context(|| format!("opening {} for writing", target.display()))?;
    let name = target.display().to_string();
    Ok(write_verified(image, &mut device, target, &name, progress)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Op {
        Write { offset: u64, len: usize, zeros: bool },
        Sync,
    }

    /// Keeps the bytes and records every call.
    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        ops: Vec<Op>,
    }

    impl Sink for Recorder {
        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + buf.len();
            if self.data.len() < end {
                self.data.resize(end, 0);
            }
            self.data[offset as usize..end].copy_from_slice(buf);
            self.ops.push(Op::Write {
                offset,
                len: buf.len(),
                zeros: buf.iter().all(|&b| b == 0),
            });
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            self.ops.push(Op::Sync);
            Ok(())
        }
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 | 1).collect()
    }

    #[test]
    fn the_first_mib_is_zeroed_first_and_written_last() {
        let len = HEAD + 2 * BUFFER + 123;
        let img = image(len);
        let mut sink = Recorder::default();
        let digest = write_image(
            &mut &img[..],
            len as u64,
            &mut sink,
            Path::new("node.img"),
            "test",
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(&img)));
        assert_eq!(sink.data, img);
        assert_eq!(
            sink.ops,
            vec![
                Op::Write {
                    offset: 0,
                    len: HEAD,
                    zeros: true
                },
                Op::Sync,
                Op::Write {
                    offset: HEAD as u64,
                    len: BUFFER,
                    zeros: false
                },
                Op::Write {
                    offset: (HEAD + BUFFER) as u64,
                    len: BUFFER,
                    zeros: false
                },
                Op::Write {
                    offset: (HEAD + 2 * BUFFER) as u64,
                    len: 123,
                    zeros: false
                },
                Op::Write {
                    offset: 0,
                    len: HEAD,
                    zeros: false
                },
                Op::Sync,
            ]
        );
    }

    #[test]
    fn an_image_smaller_than_the_head_is_still_written_last() {
        let img = image(1000);
        let mut sink = Recorder::default();
        write_image(
            &mut &img[..],
            1000,
            &mut sink,
            Path::new("x"),
            "t",
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(sink.data, img);
        assert_eq!(
            sink.ops,
            vec![
                Op::Write {
                    offset: 0,
                    len: 1000,
                    zeros: true
                },
                Op::Sync,
                Op::Write {
                    offset: 0,
                    len: 1000,
                    zeros: false
                },
                Op::Sync,
            ]
        );
    }

    /// A failing source stops the write before the head is written: the disk stays unbootable.
    #[test]
    fn a_short_image_never_writes_the_head() {
        let img = image(HEAD + 10);
        let mut sink = Recorder::default();
        let err = write_image(
            &mut &img[..],
            (HEAD + BUFFER) as u64,
            &mut sink,
            Path::new("x"),
            "t",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(matches!(err, FlashError::ImageChanged { got, .. } if got == (HEAD + 10) as u64));
        assert!(sink.data[..HEAD].iter().all(|&b| b == 0));
    }

    #[test]
    fn buffers_are_aligned() {
        for len in [1, 4096, BUFFER] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert!((b.as_ptr() as usize).is_multiple_of(ALIGN));
        }
    }

    #[test]
    fn write_and_verify_on_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(3 * HEAD + 517);
        let image_path = dir.path().join("node.img");
        fs::write(&image_path, &img).unwrap();
        let target = dir.path().join("target");
        fs::write(&target, vec![0xAAu8; 8 * HEAD]).unwrap();
        let w = write_and_verify(&image_path, &target, false).unwrap();
        assert_eq!(w.bytes, img.len() as u64);
        assert_eq!(w.sha256, hex::encode(Sha256::digest(&img)));
        let after = fs::read(&target).unwrap();
        assert_eq!(&after[..img.len()], &img[..]);
        assert!(
            after[img.len()..].iter().all(|&b| b == 0xAA),
            "bytes past the image are left alone"
        );
    }

    /// A sink that loses one byte, like a stick that lies: the readback must catch it, and
    /// the head must end up zeroed.
    #[test]
    fn a_mismatch_is_caught_and_the_head_wiped() {
        struct Lossy(Device);
        impl Sink for Lossy {
            fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
                let mut copy = buf.to_vec();
                if offset == HEAD as u64 {
                    copy[7] ^= 0xFF;
                }
                self.0.write_at(&copy, offset)
            }
            fn sync(&mut self) -> io::Result<()> {
                self.0.sync()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(2 * HEAD);
        let image_path = dir.path().join("node.img");
        fs::write(&image_path, &img).unwrap();
        let target = dir.path().join("target");
        fs::write(&target, vec![0u8; 2 * HEAD]).unwrap();
        let mut sink = Lossy(Device::open(&target).unwrap());
        let err = write_verified(&image_path, &mut sink, &target, "/dev/sdz", false).unwrap_err();
        assert!(matches!(err, FlashError::Mismatch { .. }), "{err}");
        assert!(err.to_string().starts_with("/dev/sdz does not hold the image"), "{err}");
        let after = fs::read(&target).unwrap();
        assert!(after[..HEAD].iter().all(|&b| b == 0));
    }
}

//! Unpacking verified release tarballs (crictl, CNI plugins, containerd) into a staging
//! directory that becomes a layer of a node's root filesystem.
//!
//! The tarballs are pinned by digest, so this is not the only line of defence, but a layer
//! ends up owned by root on every node: one stray `../` or a symlink pointing at the build
//! host must never turn into a file written outside the staging directory. Every entry is
//! therefore checked here and written by hand rather than through `tar::Entry::unpack_in`,
//! so that what is refused, and why, is explicit and tested:
//!
//! - paths must be relative and free of `..`; a leading `./` is fine;
//! - links are never followed while unpacking: no entry is written through a symlink, a file
//!   replacing an earlier entry first removes it, and files are created with `O_EXCL`;
//! - symlinks must stay inside the destination, judged from the link's own directory;
//! - hard links must name a regular file unpacked earlier;
//! - devices and FIFOs are refused: none of the upstream archives has one, and a root
//!   filesystem layer gets its `/dev` from the kernel.
//!
//! Modes are kept exactly, setuid and setgid included (the umask is not applied). Owners are
//! not: unpacking may run unprivileged, so everything belongs to the user running kubestick,
//! and the image stage sets owners when it assembles the root filesystem. Modification times
//! of files and directories are kept; those of symlinks are not.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

/// Directories the archive only implies (`bin/crictl` without a `bin/` entry) get the mode
/// every directory of a root filesystem has, whatever the umask of the build host.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Archive directories stay writable by us until every entry is in; their own modes are set
/// at the end, because a read-only directory would otherwise stop its contents being written.
const WORKING_DIR_MODE: u32 = 0o700;

/// Files are private until their contents and final mode are in place.
const WORKING_FILE_MODE: u32 = 0o600;

/// What an archive put into the destination: one count per archive entry unpacked (a hard
/// link counts as a file), and the bytes of regular-file contents written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("archive entry `{path}` has an absolute path: refusing to unpack it outside the destination")]
    AbsolutePath { path: String },

    #[error("archive entry `{path}` escapes the destination through `..`: refusing to unpack")]
    ParentComponent { path: String },

    #[error("archive entry `{path}` names the destination directory itself but is not a directory: refusing to unpack")]
    ReplacesDestination { path: String },

    #[error("archive entry `{path}` would be written through the symlink `{link}`: refusing to unpack")]
    ThroughSymlink { path: String, link: String },

    #[error(
        "archive entry `{path}` needs `{parent}` to be a directory, but an earlier entry made it something else: refusing to unpack"
    )]
    ParentNotDirectory { path: String, parent: String },

    #[error("archive entry `{path}` would replace the directory of the same name: refusing to unpack")]
    ReplacesDirectory { path: String },

    #[error("archive entry `{path}` is a link without a target: refusing to unpack")]
    MissingLinkTarget { path: String },

    #[error(
        "symlink `{path}` points to the absolute path `{target}`, which is outside the destination: refusing to unpack"
    )]
    SymlinkAbsolute { path: String, target: String },

    #[error("symlink `{path}` -> `{target}` escapes the destination: refusing to unpack")]
    SymlinkEscapes { path: String, target: String },

    #[error(
        "symlink `{path}` -> `{target}` has `..` after a name, so where it leads depends on other links: refusing to unpack"
    )]
    SymlinkClimbsBack { path: String, target: String },

    #[error("hard link `{path}` -> `{target}` points outside the destination: refusing to unpack")]
    HardLinkOutside { path: String, target: String },

    #[error(
        "hard link `{path}` -> `{target}` does not name a regular file unpacked earlier (without going through a symlink): refusing to unpack"
    )]
    HardLinkTarget { path: String, target: String },

    #[error(
        "archive entry `{path}` is a {kind}; only files, directories, symlinks and hard links belong in a layer: refusing to unpack"
    )]
    Unsupported { path: String, kind: String },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Unpacks a gzip-compressed tar from `reader` into `dest` (which must exist).
///
/// On a refusal or an error, entries unpacked before it stay in `dest`: unpack into a
/// temporary staging directory and discard it on error.
pub fn unpack_tar_gz(reader: impl Read, dest: &Path) -> Result<Extracted, ExtractError> {
    // Several gzip members in a row are one valid stream (`pigz`, `cat a.gz b.gz`).
    let mut gz = flate2::read::MultiGzDecoder::new(reader);
    let extracted = unpack_tar(&mut gz, dest)?;
    // The tar ends before the gzip trailer; reading on checks the CRC and length there.
    io::copy(&mut gz, &mut io::sink()).map_err(io_error(|| "reading the end of the compressed archive".to_string()))?;
    Ok(extracted)
}

/// Same as [`unpack_tar_gz`] for an uncompressed tar.
pub fn unpack_tar(reader: impl Read, dest: &Path) -> Result<Extracted, ExtractError> {
    let meta = fs::metadata(dest).map_err(io_error(|| format!("opening the destination {}", dest.display())))?;
    if !meta.is_dir() {
        return Err(ExtractError::Io {
            context: format!("opening the destination {}", dest.display()),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut archive = tar::Archive::new(EofWatch {
        inner: reader,
        reached_eof: false,
    });
    let mut unpacker = Unpacker {
        dest,
        extracted: Extracted::default(),
        dirs: BTreeMap::new(),
    };
    for entry in archive
        .entries()
        .map_err(io_error(|| "reading the archive".to_string()))?
    {
        let entry = entry.map_err(io_error(|| "reading the archive".to_string()))?;
        unpacker.entry(entry)?;
    }
    // The tar crate takes a clean end of input for the end of the archive, so an archive cut
    // off between two entries would otherwise look complete.
    if archive.into_inner().reached_eof {
        return Err(ExtractError::Io {
            context: "reading the archive".to_string(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive stops without its end-of-archive marker; it is probably truncated",
            ),
        });
    }
    unpacker.finish_dirs()?;
    Ok(unpacker.extracted)
}

struct EofWatch<R> {
    inner: R,
    reached_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.reached_eof = true;
        }
        Ok(n)
    }
}

fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> ExtractError {
    move |source| ExtractError::Io {
        context: context(),
        source,
    }
}

enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

struct DirAttrs {
    mode: u32,
    mtime: SystemTime,
}

struct Unpacker<'a> {
    dest: &'a Path,
    extracted: Extracted,
    /// Directories the archive lists, by path relative to `dest`; a path sorts after its
    /// ancestors, so walking this backwards finishes children before their parents.
    dirs: BTreeMap<PathBuf, DirAttrs>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = match entry.header().entry_type() {
            // Old (pre-POSIX) archives mark directories only by a trailing slash.
            EntryType::Regular if raw_path.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            // `git archive` (and so GitHub's release tarballs) starts with one; it only
            // carries the commit id.
            EntryType::XGlobalHeader => return Ok(()),
            other => {
                let kind = match other {
                    EntryType::Char => "character device".to_string(),
                    EntryType::Block => "block device".to_string(),
                    EntryType::Fifo => "FIFO (named pipe)".to_string(),
                    other => format!("entry of unknown type `{}`", other.as_byte().escape_ascii()),
                };
                return Err(ExtractError::Unsupported { path: shown, kind });
            }
        };

        let rel = match relative_path(&raw_path) {
            Ok(rel) => rel,
            Err(BadPath::Absolute) => return Err(ExtractError::AbsolutePath { path: shown }),
            Err(BadPath::Parent) => return Err(ExtractError::ParentComponent { path: shown }),
        };
        if rel.as_os_str().is_empty() {
            // `./` itself: the destination belongs to the caller, so its mode is left alone.
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(ExtractError::ReplacesDestination { path: shown }),
            };
        }

        let header = entry.header();
        let mode = header
            .mode()
            .map_err(io_error(|| format!("reading the mode of `{shown}`")))?
            & 0o7777;
        let mtime = header
            .mtime()
            .map_err(io_error(|| format!("reading the time of `{shown}`")))?;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);

        match kind {
            Kind::Dir => self.dir(&rel, &shown, DirAttrs { mode, mtime }),
            Kind::File => self.file(&mut entry, &rel, &shown, mode, mtime),
            Kind::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&rel, &shown, target)
            }
            Kind::HardLink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hard_link(&rel, &shown, target)
            }
        }
    }

    fn dir(&mut self, rel: &Path, shown: &str, attrs: DirAttrs) -> Result<(), ExtractError> {
        let full = self.parents(rel, shown)?;
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                // A directory entry replaces an earlier file or symlink, as with `tar`.
                fs::remove_file(&full).map_err(io_error(|| format!("replacing {}", full.display())))?;
                create_dir(&full, WORKING_DIR_MODE)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&full, WORKING_DIR_MODE)?,
            Err(e) => return Err(io_error(|| format!("inspecting {}", full.display()))(e)),
        }
        // A later entry for the same directory wins, as with `tar`.
        self.dirs.insert(rel.to_path_buf(), attrs);
        self.extracted.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
        mode: u32,
        mtime: SystemTime,
    ) -> Result<(), ExtractError> {
        let full = self.parents(rel, shown)?;
        clear(&full, shown)?;
        // `create_new` fails on anything already there, a symlink included, so the file is
        // never written through a link even if something changed since `clear`.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(WORKING_FILE_MODE)
            .open(&full)
            .map_err(io_error(|| format!("creating {}", full.display())))?;
        let written = io::copy(entry, &mut file).map_err(io_error(|| format!("unpacking `{shown}`")))?;
        // The tar crate hands out a short file, not an error, when the input ends inside it.
        if written != entry.size() {
            return Err(ExtractError::Io {
                context: format!("unpacking `{shown}`"),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends {written} bytes into a {}-byte file", entry.size()),
                ),
            });
        }
        // Changing the mode after writing keeps setuid/setgid bits (writing clears them) and
        // is not narrowed by the umask.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error(|| format!("setting the mode of {}", full.display())))?;
        file.set_modified(mtime)
            .map_err(io_error(|| format!("setting the time of {}", full.display())))?;
        self.extracted.files += 1;
        self.extracted.bytes += written;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, shown: &str, target: Option<Vec<u8>>) -> Result<(), ExtractError> {
        let target = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ExtractError::MissingLinkTarget {
                path: shown.to_string(),
            })?;
        let depth = rel.components().count() - 1;
        if let Err(bad) = check_symlink_target(&target, depth) {
            let (path, target) = (shown.to_string(), lossy(&target));
            return Err(match bad {
                BadTarget::Absolute => ExtractError::SymlinkAbsolute { path, target },
                BadTarget::Escapes => ExtractError::SymlinkEscapes { path, target },
                BadTarget::ClimbsBack => ExtractError::SymlinkClimbsBack { path, target },
            });
        }
        let full = self.parents(rel, shown)?;
        clear(&full, shown)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
            .map_err(io_error(|| format!("creating the symlink {}", full.display())))?;
        self.extracted.symlinks += 1;
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, shown: &str, target: Option<Vec<u8>>) -> Result<(), ExtractError> {
        let target = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ExtractError::MissingLinkTarget {
                path: shown.to_string(),
            })?;
        let outside = || ExtractError::HardLinkOutside {
            path: shown.to_string(),
            target: lossy(&target),
        };
        let not_a_file = || ExtractError::HardLinkTarget {
            path: shown.to_string(),
            target: lossy(&target),
        };
        let target_rel = relative_path(&target).map_err(|_| outside())?;
        if target_rel.as_os_str().is_empty() {
            return Err(not_a_file());
        }
        // Walking the target by hand, refusing symlinks, keeps the link inside `dest`; a hard
        // link to a file outside would let a later chmod or chown of the layer change it.
        let mut target_full = self.dest.to_path_buf();
        let count = target_rel.iter().count();
        for (i, name) in target_rel.iter().enumerate() {
            target_full.push(name);
            let meta = fs::symlink_metadata(&target_full).map_err(|_| not_a_file())?;
            let last = i + 1 == count;
            if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
                return Err(not_a_file());
            }
        }
        if target_rel == rel {
            // A file linked to itself is already there; removing it first would lose it.
            self.extracted.files += 1;
            return Ok(());
        }
        let full = self.parents(rel, shown)?;
        clear(&full, shown)?;
        fs::hard_link(&target_full, &full).map_err(io_error(|| {
            format!("linking {} to {}", full.display(), target_full.display())
        }))?;
        self.extracted.files += 1;
        Ok(())
    }

    /// Makes every directory above `rel` exist as a real directory, refusing to go through a
    /// symlink, and returns the full path of `rel`.
    fn parents(&self, rel: &Path, shown: &str) -> Result<PathBuf, ExtractError> {
        let mut full = self.dest.to_path_buf();
        let mut so_far = PathBuf::new();
        for name in rel.parent().unwrap_or(Path::new("")).iter() {
            full.push(name);
            so_far.push(name);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::ThroughSymlink {
                        path: shown.to_string(),
                        link: so_far.display().to_string(),
                    });
                }
                Ok(_) => {
                    return Err(ExtractError::ParentNotDirectory {
                        path: shown.to_string(),
                        parent: so_far.display().to_string(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_dir(&full, IMPLIED_DIR_MODE)?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(IMPLIED_DIR_MODE))
                        .map_err(io_error(|| format!("setting the mode of {}", full.display())))?;
                }
                Err(e) => return Err(io_error(|| format!("inspecting {}", full.display()))(e)),
            }
        }
        full.push(rel.file_name().unwrap_or_default());
        Ok(full)
    }

    /// Gives the archive's directories their modes and times, children before parents so
    /// that a directory made read-only does not block its children.
    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        for (rel, attrs) in self.dirs.iter().rev() {
            let full = self.dest.join(rel);
            let is_dir = fs::symlink_metadata(&full)
                .map_err(io_error(|| format!("inspecting {}", full.display())))?
                .is_dir();
            // Nothing replaces a directory once made, but the mode must never land on
            // whatever a symlink in its place would point to.
            if !is_dir {
                continue;
            }
            let dir = File::open(&full).map_err(io_error(|| format!("opening {}", full.display())))?;
            dir.set_modified(attrs.mtime)
                .map_err(io_error(|| format!("setting the time of {}", full.display())))?;
            dir.set_permissions(fs::Permissions::from_mode(attrs.mode))
                .map_err(io_error(|| format!("setting the mode of {}", full.display())))?;
        }
        Ok(())
    }
}

fn create_dir(full: &Path, mode: u32) -> Result<(), ExtractError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(full)
        .map_err(io_error(|| format!("creating directory {}", full.display())))
}

/// Removes an earlier entry at `full` so that a later one replaces it (tar semantics) rather
/// than being written through it. A directory is never replaced: its contents may already be
/// unpacked, and the checks made on paths below it rely on it staying a directory.
fn clear(full: &Path, shown: &str) -> Result<(), ExtractError> {
    match fs::symlink_metadata(full) {
        Ok(meta) if meta.is_dir() => Err(ExtractError::ReplacesDirectory {
            path: shown.to_string(),
        }),
        Ok(_) => fs::remove_file(full).map_err(io_error(|| format!("replacing {}", full.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(|| format!("inspecting {}", full.display()))(e)),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

enum BadPath {
    Absolute,
    Parent,
}

/// The entry's path below the destination, with `.` and empty components dropped. Any `..`
/// is refused rather than resolved: no release tarball needs one.
fn relative_path(raw: &[u8]) -> Result<PathBuf, BadPath> {
    if raw.starts_with(b"/") {
        return Err(BadPath::Absolute);
    }
    let mut rel = PathBuf::new();
    for name in raw.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => return Err(BadPath::Parent),
            name => rel.push(OsStr::from_bytes(name)),
        }
    }
    Ok(rel)
}

enum BadTarget {
    Absolute,
    Escapes,
    ClimbsBack,
}

/// Checks that a symlink `depth` directories below the destination stays inside it.
///
/// Only `..` before the first name is accepted: those climb through the link's own parent
/// directories, which are real directories of this tree. A `..` after a name would climb out
/// of whatever that name resolves to, which may itself be a symlink elsewhere, so whether it
/// stays inside could not be decided from the target alone.
fn check_symlink_target(target: &[u8], depth: usize) -> Result<(), BadTarget> {
    if target.starts_with(b"/") {
        return Err(BadTarget::Absolute);
    }
    let mut ups = 0;
    let mut named = false;
    for name in target.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." if named => return Err(BadTarget::ClimbsBack),
            b".." => {
                ups += 1;
                if ups > depth {
                    return Err(BadTarget::Escapes);
                }
            }
            _ => named = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    const MTIME: u64 = 1_700_000_000;

    /// One archive entry, written with raw name bytes because `tar::Builder` refuses to write
    /// the hostile paths these tests need.
    struct E<'a> {
        name: &'a str,
        kind: EntryType,
        mode: u32,
        link: &'a str,
        data: &'a [u8],
    }

    fn file<'a>(name: &'a str, mode: u32, data: &'a [u8]) -> E<'a> {
        E {
            name,
            kind: EntryType::Regular,
            mode,
            link: "",
            data,
        }
    }
    fn dir(name: &str, mode: u32) -> E<'_> {
        E {
            name,
            kind: EntryType::Directory,
            mode,
            link: "",
            data: b"",
        }
    }
    fn symlink<'a>(name: &'a str, link: &'a str) -> E<'a> {
        E {
            name,
            kind: EntryType::Symlink,
            mode: 0o777,
            link,
            data: b"",
        }
    }
    fn hard_link<'a>(name: &'a str, link: &'a str) -> E<'a> {
        E {
            name,
            kind: EntryType::Link,
            mode: 0o644,
            link,
            data: b"",
        }
    }

    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            header.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            header.set_entry_type(e.kind);
            header.set_mode(e.mode);
            header.set_size(e.data.len() as u64);
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            header.set_cksum();
            builder.append(&header, e.data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A temporary directory holding only `dest`, so that anything written beside it shows.
    fn staging() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        (tmp, dest)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// Unpacks `entries` (gzip-compressed) into a fresh staging directory, expects a refusal,
    /// and checks that nothing appeared beside `dest`.
    fn refused(entries: &[E<'_>]) -> ExtractError {
        let (tmp, dest) = staging();
        let err = unpack_tar_gz(&gz(&tar(entries))[..], &dest).unwrap_err();
        assert_eq!(names(tmp.path()), ["dest"], "{err}");
        err
    }

    #[test]
    fn normal_archive_keeps_modes_contents_and_links() {
        let (_tmp, dest) = staging();
        let long = format!("opt/{}/file", "d".repeat(120));
        let mut entries = tar(&[
            dir("bin/", 0o755),
            file("bin/crictl", 0o755, b"crictl binary"),
            file("bin/su", 0o4755, b"setuid"),
            file("bin/wall", 0o2755, b"setgid"),
            file("etc/crictl.yaml", 0o600, b"runtime-endpoint: x\n"),
            symlink("usr/bin/crictl", "../../bin/crictl"),
            symlink("bin/same", "./crictl"),
            hard_link("bin/crictl-hard", "bin/crictl"),
        ]);
        // A GNU long name, as `tar::Builder` writes it, for paths over 100 bytes.
        let mut more = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(4);
        header.set_mtime(MTIME);
        more.append_data(&mut header, &long, &b"long"[..]).unwrap();
        let more = more.into_inner().unwrap();
        // Splice: drop the first archive's two end blocks, append the second whole.
        entries.truncate(entries.len() - 1024);
        entries.extend_from_slice(&more);

        let got = unpack_tar_gz(&gz(&entries)[..], &dest).unwrap();
        assert_eq!(
            got,
            Extracted {
                files: 6,
                dirs: 1,
                symlinks: 2,
                bytes: 13 + 6 + 6 + 20 + 4
            }
        );

        assert_eq!(fs::read(dest.join("bin/crictl")).unwrap(), b"crictl binary");
        assert_eq!(mode(&dest.join("bin")), 0o755);
        assert_eq!(mode(&dest.join("bin/crictl")), 0o755);
        assert_eq!(mode(&dest.join("bin/su")), 0o4755);
        assert_eq!(mode(&dest.join("bin/wall")), 0o2755);
        assert_eq!(mode(&dest.join("etc/crictl.yaml")), 0o600);
        // Implied directories get a root filesystem's usual mode, not the umask's.
        assert_eq!(mode(&dest.join("usr/bin")), 0o755);
        assert_eq!(
            fs::read_link(dest.join("usr/bin/crictl")).unwrap(),
            Path::new("../../bin/crictl")
        );
        assert_eq!(fs::read(dest.join("usr/bin/crictl")).unwrap(), b"crictl binary");
        assert_eq!(fs::read_link(dest.join("bin/same")).unwrap(), Path::new("./crictl"));
        let a = fs::metadata(dest.join("bin/crictl")).unwrap();
        let b = fs::symlink_metadata(dest.join("bin/crictl-hard")).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        assert_eq!(a.nlink(), 2);
        assert_eq!(a.mtime(), MTIME as i64);
        assert_eq!(fs::metadata(dest.join("bin")).unwrap().mtime(), MTIME as i64);
        assert_eq!(fs::read(dest.join(&long)).unwrap(), b"long");
    }

    #[test]
    fn dot_slash_prefixed_archive_unpacks_and_leaves_the_destination_mode_alone() {
        let (_tmp, dest) = staging();
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o750)).unwrap();
        let archive = tar(&[
            dir("./", 0o777),
            dir("./bin/", 0o755),
            file("./bin/crictl", 0o755, b"x"),
            symlink("./bin/link", "crictl"),
            hard_link("./bin/hard", "./bin/crictl"),
        ]);
        let got = unpack_tar_gz(&gz(&archive)[..], &dest).unwrap();
        assert_eq!(
            got,
            Extracted {
                files: 2,
                dirs: 1,
                symlinks: 1,
                bytes: 1
            }
        );
        assert_eq!(names(&dest), ["bin"]);
        assert_eq!(names(&dest.join("bin")), ["crictl", "hard", "link"]);
        assert_eq!(mode(&dest), 0o750);
    }

    #[test]
    fn plain_tar_unpacks() {
        let (_tmp, dest) = staging();
        let got = unpack_tar(&tar(&[file("crictl", 0o755, b"abc")])[..], &dest).unwrap();
        assert_eq!(
            got,
            Extracted {
                files: 1,
                bytes: 3,
                ..Extracted::default()
            }
        );
        assert_eq!(fs::read(dest.join("crictl")).unwrap(), b"abc");
    }

    #[test]
    fn read_only_directory_is_filled_before_its_mode_is_set() {
        let (_tmp, dest) = staging();
        let archive = tar(&[dir("ro/", 0o555), dir("ro/sub/", 0o500), file("ro/sub/f", 0o444, b"f")]);
        unpack_tar(&archive[..], &dest).unwrap();
        assert_eq!(fs::read(dest.join("ro/sub/f")).unwrap(), b"f");
        assert_eq!(mode(&dest.join("ro")), 0o555);
        assert_eq!(mode(&dest.join("ro/sub")), 0o500);
        // Let the temporary directory be removed.
        fs::set_permissions(dest.join("ro/sub"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn pax_global_header_from_git_archive_is_skipped() {
        let (_tmp, dest) = staging();
        let comment = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
        let archive = tar(&[
            E {
                name: "pax_global_header",
                kind: EntryType::XGlobalHeader,
                mode: 0o666,
                link: "",
                data: comment,
            },
            file("f", 0o644, b"f"),
        ]);
        unpack_tar(&archive[..], &dest).unwrap();
        assert_eq!(names(&dest), ["f"]);
    }

    #[test]
    fn later_file_replaces_earlier_file_symlink_and_hard_link_without_following_them() {
        let (_tmp, dest) = staging();
        let archive = tar(&[
            file("f", 0o644, b"one"),
            file("f", 0o755, b"two"),
            file("target", 0o644, b"original"),
            symlink("link", "target"),
            file("link", 0o644, b"replaced"),
            file("a", 0o644, b"a"),
            hard_link("b", "a"),
            file("b", 0o644, b"b"),
            // A directory entry over a symlink replaces the link too.
            symlink("d", "target"),
            dir("d/", 0o755),
            file("d/inside", 0o644, b"i"),
        ]);
        unpack_tar(&archive[..], &dest).unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"two");
        assert_eq!(mode(&dest.join("f")), 0o755);
        assert_eq!(fs::read(dest.join("target")).unwrap(), b"original");
        assert!(fs::symlink_metadata(dest.join("link")).unwrap().is_file());
        assert_eq!(fs::read(dest.join("link")).unwrap(), b"replaced");
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"a");
        assert_eq!(fs::read(dest.join("b")).unwrap(), b"b");
        assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(dest.join("target")).unwrap(), b"original");
    }

    #[test]
    fn file_over_directory_is_refused() {
        let err = refused(&[dir("d/", 0o755), file("d", 0o644, b"x")]);
        assert!(matches!(err, ExtractError::ReplacesDirectory { .. }), "{err}");
    }

    #[test]
    fn absolute_path_is_refused() {
        let err = refused(&[file("/etc/passwd", 0o644, b"root::0:0::/:/bin/sh\n")]);
        assert!(
            matches!(&err, ExtractError::AbsolutePath { path } if path == "/etc/passwd"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "archive entry `/etc/passwd` has an absolute path: refusing to unpack it outside the destination"
        );
    }

    #[test]
    fn parent_component_is_refused() {
        let err = refused(&[file("../escape", 0o644, b"x")]);
        assert!(
            matches!(&err, ExtractError::ParentComponent { path } if path == "../escape"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "archive entry `../escape` escapes the destination through `..`: refusing to unpack"
        );
    }

    #[test]
    fn parent_component_after_a_name_is_refused() {
        let err = refused(&[dir("a/", 0o755), file("a/../../escape", 0o644, b"x")]);
        assert!(
            matches!(&err, ExtractError::ParentComponent { path } if path == "a/../../escape"),
            "{err}"
        );
    }

    #[test]
    fn symlink_to_absolute_target_is_refused() {
        let err = refused(&[symlink("link", "/tmp"), file("link/file", 0o644, b"x")]);
        assert!(
            matches!(&err, ExtractError::SymlinkAbsolute { path, target } if path == "link" && target == "/tmp"),
            "{err}"
        );
    }

    #[test]
    fn symlink_escaping_through_parent_is_refused() {
        for (name, target) in [("link", ".."), ("a/b/link", "../../../x"), ("link", "./../x")] {
            let err = refused(&[symlink(name, target)]);
            assert!(
                matches!(err, ExtractError::SymlinkEscapes { .. }),
                "{name} -> {target}: {err}"
            );
        }
    }

    #[test]
    fn symlink_climbing_back_after_a_name_is_refused() {
        // `sub/up` resolves to the top of the tree, so `sub/up/..` would be its parent.
        let err = refused(&[symlink("sub/up", ".."), symlink("x", "sub/up/..")]);
        assert!(matches!(err, ExtractError::SymlinkClimbsBack { .. }), "{err}");
    }

    #[test]
    fn writing_through_an_escaping_symlink_is_refused_at_the_symlink() {
        let err = refused(&[symlink("evil", ".."), file("evil/file", 0o644, b"x")]);
        assert!(matches!(err, ExtractError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn writing_through_a_symlink_inside_the_tree_is_refused() {
        let err = refused(&[symlink("sub/up", ".."), file("sub/up/file", 0o644, b"x")]);
        assert!(
            matches!(&err, ExtractError::ThroughSymlink { path, link } if path == "sub/up/file" && link == "sub/up"),
            "{err}"
        );
    }

    #[test]
    fn writing_through_a_symlink_already_in_the_destination_is_refused() {
        let (tmp, dest) = staging();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("evil")).unwrap();
        for archive in [tar(&[file("evil/file", 0o644, b"x")]), tar(&[dir("evil/sub/", 0o755)])] {
            let err = unpack_tar(&archive[..], &dest).unwrap_err();
            assert!(matches!(err, ExtractError::ThroughSymlink { .. }), "{err}");
            assert!(names(&outside).is_empty());
        }
    }

    #[test]
    fn hard_link_outside_is_refused() {
        for target in ["/etc/passwd", "../x", "a/../../x"] {
            let err = refused(&[hard_link("passwd", target)]);
            assert!(
                matches!(&err, ExtractError::HardLinkOutside { path, target: t } if path == "passwd" && t == target),
                "{target}: {err}"
            );
        }
    }

    #[test]
    fn hard_link_to_anything_but_an_earlier_regular_file_is_refused() {
        let cases: [&[E<'_>]; 4] = [
            &[hard_link("h", "missing")],
            &[dir("d/", 0o755), hard_link("h", "d")],
            &[file("f", 0o644, b"f"), symlink("l", "f"), hard_link("h", "l")],
            &[
                file("f", 0o644, b"f"),
                symlink("sub/up", ".."),
                hard_link("h", "sub/up/f"),
            ],
        ];
        for entries in cases {
            let err = refused(entries);
            assert!(matches!(err, ExtractError::HardLinkTarget { .. }), "{err}");
        }
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        for (kind, word) in [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "FIFO"),
        ] {
            let err = refused(&[E {
                name: "dev/null",
                kind,
                mode: 0o666,
                link: "",
                data: b"",
            }]);
            assert!(
                matches!(&err, ExtractError::Unsupported { path, .. } if path == "dev/null"),
                "{err}"
            );
            assert!(err.to_string().contains(word), "{err}");
        }
    }

    #[test]
    fn link_without_target_is_refused() {
        let err = refused(&[symlink("l", "")]);
        assert!(matches!(err, ExtractError::MissingLinkTarget { .. }), "{err}");
    }

    #[test]
    fn non_directory_named_like_the_destination_is_refused() {
        let err = refused(&[file(".", 0o644, b"")]);
        assert!(matches!(err, ExtractError::ReplacesDestination { .. }), "{err}");
    }

    fn io_error_text(err: &ExtractError) -> String {
        match err {
            ExtractError::Io { context, source } => format!("{context}: {source}"),
            other => panic!("expected an I/O error, got: {other}"),
        }
    }

    #[test]
    fn truncated_gzip_stream_is_an_error() {
        let whole = gz(&tar(&[file("a", 0o644, &[7; 20_000]), file("b", 0o644, b"b")]));
        // In the gzip header, in the compressed data, and in the trailer after the tar's end.
        for (cut, expected) in [
            (5, "reading the archive"),
            (whole.len() / 2, "reading the archive"),
            (whole.len() - 4, "reading the end of the compressed archive"),
        ] {
            let (_tmp, dest) = staging();
            let err = unpack_tar_gz(&whole[..cut], &dest).unwrap_err();
            let text = io_error_text(&err);
            assert!(text.starts_with(expected), "cut at {cut}: {text}");
        }
    }

    #[test]
    fn truncated_plain_tar_is_an_error() {
        let whole = tar(&[file("a", 0o644, &[7; 2000]), file("b", 0o644, b"b")]);
        for (cut, expected) in [
            (1000, "unpacking `a`: the archive ends 488 bytes into a 2000-byte file"),
            // Exactly between the two entries, which the tar crate alone takes for the end.
            (512 + 2048, "end-of-archive marker"),
        ] {
            let (_tmp, dest) = staging();
            let err = unpack_tar(&whole[..cut], &dest).unwrap_err();
            let text = io_error_text(&err);
            assert!(text.contains(expected), "cut at {cut}: {text}");
        }
    }

    #[test]
    fn error_reports_read_well_through_anyhow() {
        let (_tmp, dest) = staging();
        let err = unpack_tar_gz(&b"not gzip"[..], &dest).unwrap_err();
        let report = format!("{:#}", anyhow::Error::from(err));
        assert!(report.starts_with("reading the archive: "), "{report}");
    }
}

//! Layers on the base: the verified artifacts, overlays/ and the rendered files every node
//! shares, written as one tarball that `mke2fs -d` turns into the root filesystem. Working
//! in a tarball keeps owners, modes and symlinks exact without root or a mounted tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::overlays::{OVERLAYS, Overlay};
use crate::artifacts::cache::Cache;
use crate::artifacts::extract;
use crate::artifacts::lock::{Artifact, Kind};
use crate::artifacts::oci::layout;
use crate::artifacts::oci::pull::Pulled;
use crate::render::{NodeFile, Rendered, UNIT_DIR};

/// Where each node image carries its own bill of materials (the same bytes as
/// `out/<node>.cdx.json`).
pub const BOM_PATH: &str = "/usr/share/kubestick/bom.cdx.json";

/// Where an item's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub enum Item {
    File { source: Source, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// Items keyed by their path inside the image, without the leading `/` (as `usr/bin/x`).
pub type Layer = BTreeMap<String, Item>;

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub base_entries: u64,
    pub replaced: u64,
    pub added: u64,
    pub bytes: u64,
    /// The time every added file carries and no file is newer than (seconds since 1970).
    pub epoch: u64,
}

/// Image path → normalised key.
fn key(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// The verified artifacts (cached files) as items at their `install` paths. Archives are
/// unpacked through the safe extractor into `scratch` first.
pub fn artifact_layer(artifacts: &[(Artifact, PathBuf)], scratch: &Path) -> Result<Layer> {
    let mut layer = Layer::new();
    for (artifact, cached) in artifacts {
        match artifact.kind {
            Kind::Binary => {
                layer.insert(
                    key(&artifact.install),
                    Item::File {
                        source: Source::File(cached.clone()),
                        mode: 0o755,
                    },
                );
            }
            Kind::Manifest => {
                layer.insert(
                    key(&artifact.install),
                    Item::File {
                        source: Source::File(cached.clone()),
                        mode: 0o644,
                    },
                );
            }
            Kind::Archive => {
                let dest = scratch.join(&artifact.name);
                fs::create_dir_all(&dest)?;
                let file = File::open(cached).with_context(|| format!("opening {}", cached.display()))?;
                extract::unpack_tar_gz(BufReader::new(file), &dest)
                    .with_context(|| format!("unpacking {} ({})", artifact.name, cached.display()))?;
                add_tree(&mut layer, &dest, &key(&artifact.install))?;
            }
        }
    }
    Ok(layer)
}

/// The container images a node carries, as the OCI image layout first boot imports, plus
/// the list of names the import must leave behind. Blobs come straight from the cache.
pub fn image_layer(images: &[&Pulled], cache: &Cache) -> Result<Layer> {
    let mut layer = Layer::new();
    if images.is_empty() {
        return Ok(layer);
    }
    let mut sorted = images.to_vec();
    sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
    let dir = key(layout::DIR);
    for sub in ["", "/blobs", "/blobs/sha256"] {
        layer.insert(format!("{dir}{sub}"), Item::Dir { mode: 0o755 });
    }
    layer.insert(
        format!("{dir}/oci-layout"),
        Item::File {
            source: Source::Bytes(layout::OCI_LAYOUT.as_bytes().to_vec()),
            mode: 0o644,
        },
    );
    layer.insert(
        format!("{dir}/index.json"),
        Item::File {
            source: Source::Bytes(layout::index_json(&sorted)),
            mode: 0o644,
        },
    );
    layer.insert(
        key(layout::NAMES),
        Item::File {
            source: Source::Bytes(layout::names(&sorted).into_bytes()),
            mode: 0o644,
        },
    );
    for p in &sorted {
        for (digest, _) in &p.blobs {
            let path = cache.path(digest);
            if !path.exists() {
                bail!("{} of {} is not in the cache ({})", digest, p.reference, path.display());
            }
            layer.insert(
                format!("{dir}/blobs/{}/{}", digest.algorithm.as_str(), digest.hex),
                Item::File {
                    source: Source::File(path),
                    mode: 0o644,
                },
            );
        }
    }
    Ok(layer)
}

/// Everything below `dir` as items under `prefix`.
fn add_tree(layer: &mut Layer, dir: &Path, prefix: &str) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(&path)?;
        use std::os::unix::fs::PermissionsExt as _;
        if meta.file_type().is_symlink() {
            layer.insert(
                name,
                Item::Symlink {
                    target: fs::read_link(&path)?.to_string_lossy().into_owned(),
                },
            );
        } else if meta.is_dir() {
            layer.insert(
                name.clone(),
                Item::Dir {
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
            add_tree(layer, &path, &name)?;
        } else {
            layer.insert(
                name,
                Item::File {
                    source: Source::File(path),
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
        }
    }
    Ok(())
}

pub fn overlay_layer() -> Layer {
    let mut layer: Layer = OVERLAYS
        .iter()
        .map(|(path, o)| {
            let item = match o {
                Overlay::File { mode, data } => Item::File {
                    source: Source::Bytes(data.to_vec()),
                    mode: *mode,
                },
                Overlay::Symlink(target) => Item::Symlink {
                    target: target.to_string(),
                },
            };
            (key(path), item)
        })
        .collect();
    // Each node image's bill of materials is written here when the node's image is made.
    let bom_dir = Path::new(BOM_PATH).parent().expect("BOM_PATH has a directory");
    layer.insert(key(&bom_dir.to_string_lossy()), Item::Dir { mode: 0o755 });
    layer
}

/// The rendered files and units every node shares.
pub fn rendered_layer(rendered: &Rendered) -> Layer {
    let file = |f: &NodeFile| {
        (
            key(&f.path),
            Item::File {
                source: Source::Bytes(f.content.clone().into_bytes()),
                mode: f.mode_decimal,
            },
        )
    };
    let mut layer: Layer = rendered.common_files.iter().map(file).collect();
    for unit in &rendered.units {
        layer.insert(
            key(&format!("{UNIT_DIR}/{}", unit.name)),
            Item::File {
                source: Source::Bytes(unit.content.clone().into_bytes()),
                mode: 0o644,
            },
        );
        for target in &unit.wanted_by {
            layer.insert(
                key(&format!("{UNIT_DIR}/{target}.wants/{}", unit.name)),
                Item::Symlink {
                    target: format!("../{}", unit.name),
                },
            );
        }
    }
    layer
}

/// Writes `base` with `layers` applied (later layers win) to `out`. Every time in it comes
/// from the inputs, never the clock: the added files carry `source_date_epoch` (and no base
/// file is left newer, as reproducible-builds.org asks of SOURCE_DATE_EPOCH) or, without
/// one, the newest time in the base: the day the cached base was built.
pub fn compose(base: &Path, layers: &[Layer], source_date_epoch: Option<u64>, out: &Path) -> Result<Stats> {
    let mut merged = Layer::new();
    for layer in layers {
        merged.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut stats = Stats::default();
    let mut builder = tar::Builder::new(BufWriter::with_capacity(
        1 << 20,
        File::create(out).with_context(|| format!("creating {}", out.display()))?,
    ));
    builder.mode(tar::HeaderMode::Complete);
    let mut dirs = BTreeSet::new();

    let mut archive = tar::Archive::new(BufReader::with_capacity(
        1 << 20,
        File::open(base).with_context(|| format!("opening {}", base.display()))?,
    ));
    for entry in archive.entries().context("reading the base tarball")? {
        let mut entry = entry.context("reading the base tarball")?;
        let path = key(&String::from_utf8_lossy(&entry.path_bytes()));
        if entry.header().entry_type().is_dir() {
            dirs.insert(path.clone());
        }
        if merged.contains_key(&path) && !entry.header().entry_type().is_dir() {
            stats.replaced += 1;
            continue;
        }
        // Extended attributes (ACLs, file capabilities) travel as pax records; the path
        // record is rewritten by the builder itself.
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions().context("reading pax headers")? {
            Some(pax) => pax
                .flatten()
                .filter_map(|e| Some((e.key().ok()?.to_string(), e.value_bytes().to_vec())))
                .filter(|(k, _)| k.starts_with("SCHILY.xattr."))
                .collect(),
            None => Vec::new(),
        };
        if !xattrs.is_empty() {
            builder.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut header = entry.header().clone();
        let mtime = header.mtime().unwrap_or(0);
        match source_date_epoch {
            Some(epoch) if mtime > epoch => header.set_mtime(epoch),
            Some(_) => {}
            None => stats.epoch = stats.epoch.max(mtime),
        }
        stats.base_entries += 1;
        stats.bytes += header.size().unwrap_or(0);
        // Long names and link targets were folded into the header by the reader; write
        // them back the same way.
        let name = entry.path().context("reading a base entry's path")?.into_owned();
        if let Some(link) = entry.link_name().context("reading a base entry's link")? {
            let link = link.into_owned();
            builder.append_link(&mut header, &name, &link)?;
        } else {
            builder.append_data(&mut header, &name, &mut entry)?;
        }
    }

    if let Some(epoch) = source_date_epoch {
        stats.epoch = epoch;
    }
    let mtime = stats.epoch;
    for (path, item) in &merged {
        // Parents the base does not have are created root-owned, 0755.
        let mut parent = Path::new(path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let p = p.to_string_lossy().into_owned();
            if dirs.contains(&p) || merged.contains_key(&p) {
                break;
            }
            missing.push(p);
            parent = Path::new(missing.last().expect("just pushed")).parent();
        }
        for dir in missing.into_iter().rev() {
            append(&mut builder, &dir, &Item::Dir { mode: 0o755 }, mtime, &mut stats)?;
            dirs.insert(dir);
        }
        if let Item::Dir { .. } = item {
            dirs.insert(path.clone());
        }
        append(&mut builder, path, item, mtime, &mut stats)?;
    }
    builder
        .into_inner()
        .context("finishing the root filesystem tarball")?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(stats)
}

fn append(
    builder: &mut tar::Builder<BufWriter<File>>,
    path: &str,
    item: &Item,
    mtime: u64,
    stats: &mut Stats,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    let name = format!("./{path}");
    match item {
        Item::Dir { mode } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(*mode);
            header.set_size(0);
            builder.append_data(&mut header, &name, io::empty())?;
        }
        Item::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, &name, target)?;
        }
        Item::File { source, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            match source {
                Source::Bytes(data) => {
                    header.set_size(data.len() as u64);
                    stats.bytes += data.len() as u64;
                    builder.append_data(&mut header, &name, data.as_slice())?;
                }
                Source::File(p) => {
                    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    let len = f.metadata()?.len();
                    header.set_size(len);
                    stats.bytes += len;
                    builder.append_data(&mut header, &name, BufReader::with_capacity(1 << 20, f))?;
                }
            }
        }
    }
    stats.added += 1;
    Ok(())
}

/// Reads the named files (as `boot/vmlinuz-...`) out of a tarball; symlinks are followed
/// within the tarball once.
pub fn read_files(tarball: &Path, wanted: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(BufReader::new(
        File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?,
    ));
    // Seeking past the entries not wanted: the base is hundreds of MiB.
    for entry in archive.entries_with_seek()? {
        let mut entry = entry?;
        let path = key(&String::from_utf8_lossy(&entry.path_bytes()));
        if entry.header().entry_type().is_file() && wanted(&path) {
            let mut data = Vec::with_capacity(entry.size() as usize);
            io::copy(&mut entry, &mut data)?;
            out.insert(path, data);
        }
    }
    if out.is_empty() {
        bail!("{} holds none of the files looked for", tarball.display());
    }
    Ok(out)
}

//! Writes a [`Rendered`] cluster to the output directory:
//!
//! ```text
//! out/admin.conf                        admin kubeconfig (0600)
//! out/common/files/...                  files and units every node shares (go into the image)
//! out/<node>/cloud-init/meta-data       NoCloud files for the CIDATA partition
//! out/<node>/cloud-init/user-data
//! out/<node>/cloud-init/network-config
//! out/<node>/ignition.json              the same node as an Ignition v3 config
//! out/<node>/files/...                  the node's own files as they land on it
//! ```
//!
//! Everything is written into a staging directory inside `out/` first and then moved
//! into place entry by entry, so an interrupted run never leaves a half-written node.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{MODE_FILE, MODE_SECRET, NodeFile, Rendered, UNIT_DIR};
use crate::fsx::{PRIVATE_DIR_MODE, create_dir_mode};

pub fn write(rendered: &Rendered, out: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating output directory {}", out.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".kubestick-render.")
        .suffix(".partial")
        .tempdir_in(out)
        .with_context(|| format!("creating a staging directory in {}", out.display()))?;
    let stage = staging.path();
    let _unfinished = crate::interrupt::track(stage);

    put(&stage.join("admin.conf"), &rendered.admin_kubeconfig, MODE_SECRET)?;
    create_dir_mode(&stage.join("common"), 0o755)?;
    put_tree(&stage.join("common/files"), &rendered.common_files)?;
    for unit in &rendered.units {
        let path = format!("common/files{UNIT_DIR}/{}", unit.name);
        put(&stage.join(path), &unit.content, MODE_FILE)?;
    }
    for node in &rendered.nodes {
        let dir = stage.join(&node.name);
        // Node directories hold secrets (tokens, CA keys): private.
        create_dir_mode(&dir, PRIVATE_DIR_MODE)?;
        put(&dir.join("cloud-init/meta-data"), &node.meta_data, MODE_FILE)?;
        put(&dir.join("cloud-init/user-data"), &node.user_data, MODE_SECRET)?;
        put(&dir.join("cloud-init/network-config"), &node.network_config, MODE_FILE)?;
        put(&dir.join("ignition.json"), &node.ignition, MODE_SECRET)?;
        put_tree(&dir.join("files"), &node.files)?;
    }

    let mut written = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(stage)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let target = out.join(entry.file_name());
        replace(&entry.path(), &target)?;
        written.push(target);
    }
    Ok(written)
}

fn put(path: &Path, contents: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn put_tree(root: &Path, files: &[NodeFile]) -> Result<()> {
    for f in files {
        put(&root.join(f.path.trim_start_matches('/')), &f.content, f.mode_decimal)?;
    }
    Ok(())
}

/// Moves `staged` to `target`, replacing what was there. The old entry is moved aside
/// first and removed last, so `target` is always either the old or the new version.
fn replace(staged: &Path, target: &Path) -> Result<()> {
    let old = target.with_file_name(format!(
        ".{}.old-{}",
        target.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let had_old = match fs::symlink_metadata(target) {
        Ok(_) => {
            fs::rename(target, &old).with_context(|| format!("moving the previous {} aside", target.display()))?;
            true
        }
        Err(_) => false,
    };
    fs::rename(staged, target).with_context(|| format!("moving the new {} into place", target.display()))?;
    if had_old {
        let meta = fs::symlink_metadata(&old)?;
        if meta.is_dir() {
            fs::remove_dir_all(&old)
        } else {
            fs::remove_file(&old)
        }
        .with_context(|| format!("removing the previous version at {}", old.display()))?;
    }
    Ok(())
}

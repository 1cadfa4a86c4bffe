//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: remove whatever is half-written, then exit.
//!
//! Every stage writes beside its target and renames into place, so an interrupted run never
//! leaves a half-written file where a finished one belongs. The default signal action kills
//! the process on the spot, though, and destructors never run: staging directories and
//! `.partial` files would be left in `out/`, the cache and the state directory. Stages
//! register such paths with [`track`]; a signal removes every registered path and exits
//! with 128 + the signal number, as a shell reports a process killed by it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static PENDING: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The environment variable naming a [`pause_point`] at which the process waits for a signal.
pub const PAUSE_ENV: &str = "KUBESTICK_TEST_PAUSE_AT";

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of their own from now on.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let removed = remove_pending();
            if removed > 0 {
                eprintln!("\ninterrupted: removed {removed} unfinished file(s); nothing finished was touched");
            } else {
                eprintln!("\ninterrupted");
            }
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
}

/// Registers a path to remove if the process is interrupted before the guard is dropped.
/// Keep the guard for as long as the path holds unfinished work; a path that was renamed
/// into place meanwhile is simply no longer there to remove.
#[must_use = "the path is forgotten when the guard is dropped"]
pub fn track(path: &Path) -> Tracked {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    pending().insert(id, path.to_path_buf());
    Tracked(id)
}

/// Guard returned by [`track`].
#[derive(Debug)]
pub struct Tracked(u64);

impl Drop for Tracked {
    fn drop(&mut self) {
        pending().remove(&self.0);
    }
}

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<u64, PathBuf>> {
    // A panic while holding the lock leaves the map as it was: still usable.
    PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every registered path; returns how many existed.
fn remove_pending() -> usize {
    remove_all(pending().values())
}

/// Removes files and whole directories (a symlink itself, never what it points to);
/// returns how many existed and are gone.
fn remove_all<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> usize {
    let mut removed = 0;
    for path in paths {
        let gone = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
            Ok(_) => std::fs::remove_file(path).is_ok(),
            Err(_) => false,
        };
        removed += usize::from(gone);
    }
    removed
}

/// Where a test interrupts the process deterministically: when [`PAUSE_ENV`] names this
/// point, the process says so on stderr and waits here for a signal instead of racing it.
pub fn pause_point(name: &str) {
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == name) {
        eprintln!("kubestick: paused at {name} ({PAUSE_ENV}); waiting for a signal");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_forgets_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.partial");
        let guard = track(&path);
        assert!(pending().values().any(|p| p == &path));
        drop(guard);
        assert!(!pending().values().any(|p| p == &path));
    }

    #[test]
    fn removal_takes_files_and_trees_and_leaves_what_a_link_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".node.img.partial");
        let tree = dir.path().join(".kubestick-render.x.partial");
        let kept = dir.path().join("kept");
        let link = dir.path().join(".link.partial");
        std::fs::write(&file, b"half").unwrap();
        std::fs::create_dir_all(tree.join("node/files")).unwrap();
        std::fs::write(tree.join("node/files/a"), b"a").unwrap();
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("finished"), b"done").unwrap();
        std::os::unix::fs::symlink(&kept, &link).unwrap();
        let renamed_away = dir.path().join(".already-renamed.partial");
        let paths = [file.clone(), tree.clone(), link.clone(), renamed_away];
        assert_eq!(remove_all(&paths), 3);
        assert!(!file.exists() && !tree.exists() && link.symlink_metadata().is_err());
        assert_eq!(std::fs::read(kept.join("finished")).unwrap(), b"done");
    }
}

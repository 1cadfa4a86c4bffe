//! The files in overlays/, compiled in by build.rs.

/// One entry below overlays/, keyed by its path relative to the root.
#[derive(Debug, Clone, Copy)]
pub enum Overlay {
    File { mode: u32, data: &'static [u8] },
    Symlink(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/overlays.rs"));

//! Stage 5: the node root filesystem. A Debian trixie base from mmdebstrap (cached by its
//! inputs), with the verified artifacts, overlays/ and the rendered common files layered
//! on top, as one tarball for `mke2fs -d`.

pub mod base;
pub mod compose;
pub mod overlays;
pub mod tools;

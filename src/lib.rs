//! kubestick: one cluster.toml in, one bootable disk image per node out.
//!
//! The stages run in this order and data only flows forward:
//! [`spec`] → [`secrets`] → [`render`] → [`artifacts`]. [`cli`] wires them together.

pub mod artifacts;
pub mod build;
pub mod cli;
pub mod diag;
pub mod flash;
pub mod fsx;
pub mod image;
pub mod progress;
pub mod render;
pub mod rootfs;
pub mod secrets;
pub mod spec;
pub mod vm;

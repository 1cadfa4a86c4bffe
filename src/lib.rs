//! kubestick: one cluster.toml in, one bootable disk image per node out.
//!
//! The stages run in this order and data only flows forward:
//! [`spec`] → [`secrets`] → [`render`] → [`artifacts`] → [`rootfs`] → [`image`]; [`build`]
//! runs them, and writes `out/cluster.json` ([`image::manifest`]) beside the images. [`vm`]
//! and [`flash`] only consume finished images. [`error`], [`diag`], [`fsx`], [`progress`], [`release`] and
//! [`interrupt`] sit below every stage; [`cli`] wires everything together at the top.

pub mod artifacts;
pub mod bom;
pub mod build;
pub mod cli;
pub mod diag;
pub mod diff;
pub mod error;
pub mod flash;
pub mod fsx;
pub mod image;
pub mod interrupt;
pub mod progress;
pub mod release;
pub mod render;
pub mod rootfs;
pub mod secrets;
pub mod spec;
pub mod vm;

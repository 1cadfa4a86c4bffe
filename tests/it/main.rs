//! Integration tests: they run the real `kubestick` binary and check its outputs, with
//! the real validators where one exists.

mod bad_input;
mod build;
mod common;
mod fetch;
mod firstboot;
mod flash;
mod http_server;
mod images;
mod registry;
mod render;
mod secrets;
mod snapshots;
mod validators;
mod vm;

//! Error types every stage may return, kept at the bottom of the crate so that no stage has to
//! import the command line (or a later stage) to say "the user must fix this".

/// A mistake in what the user asked for on the command line or in a build output directory
/// they pointed at (exit 2): the message names the value and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

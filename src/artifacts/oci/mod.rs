//! Container images: pulled by digest over the OCI distribution API (or copied from a
//! mirror directory in OCI layout) into the same content-addressed cache as files, then
//! written into node images as an OCI image layout.
//!
//! The protocol is spoken here on the blocking reqwest client the file downloads use, with
//! `oci-spec` for the types and reference grammar and `http-auth` for the challenge. The
//! `oci-client` crate was the alternative: it reads whole manifest bodies into memory
//! without a bound (a broken or hostile registry can exhaust memory), has no retries, and
//! brings a second, async HTTP stack; the retry, resume, progress and cache code the
//! files already use would have been written again around it.

pub mod layout;
pub mod pull;
pub mod reference;
pub mod registry;

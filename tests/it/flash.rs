//! `kubestick flash` tests (being written).

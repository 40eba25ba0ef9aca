//! Reseed: a full, online block copy of a database onto a copy's volume.

pub mod engine;

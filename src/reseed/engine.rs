//! Block copy engines: copy byte ranges of one open file to the same offsets of another.
//!
//! The seeder (in `reseed/`) decides *what* to copy and holds the locks that keep a
//! file being written by the database consistent; an engine only moves bytes, as fast as
//! the disks allow. Two engines:
//!
//! - `io_uring` (Linux, `platform/linux/uring.rs`): registered buffers, many requests in
//!   flight, chunks of [`CHUNK`] bytes;
//! - `threads` (portable): a few threads doing `pread`/`pwrite` of [`CHUNK`]-byte chunks.
//!
//! [`select`] picks one: io_uring when the kernel allows it, else threads, and says why.

use std::fs::File;
use std::io;

use serde::{Deserialize, Serialize};

/// Bytes per request.
pub const CHUNK: u64 = 1 << 20;

/// Requests kept in flight by an engine.
pub const IN_FLIGHT: usize = 16;

/// Alignment of offsets, lengths and buffers for direct I/O.
pub const ALIGN: u64 = 4096;

/// A byte range, the same in the source and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Which side of a copy failed, so the seeder can switch to another source copy or fail
/// the destination copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source failed.
    #[error("reading the source copy: {0}")]
    Source(#[source] io::Error),
    /// Writing the destination failed.
    #[error("writing the new copy: {0}")]
    Dest(#[source] io::Error),
}

/// Which engine to use (`[reseed] engine` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring when available, else threads.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// The portable engine.
    Threads,
}

/// Copies extents between two files.
pub trait CopyEngine: Send + std::fmt::Debug {
    /// `io_uring` or `threads`, for status and benchmarks.
    fn name(&self) -> &'static str;

    /// Copies every extent of `src` to the same offsets of `dst` and returns the bytes
    /// written. Extents may be copied concurrently and in any order; when this returns
    /// `Ok`, all of them are written (not necessarily durable: the seeder fsyncs).
    ///
    /// `direct`: both files were opened with `O_DIRECT`; then every extent's offset and
    /// length are multiples of [`ALIGN`] and the engine uses aligned buffers.
    ///
    /// A read that ends early (the source is shorter than the extent) copies what was
    /// read and goes on with the next extent.
    fn copy(
        &mut self,
        src: &File,
        dst: &File,
        extents: &[Extent],
        direct: bool,
    ) -> Result<u64, CopyError>;
}

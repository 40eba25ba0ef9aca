//! Stand-ins for the engine helpers until the engine branch lands (deleted at merge).
#![allow(missing_docs)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::engine::{ALIGN, CopyEngine, CopyError, EngineChoice, Extent};

#[derive(Debug)]
pub struct SimpleEngine;

impl CopyEngine for SimpleEngine {
    fn name(&self) -> &'static str {
        "threads"
    }
    fn copy(
        &mut self,
        src: &File,
        dst: &File,
        extents: &[Extent],
        direct: bool,
    ) -> Result<u64, CopyError> {
        let _ = direct;
        let mut buf = memmap2::MmapMut::map_anon(1 << 20).map_err(CopyError::Source)?;
        let mut total = 0;
        for e in extents {
            let mut off = e.offset;
            let end = e.offset + e.len;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                let got = src.read_at(&mut buf[..n], off).map_err(CopyError::Source)?;
                if got == 0 {
                    break;
                }
                dst.write_all_at(&buf[..got], off)
                    .map_err(CopyError::Dest)?;
                off += got as u64;
                total += got as u64;
            }
        }
        Ok(total)
    }
}

pub fn select(_c: EngineChoice) -> Result<(Box<dyn CopyEngine>, Option<String>), String> {
    Ok((Box::new(SimpleEngine), None))
}

pub fn data_extents(f: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::OPNOTSUPP => {
                out.push(Extent {
                    offset: pos,
                    len: end - pos,
                });
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(f, SeekFrom::Hole(data))?.min(end);
        out.push(Extent {
            offset: data,
            len: hole - data,
        });
        pos = hole;
    }
    Ok(out)
}

pub fn split_aligned(extents: &[Extent]) -> (Vec<Extent>, Vec<Extent>) {
    let mut aligned = Vec::new();
    let mut rest = Vec::new();
    for e in extents {
        let end = e.offset + e.len;
        let a = e.offset.div_ceil(ALIGN) * ALIGN;
        let b = end / ALIGN * ALIGN;
        if a >= b {
            rest.push(*e);
            continue;
        }
        if a > e.offset {
            rest.push(Extent {
                offset: e.offset,
                len: a - e.offset,
            });
        }
        aligned.push(Extent {
            offset: a,
            len: b - a,
        });
        if end > b {
            rest.push(Extent {
                offset: b,
                len: end - b,
            });
        }
    }
    (aligned, rest)
}

//! FUSE opcodes the device serves itself, ahead of fuse-backend-rs's `Server`.
//!
//! fuse-backend-rs 0.14 does not dispatch `FUSE_COPY_FILE_RANGE`; without it
//! the guest falls back to reading and writing every byte through the queue.
//! Serving it here lets the host copy (and reflink, where the filesystem can)
//! without the data ever crossing guest memory.

use std::io::{self, Write};

use fuse_backend_rs::abi::fuse_abi::{CopyFileRangeIn, InHeader, Opcode, OutHeader, WriteOut};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::transport::{Reader, Writer};
use fuse_backend_rs::Error;
use passthrough::PassthroughFs;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

/// If the request in `r` is one this module serves, serves it and returns the
/// reply length; otherwise returns `None` and leaves `w` untouched.
pub fn try_handle<S: BitmapSlice>(
    fs: &PassthroughFs,
    mut r: Reader<'_, S>,
    w: &mut Writer<'_, S>,
) -> Result<Option<usize>, Error> {
    let header: InHeader = match r.read_obj() {
        Ok(h) => h,
        // Let the regular server produce its own error for short requests.
        Err(_) => return Ok(None),
    };
    if header.opcode != Opcode::CopyFileRange as u32 {
        return Ok(None);
    }
    let result = match r.read_obj::<CopyFileRangeIn>() {
        Ok(args) => {
            let ctx = Context::from(&header);
            fs.copy_file_range(
                &ctx,
                header.nodeid,
                args.fh_in,
                args.offset_in,
                args.nodeid_out,
                args.fh_out,
                args.offset_out,
                args.len,
                args.flags,
            )
        }
        Err(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    reply(w, header.unique, result).map(Some)
}

fn reply<S: BitmapSlice>(
    w: &mut Writer<'_, S>,
    unique: u64,
    result: io::Result<usize>,
) -> Result<usize, Error> {
    let (error, body) = match result {
        Ok(n) => (
            0,
            Some(WriteOut {
                size: u32::try_from(n).unwrap_or(u32::MAX),
                padding: 0,
            }),
        ),
        Err(e) => (-e.raw_os_error().unwrap_or(libc::EIO), None),
    };
    let body_len = body.map_or(0, |_| std::mem::size_of::<WriteOut>());
    let out = OutHeader {
        len: (std::mem::size_of::<OutHeader>() + body_len) as u32,
        error,
        unique,
    };
    w.write_all(out.as_slice()).map_err(Error::EncodeMessage)?;
    if let Some(b) = body {
        w.write_all(b.as_slice()).map_err(Error::EncodeMessage)?;
    }
    w.commit(None).map_err(Error::EncodeMessage)?;
    Ok(out.len as usize)
}

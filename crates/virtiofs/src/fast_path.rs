//! FUSE opcodes the device serves or checks itself, ahead of fuse-backend-rs's
//! `Server`.
//!
//! Names are validated here, at the edge: fuse-backend-rs stops a name at its
//! first NUL, so `"a\0b"` would silently become `"a"`. Every opcode that
//! carries names must carry exactly that many NUL-terminated strings after
//! its fixed part, each non-empty, or it gets `EINVAL`.
//!
//! Request extensions (`total_extlen`, [`crate::extensions`]) are parsed
//! here too: fuse-backend-rs reads neither them nor INIT's `flags2`, which
//! negotiates them; [`Route`] tells the device what to add.
//!
//! fuse-backend-rs 0.14 does not dispatch `FUSE_COPY_FILE_RANGE`; without it
//! the guest falls back to reading and writing every byte through the queue.
//! Serving it here lets the host copy (and reflink, where the filesystem can)
//! without the data ever crossing guest memory.

use std::io::{self, Read, Write};

use fuse_backend_rs::abi::fuse_abi::{
    CopyFileRangeIn, InHeader, InitIn, InitIn2, Opcode, OutHeader, WriteOut,
};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::transport::{Reader, Writer};
use fuse_backend_rs::Error;
use passthrough::request_ext::init_flags;
use passthrough::{CreateExt, PassthroughFs};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

/// Where a request goes after [`try_handle`].
#[derive(Debug)]
pub enum Route {
    /// Answered here, with a reply of this many bytes.
    Answered(usize),
    /// To fuse-backend-rs's server, as it is.
    Server,
    /// A create whose extensions ask for something: to the server, inside
    /// [`passthrough::with_create_ext`].
    Create(CreateExt),
    /// A FUSE_INIT: to the server, then its reply gets the `flags2` flags
    /// the core negotiates ([`PassthroughFs::negotiate_flags2`]) of these,
    /// the ones the guest offered (shifted up by 32; 0 without
    /// FUSE_INIT_EXT).
    Init {
        /// What the guest offered in `flags2`, shifted up by 32.
        offered: u64,
    },
}

fn einval() -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// If the request in `r` is one this module serves (or refuses), answers
/// it in `w` ([`Route::Answered`]); otherwise says where it goes, leaving
/// `w` untouched.
pub fn try_handle<S: BitmapSlice>(
    fs: &PassthroughFs,
    mut r: Reader<'_, S>,
    w: &mut Writer<'_, S>,
) -> Result<Route, Error> {
    let header: InHeader = match r.read_obj() {
        Ok(h) => h,
        // Let the regular server produce its own error for short requests.
        Err(_) => return Ok(Route::Server),
    };
    // `fuse_in_header.total_extlen`: the low half of what fuse-backend-rs
    // calls padding, in units of 8 bytes.
    let ext_len = usize::from(header.padding as u16) * 8;
    if let Some((fixed, names)) = name_layout(header.opcode) {
        let body_len = (header.len as usize).saturating_sub(std::mem::size_of::<InHeader>());
        if body_len > MAX_NAME_BODY + ext_len.min(crate::extensions::MAX_EXT_LEN) {
            if ext_len == 0 {
                // Longer than any valid name request: leave the refusal
                // to the server.
                return Ok(Route::Server);
            }
            return reply(w, header.unique, einval()).map(Route::Answered);
        }
        let mut body = vec![0u8; body_len];
        let split = body_len.checked_sub(ext_len);
        let well_formed = r.read_exact(&mut body).is_ok()
            && split.is_some_and(|at| names_well_formed(&body[..at], fixed, names));
        let route = match split {
            Some(at) if well_formed && ext_len > 0 => creates(header.opcode)
                .then(|| crate::extensions::parse(&body[at..], fs.negotiated_flags2()).ok())
                .flatten()
                .map(Route::Create),
            _ if well_formed => Some(Route::Server),
            _ => None,
        };
        return match route {
            Some(route) => Ok(route),
            None => reply(w, header.unique, einval()).map(Route::Answered),
        };
    }
    if header.opcode == Opcode::Init as u32 {
        return Ok(Route::Init {
            offered: init_offered(&mut r),
        });
    }
    if ext_len > 0 && header.opcode < Opcode::MaxOpcode as u32 && answered(header.opcode) {
        // Only creates carry extensions; an opcode the server does not
        // know gets its ENOSYS whatever it carries, and FORGET and
        // BATCH_FORGET no reply at all. (READ, WRITE and FSYNC served by
        // the io_uring engine, and a SETLKW that waits, never get here:
        // their fixed arguments are all they read.)
        return reply(w, header.unique, einval()).map(Route::Answered);
    }
    if header.opcode != Opcode::CopyFileRange as u32 {
        return Ok(Route::Server);
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
        Err(_) => einval(),
    };
    reply(w, header.unique, result).map(Route::Answered)
}

/// The `flags2` a FUSE_INIT in `r` (past its header) offers, shifted up
/// by 32: 0 where it has no FUSE_INIT_EXT, or is too short (the server
/// answers that).
fn init_offered<S: BitmapSlice>(r: &mut Reader<'_, S>) -> u64 {
    let Ok(init) = r.read_obj::<InitIn>() else {
        return 0;
    };
    if u64::from(init.flags) & init_flags::INIT_EXT == 0 {
        return 0;
    }
    r.read_obj::<InitIn2>()
        .map_or(0, |i| u64::from(i.flags2) << 32)
}

/// Whether `opcode` is answered (FORGET and BATCH_FORGET are not).
fn answered(opcode: u32) -> bool {
    opcode != Opcode::Forget as u32 && opcode != Opcode::BatchForget as u32
}

/// The opcodes that may carry extensions: those that make a node.
fn creates(opcode: u32) -> bool {
    [
        Opcode::Mknod,
        Opcode::Mkdir,
        Opcode::Symlink,
        Opcode::Create,
    ]
    .iter()
    .any(|o| *o as u32 == opcode)
}

/// The largest body a name-carrying request can have (fixed part + two
/// `PATH_MAX` strings), to bound the copy made for validation.
const MAX_NAME_BODY: usize = 64 + 2 * 4096;

/// (size of the fixed part, number of names) for opcodes that carry names.
fn name_layout(opcode: u32) -> Option<(usize, usize)> {
    Some(match opcode {
        x if x == Opcode::Lookup as u32 => (0, 1),
        x if x == Opcode::Unlink as u32 => (0, 1),
        x if x == Opcode::Rmdir as u32 => (0, 1),
        x if x == Opcode::Symlink as u32 => (0, 2),
        x if x == Opcode::Mkdir as u32 => (8, 1),
        x if x == Opcode::Link as u32 => (8, 1),
        x if x == Opcode::Rename as u32 => (8, 2),
        x if x == Opcode::Mknod as u32 => (16, 1),
        x if x == Opcode::Create as u32 => (16, 1),
        x if x == Opcode::Rename2 as u32 => (16, 2),
        _ => return None,
    })
}

/// Whether `body` is `fixed` bytes followed by exactly `names` non-empty,
/// NUL-terminated strings and nothing else.
pub fn names_well_formed(body: &[u8], fixed: usize, names: usize) -> bool {
    let Some(rest) = body.get(fixed..) else {
        return false;
    };
    if rest.last() != Some(&0) {
        return false;
    }
    let parts: Vec<&[u8]> = rest[..rest.len() - 1].split(|&b| b == 0).collect();
    parts.len() == names && parts.iter().all(|p| !p.is_empty())
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

#[cfg(test)]
mod tests {
    use super::names_well_formed;

    #[test]
    fn name_bodies_must_be_exactly_the_expected_strings() {
        assert!(names_well_formed(b"abc\0", 0, 1));
        assert!(names_well_formed(b"12345678old\0new\0", 8, 2));
        assert!(!names_well_formed(b"a\0b\0", 0, 1), "embedded NUL");
        assert!(!names_well_formed(b"\0", 0, 1), "empty name");
        assert!(!names_well_formed(b"abc", 0, 1), "no terminator");
        assert!(!names_well_formed(b"1234", 8, 1), "short fixed part");
        assert!(!names_well_formed(b"old\0\0", 0, 2), "empty second name");
    }
}

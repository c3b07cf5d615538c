//! Messages and framing shared by the 9P test binaries (`binary.rs`,
//! `record.rs`).

use p9::messages::{Tmessage, NOFID};

/// `Tattach` of `fid` to the default tree as root (by name, `n_uname` 0),
/// without authentication.
pub fn attach_root(fid: u32) -> Tmessage<'static> {
    Tmessage::Attach {
        fid,
        afid: NOFID,
        uname: b"root",
        aname: b"",
        n_uname: 0,
    }
}

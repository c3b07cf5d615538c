//! A 9P session fed arbitrary frames (after a valid version and attach) over
//! a scratch share: the server must answer or refuse, never panic, and never
//! touch anything outside the share; the fd count stays bounded.
//!
//! Input: 9P frames back to back, each delimited by its own size field
//! (what `p9d --record-requests` writes).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use p9::messages::{decode_tframe, Tmessage, NOFID};
use p9::server::{Server, Session};
use passthrough::{Config, PassthroughFs};
use virtiofsd_rs_fuzz::{check_fds, Scratch};

fn server() -> &'static Arc<Server> {
    static S: OnceLock<Arc<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let fs = Arc::new(PassthroughFs::new(Config::new(Scratch::get().share())).unwrap());
        Server::new(fs)
    })
}

fuzz_target!(|data: &[u8]| {
    let session = Session::new(server().clone());
    session.version(65536, b"9P2000.L");
    session.handle(Tmessage::Attach {
        fid: 0,
        afid: NOFID,
        uname: b"root",
        aname: b"",
        n_uname: 0,
    });
    let mut rest = data;
    while rest.len() >= 4 {
        let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let frame = &rest[..size.clamp(4, rest.len())];
        rest = &rest[frame.len()..];
        if let Ok((_, m)) = decode_tframe(frame) {
            if !matches!(m, Tmessage::Version { .. } | Tmessage::Flush { .. }) {
                let _ = session.handle(m);
            }
        }
    }
    drop(session);
    Scratch::get().check_outside();
    check_fds();
});

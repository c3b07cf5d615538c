//! Arbitrary byte streams through the 9P stream transport (the reader, its
//! worker pool, Tflush and back-pressure), written in pieces split at
//! arbitrary points, over a scratch share.
//!
//! Input: a header byte (bit 0: inline or worker mode; bit 1: adaptive
//! polling or none; the rest seeds the split points), then the stream.
//! Recorded 9P traffic (`p9d --record-requests`) behind a zero byte is a
//! valid input.
//!
//! Oracles: nothing panics or hangs; the connection ends once the client
//! has hung up; every reply is a well-formed R-message; no tag is answered
//! more often than it was sent; nothing outside the share changes; the fd
//! count stays bounded.
#![no_main]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p9::messages::decode_rframe;
use p9::messages::HEADER_SIZE;
use p9::server::Server;
use p9::transport::{serve_connection_with, StreamConfig, StreamMode, DEFAULT_POLL};
use passthrough::{Config, PassthroughFs};
use virtiofsd_rs_fuzz::{check_fds, ignore_sigpipe, Input, Scratch};

fn server() -> &'static Arc<Server> {
    static S: OnceLock<Arc<Server>> = OnceLock::new();
    S.get_or_init(|| {
        ignore_sigpipe();
        let fs = Arc::new(PassthroughFs::new(Config::new(Scratch::get().share())).unwrap());
        Server::new(fs)
    })
}

/// Frames back to back, as the server will cut them: the count per tag.
/// Stops where the server stops reading (a size below a header) or at a
/// frame the stream does not finish (whose header alone may be answered:
/// a frame larger than msize gets its error as soon as its header is in).
fn tags_sent(mut stream: &[u8]) -> HashMap<u16, usize> {
    let mut tags = HashMap::new();
    while stream.len() >= HEADER_SIZE {
        let size = u32::from_le_bytes(stream[..4].try_into().unwrap()) as usize;
        if size < HEADER_SIZE {
            break;
        }
        *tags
            .entry(u16::from_le_bytes([stream[5], stream[6]]))
            .or_default() += 1;
        if size > stream.len() {
            break;
        }
        stream = &stream[size..];
    }
    tags
}

fuzz_target!(|data: &[u8]| {
    let server = server().clone();
    let mut input = Input::new(data);
    let hdr = input.u8();
    let stream = input.rest();
    let cfg = StreamConfig {
        mode: if hdr & 1 == 0 {
            StreamMode::Inline
        } else {
            StreamMode::Workers
        },
        poll: if hdr & 2 == 0 {
            Duration::ZERO
        } else {
            DEFAULT_POLL
        },
        ..StreamConfig::default()
    };
    let (mut client, conn) = UnixStream::pair().expect("socketpair");
    let reader = conn.try_clone().expect("dup");
    let serving = std::thread::spawn(move || serve_connection_with(server, reader, conn, cfg));
    // Replies are read while the stream is written: a server blocked on a
    // full socket must not block the writer (back-pressure both ways).
    let mut replies = client.try_clone().expect("dup");
    let collecting = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = replies.read_to_end(&mut all);
        all
    });
    let mut split = u32::from(hdr >> 2) | 1;
    let mut rest = stream;
    while !rest.is_empty() {
        // An xorshift step per piece: pieces of 1 to 64 bytes.
        split ^= split << 13;
        split ^= split >> 17;
        split ^= split << 5;
        let n = (split as usize % 64 + 1).min(rest.len());
        if client.write_all(&rest[..n]).is_err() {
            break; // The server ended the connection.
        }
        rest = &rest[n..];
    }
    let _ = client.shutdown(Shutdown::Write);
    let _ = serving
        .join()
        .expect("the connection's thread never panics");
    drop(client);
    let all = collecting.join().expect("reader");
    let sent = tags_sent(stream);
    let mut answered: HashMap<u16, usize> = HashMap::new();
    let mut rest = &all[..];
    while !rest.is_empty() {
        let size = u32::from_le_bytes(
            rest[..4.min(rest.len())]
                .try_into()
                .expect("whole size field"),
        ) as usize;
        assert!(size >= HEADER_SIZE && size <= rest.len(), "a torn reply");
        let (tag, _) = decode_rframe(&rest[..size]).expect("replies are well-formed");
        let n = answered.entry(tag).or_default();
        *n += 1;
        assert!(
            *n <= sent.get(&tag).copied().unwrap_or(0),
            "tag {tag} answered more often than sent"
        );
        rest = &rest[size..];
    }
    Scratch::get().check_outside();
    check_fds();
});

//! 9P frame decoding: any bytes decode or fail cleanly, and what decodes
//! re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p9::messages::{decode_rframe, decode_tframe};

fuzz_target!(|data: &[u8]| {
    if let Ok((tag, m)) = decode_tframe(data) {
        let again = m.encode(tag);
        // Tfsync's datasync field is optional on the wire; everything else
        // must re-encode byte for byte.
        if !matches!(m, p9::messages::Tmessage::Fsync { .. }) {
            assert_eq!(again, data);
        }
    }
    if let Ok((tag, m)) = decode_rframe(data) {
        assert_eq!(m.encode(tag), data);
    }
});

//! The virtio-fs edge checks of a FUSE request's names and extensions:
//! any body, any layout; any extension area, under any negotiated flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passthrough::request_ext::init_flags;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let fixed = (data[0] % 24) as usize;
    let names = (data[1] % 3) as usize;
    let body = &data[2..];
    if virtiofs::names_well_formed(body, fixed, names) {
        let rest = &body[fixed..];
        assert_eq!(rest.iter().filter(|&&b| b == 0).count(), names);
        assert_eq!(rest.last(), Some(&0));
    }
    // The same bytes as a create's extension area.
    let negotiated = match data[0] % 4 {
        0 => 0,
        1 => init_flags::SECURITY_CTX,
        2 => init_flags::CREATE_SUPP_GROUP,
        _ => init_flags::SECURITY_CTX | init_flags::CREATE_SUPP_GROUP,
    };
    if let Ok(ext) = virtiofs::extensions::parse(body, negotiated) {
        if let Some(sec) = &ext.security {
            assert_ne!(negotiated & init_flags::SECURITY_CTX, 0);
            assert!(passthrough::request_ext::is_label_name(&sec.name));
            assert!(sec.value.len() <= 65536);
        }
        if !ext.groups.is_empty() {
            assert_ne!(negotiated & init_flags::CREATE_SUPP_GROUP, 0);
            assert!(ext.groups.len() <= virtiofs::extensions::MAX_GROUPS);
        }
    }
});

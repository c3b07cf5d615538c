//! The virtio-fs edge check of FUSE name layouts: any body, any layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

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
});

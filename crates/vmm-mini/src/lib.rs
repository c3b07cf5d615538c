//! The minimal KVM VMM and the driver-side virtqueue harness. They are the
//! subject of issue 4 and are not written yet; the crate exists so the
//! workspace layout is in place.

#![deny(missing_docs)]

//! The Intel MultiProcessor Specification (1.4) table: how a guest without
//! ACPI tables learns its CPUs, its IOAPIC and how ISA interrupts reach it.
//!
//! Layout at [`MPTABLE_ADDR`](crate::layout::MPTABLE_ADDR): the 16-byte
//! floating pointer, then the configuration table (header, one processor entry
//! per vCPU, the ISA bus, the IOAPIC, ISA interrupts 0-15 routed to IOAPIC pins
//! 0-15, and the local interrupts: ExtINT on LINT0, NMI on LINT1).

use crate::layout::{BASE_MEM_END, IOAPIC_ADDR, LAPIC_ADDR};

/// Why no table could be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    /// Too many vCPUs for the KiB the table may use.
    #[error("{0} vCPUs do not fit in an MP table below 640 KiB (at most {MAX_CPUS})")]
    TooManyCpus(u8),
}

/// The most vCPUs vmm-mini announces.
pub const MAX_CPUS: u8 = 32;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;

/// Builds the table for `cpus` vCPUs (APIC ids 0..cpus) to be placed at
/// guest physical address `at`.
pub fn build(cpus: u8, at: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        // Signature (family 6) and features (FPU, APIC), then 8 reserved.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // Flags 0: polarity and trigger conform to the bus (ISA: edge, high).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_at = at + 16;
    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMM-MINI");
    table.extend_from_slice(b"000000000001");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length/checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_at as u32).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if at + out.len() as u64 > BASE_MEM_END {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    Ok(out)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MPTABLE_ADDR;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let t = build(cpus, MPTABLE_ADDR).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u64::from(u32::from_le_bytes(t[4..8].try_into().unwrap()));
            assert_eq!(ptr, MPTABLE_ADDR + 16);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 16 + 2);
            // Exactly one bootstrap processor, APIC id 0.
            let procs: Vec<&[u8]> = (0..cpus as usize)
                .map(|i| &table[44 + 20 * i..44 + 20 * (i + 1)])
                .collect();
            assert!(procs.iter().all(|p| p[0] == ENTRY_PROCESSOR));
            assert_eq!(procs.iter().filter(|p| p[3] & CPU_BSP != 0).count(), 1);
            assert_eq!(procs[0][3] & CPU_BSP, CPU_BSP);
        }
    }

    #[test]
    fn refuses_zero_and_too_many() {
        assert_eq!(build(0, MPTABLE_ADDR), Err(MpTableError::TooManyCpus(0)));
        assert_eq!(
            build(MAX_CPUS + 1, MPTABLE_ADDR),
            Err(MpTableError::TooManyCpus(MAX_CPUS + 1))
        );
    }
}

//! vCPU set-up: CPUID, the boot processor's registers for each entry
//! protocol, the GDT and page tables it needs, and the local APIC's LINT
//! pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::Entry;
use crate::layout::{BOOT_STACK, GDT_ADDR, IDT_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

/// A KVM vCPU ioctl failed while setting the vCPU up.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {cpu}: {what}: {source}")]
pub struct CpuError {
    /// Which vCPU.
    pub cpu: u8,
    /// What was being set.
    pub what: &'static str,
    /// The ioctl's error.
    pub source: kvm_ioctls::Error,
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// GDT flags (access byte in bits 0-7, granularity/size/long in 12-15).
const GDT_CODE64: u16 = 0xa09b;
const GDT_CODE32: u16 = 0xc09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;

/// One GDT descriptor from flags, base and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` a descriptor loads as selector `index * 8`.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// Sets vCPU `id`'s CPUID from what KVM supports: its APIC id in leaves 1
/// and 0xb, and the hypervisor bit.
pub fn set_cpuid(vcpu: &VcpuFd, id: u8, cpus: u8, supported: &CpuId) -> Result<(), CpuError> {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(cpus) << 16);
                e.ecx |= 1 << 31;
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|source| CpuError {
        cpu: id,
        what: "KVM_SET_CPUID2",
        source,
    })
}

/// Routes the local APIC's LINT0 to ExtINT and LINT1 to NMI (the "virtual
/// wire" the MP table announces).
pub fn set_lint(vcpu: &VcpuFd, id: u8) -> Result<(), CpuError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_EXTINT: u32 = 7;
    const MODE_NMI: u32 = 4;
    let err = |what| {
        move |source| CpuError {
            cpu: id,
            what,
            source,
        }
    };
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))
}

/// Writes the GDT (null, code, data, TSS) and, for the 64-bit entry, the
/// identity page tables for the first 4 GiB (2 MiB pages).
pub fn write_tables(
    mem: &GuestMemoryMmap,
    entry: Entry,
) -> Result<(), vm_memory::GuestMemoryError> {
    let code = match entry {
        Entry::Pvh { .. } => GDT_CODE32,
        Entry::Linux64 { .. } => GDT_CODE64,
    };
    let gdt = [
        0u64,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    if let Entry::Linux64 { .. } = entry {
        let pdpt = PML4_ADDR + 0x1000;
        let pd = PML4_ADDR + 0x2000;
        mem.write_obj(pdpt | 0x3, GuestAddress(PML4_ADDR))?;
        for g in 0..4u64 {
            mem.write_obj((pd + g * 0x1000) | 0x3, GuestAddress(pdpt + 8 * g))?;
            for i in 0..512u64 {
                let frame = (g << 30) | (i << 21);
                // Present, writable, 2 MiB page.
                mem.write_obj(frame | 0x83, GuestAddress(pd + g * 0x1000 + 8 * i))?;
            }
        }
    }
    Ok(())
}

/// Sets the boot processor's registers for `entry`.
pub fn set_boot_registers(vcpu: &VcpuFd, entry: Entry) -> Result<(), CpuError> {
    let err = |what| {
        move |source| CpuError {
            cpu: 0,
            what,
            source,
        }
    };
    let code = match entry {
        Entry::Pvh { .. } => GDT_CODE32,
        Entry::Linux64 { .. } => GDT_CODE64,
    };
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(1, gdt_entry(code, 0, 0xfffff));
    let data = segment(2, gdt_entry(GDT_DATA, 0, 0xfffff));
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, gdt_entry(GDT_TSS, 0, 0xfffff));
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh { entry } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry.0;
            regs.rbx = PVH_INFO_ADDR;
        }
        Entry::Linux64 { entry } => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry.0;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = ZERO_PAGE_ADDR;
        }
    }
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .map_err(|_| CpuError {
        cpu: 0,
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_decode() {
        let cs = segment(1, gdt_entry(GDT_CODE64, 0, 0xfffff));
        assert_eq!((cs.selector, cs.base, cs.limit), (8, 0, 0xffff_ffff));
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.type_, cs.s),
            (1, 0, 1, 1, 0xb, 1)
        );
        let cs32 = segment(1, gdt_entry(GDT_CODE32, 0, 0xfffff));
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(2, gdt_entry(GDT_DATA, 0, 0xfffff));
        assert_eq!((ds.selector, ds.type_, ds.db, ds.unusable), (16, 3, 1, 0));
        let tr = segment(3, gdt_entry(GDT_TSS, 0, 0xfffff));
        assert_eq!((tr.type_, tr.s, tr.g), (0xb, 0, 1));
    }

    #[test]
    fn identity_tables_map_the_first_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(
            &mem,
            Entry::Linux64 {
                entry: GuestAddress(0x100200),
            },
        )
        .unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PML4_ADDR + 0x1000);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PML4_ADDR + 0x1000 + 24)).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 8 * 511))
            .unwrap();
        assert_eq!(last, ((3u64 << 30) | (511 << 21)) | 0x83);
    }
}

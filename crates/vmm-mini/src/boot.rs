//! Loading the guest: kernel (PVH `vmlinux` or `bzImage`), initrd, command
//! line, memory map and the boot structures each entry protocol wants.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::layout::*;
use crate::mptable::{self, MpTableError};

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file could not be opened or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The kernel is neither a PVH-capable ELF nor a bzImage.
    #[error("{path}: not a loadable kernel (ELF: {elf}; bzImage: {bzimage})")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Why the ELF loader refused it.
        elf: linux_loader::loader::Error,
        /// Why the bzImage loader refused it.
        bzimage: linux_loader::loader::Error,
    },
    /// An ELF kernel without the PVH entry note.
    #[error("{0}: ELF kernel without a PVH entry point (build it with CONFIG_PVH=y, or boot the bzImage)")]
    NoPvhEntry(PathBuf),
    /// The initrd does not fit between the kernel and the top of memory.
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel; give the guest more memory (--mem)")]
    InitrdTooBig {
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has bad characters.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the boot structures failed.
    #[error("writing the boot structures: {0}")]
    Configure(String),
    /// No MP table.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh {
        /// The PVH entry point.
        entry: GuestAddress,
    },
    /// Linux 64-bit boot protocol: long mode, identity-mapped, `%rsi` =
    /// zero page.
    Linux64 {
        /// The 64-bit entry point (`code32_start + 0x200`).
        entry: GuestAddress,
    },
}

/// Builds the kernel command line (capacity: x86's limit).
pub fn cmdline(parts: &[String]) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    for p in parts.iter().filter(|p| !p.trim().is_empty()) {
        c.insert_str(p.trim()).map_err(BootError::Cmdline)?;
    }
    Ok(c)
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::File {
        path: path.to_owned(),
        source,
    })
}

/// The e820 map: base memory, the MP table's KiB (reserved), RAM above 1 MiB.
fn memory_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    vec![
        (0, MPTABLE_ADDR, RAM),
        (MPTABLE_ADDR, BASE_MEM_END - MPTABLE_ADDR, RESERVED),
        (HIGH_RAM_START, ram_size - HIGH_RAM_START, RAM),
    ]
}

/// `boot_params` as bytes (linux-loader does not implement `ByteValued` for
/// it).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data C struct (integers and arrays of
// them); any byte pattern is a valid value.
unsafe impl ByteValued for ZeroPage {}

/// Loads `kernel` (and `initrd`) into `mem`, writes the command line, the
/// memory map, the MP table for `cpus` vCPUs and the entry protocol's boot
/// structures. ELF kernels boot through PVH, bzImages through the 64-bit
/// Linux boot protocol.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
    cpus: u8,
) -> Result<Entry, BootError> {
    let ram_size = mem.last_addr().0 + 1;
    let mut image = open(kernel)?;
    let high = Some(GuestAddress(HIGH_RAM_START));
    let (loaded, pvh) = match Elf::load(mem, None, &mut image, high) {
        Ok(r) => {
            let PvhBootCapability::PvhEntryPresent(entry) = r.pvh_boot_cap else {
                return Err(BootError::NoPvhEntry(kernel.to_owned()));
            };
            (r, Some(entry))
        }
        Err(elf) => match BzImage::load(mem, None, &mut image, high) {
            Ok(r) => (r, None),
            Err(bzimage) => {
                return Err(BootError::NotAKernel {
                    path: kernel.to_owned(),
                    elf,
                    bzimage,
                })
            }
        },
    };
    // `kernel_end` is an address (the image's last loaded byte + 1).
    let kernel_end = loaded.kernel_end;

    let initrd = match initrd {
        Some(p) => Some(load_initrd(mem, p, kernel_end, ram_size)?),
        None => None,
    };

    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| BootError::Configure(format!("command line: {e}")))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes_with_nul()
        .len();

    let table = mptable::build(cpus, MPTABLE_ADDR)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| BootError::Configure(format!("MP table: {e}")))?;

    let map = memory_map(ram_size);
    match pvh {
        Some(entry) => {
            write_pvh_info(mem, &map, initrd)?;
            Ok(Entry::Pvh { entry })
        }
        None => {
            let hdr = loaded
                .setup_header
                .ok_or_else(|| BootError::Configure("bzImage without a setup header".into()))?;
            let mut zp = ZeroPage::default();
            zp.0.hdr = hdr;
            zp.0.hdr.type_of_loader = 0xff;
            zp.0.hdr.boot_flag = 0xaa55;
            zp.0.hdr.header = 0x5372_6448; // "HdrS"
            zp.0.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            zp.0.hdr.cmdline_size = cmdline_len as u32;
            zp.0.hdr.kernel_alignment = 0x100_0000;
            if let Some((addr, size)) = initrd {
                zp.0.hdr.ramdisk_image = addr as u32;
                zp.0.hdr.ramdisk_size = size as u32;
            }
            for (i, (addr, size, type_)) in map.iter().enumerate() {
                zp.0.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    type_: *type_,
                };
            }
            zp.0.e820_entries = map.len() as u8;
            mem.write_obj(zp, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(|e| BootError::Configure(format!("zero page: {e}")))?;
            Ok(Entry::Linux64 {
                entry: GuestAddress(loaded.kernel_load.0 + 0x200),
            })
        }
    }
}

/// Places the initrd at the top of memory below [`INITRD_MAX_END`], page
/// aligned, above `kernel_end`; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    ram_size: u64,
) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::File {
        path: path.to_owned(),
        source,
    })?;
    let size = data.len() as u64;
    let top = ram_size.min(INITRD_MAX_END);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooBig { size })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::Configure(format!("initrd: {e}")))?;
    Ok((addr, size))
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        })
        .collect();
    let mut params = if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
        let mut p = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
        p.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_ADDR),
        );
        p
    } else {
        BootParams::new(&info, GuestAddress(PVH_INFO_ADDR))
    };
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::Configure(format!("PVH start info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_covers_ram_and_reserves_the_mp_table() {
        let m = memory_map(512 << 20);
        assert_eq!(m[0], (0, MPTABLE_ADDR, 1));
        assert_eq!(m[1].0, MPTABLE_ADDR);
        assert_eq!(m[1].2, 2);
        assert_eq!(m[2], (HIGH_RAM_START, (512 << 20) - HIGH_RAM_START, 1));
    }

    #[test]
    fn cmdline_joins_parts_and_refuses_overlong() {
        let c = cmdline(&["console=ttyS0".into(), " ".into(), "quiet".into()]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet"
        );
        let long = "x".repeat(CMDLINE_MAX + 1);
        assert!(matches!(cmdline(&[long]), Err(BootError::Cmdline(_))));
    }

    #[test]
    fn non_kernel_files_are_refused_with_both_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("not-a-kernel");
        std::fs::write(&f, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let c = cmdline(&[]).unwrap();
        let e = load(&mem, &f, None, &c, 1).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
        let e = load(&mem, &dir.path().join("missing"), None, &c, 1).unwrap_err();
        assert!(matches!(e, BootError::File { .. }), "{e}");
    }
}

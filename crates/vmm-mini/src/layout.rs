//! Where vmm-mini puts things in the guest's physical address space.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), then an empty IDT at 0x520
//! 0x0000_6000  PVH hvm_start_info, its module list and memory map
//! 0x0000_7000  Linux zero page (boot_params), for bzImage boots
//! 0x0000_8ff0  initial stack
//! 0x0000_9000  identity page tables for the 64-bit bzImage entry (first 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, where Linux looks for it)
//! 0x0010_0000  RAM above 1 MiB: kernel, initrd (at the top), free memory
//! 0xd000_0000  virtio-mmio devices, 4 KiB each
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC (in-kernel irqchip)
//! ```

/// The GDT.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// The Linux zero page.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The boot stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The top-level page table (PML4); the PDPT and four page directories follow.
pub const PML4_ADDR: u64 = 0x9000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line (x86's `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX: usize = 2048;
/// The MP table, in the last KiB of base memory.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// End of base memory (the legacy hole follows).
pub const BASE_MEM_END: u64 = 0xa0000;
/// Start of RAM above the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// First virtio-mmio device window.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Guest RAM may not reach the device windows.
pub const MAX_RAM: u64 = 3 << 30;
/// The IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Highest address an initrd may end at (Linux's default `initrd_addr_max`).
pub const INITRD_MAX_END: u64 = 0x8000_0000;

/// The serial port (COM1) base and its interrupt.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's interrupt.
pub const SERIAL_IRQ: u32 = 4;
/// The guest writes its exit status (one byte) here; the VM ends.
pub const EXIT_PORT: u16 = 0x501;
/// The guest's init writes here when it starts (the boot timer's mark).
pub const BOOT_MARK_PORT: u16 = 0x502;
/// i8042 command port: 0xfe written here resets the machine.
pub const I8042_CMD_PORT: u16 = 0x64;

/// Interrupt lines for virtio-mmio devices, in order (ISA lines the MP table
/// routes to the IOAPIC; 4 is the UART's, 8 the RTC's).
pub const DEVICE_IRQS: [u32; 10] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15];

#!/usr/bin/env python3
"""Print the host's TSC frequency in kHz (x86-64 only), measured: RDTSC against
CLOCK_MONOTONIC over 3 x 20 ms, the median.

run-guest.sh passes it to a TCG guest under -M microvm as tsc_early_khz=.
Under TCG a guest's RDTSC reads the host's TSC, so this is the guest's TSC
frequency too. The guest cannot measure it reliably itself: microvm has no
HPET and no ACPI PM timer, and its PIT calibration fails now and then under
TCG (often with a PVH-booted vmlinux). Linux then knows no TSC frequency, and
on microvm's hardware-reduced ACPI (no PIT interrupt either) it waits forever
in the local APIC timer calibration.

Exit status 1 (and nothing on stdout) if it cannot measure.
"""
import ctypes
import mmap
import platform
import sys
import time


def main():
    if platform.machine() not in ("x86_64", "AMD64"):
        return 1
    # rdtsc; shl $32, %rdx; or %rdx, %rax; ret
    code = bytes([0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError):
        return 1
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)
    samples = []
    for _ in range(3):
        t0 = time.perf_counter_ns()
        c0 = rdtsc()
        time.sleep(0.02)
        t1 = time.perf_counter_ns()
        c1 = rdtsc()
        if t1 <= t0 or c1 <= c0:
            return 1
        samples.append((c1 - c0) * 1_000_000 // (t1 - t0))
    khz = sorted(samples)[1]
    if not 100_000 <= khz <= 10_000_000:
        return 1
    print(khz)
    return 0


if __name__ == "__main__":
    sys.exit(main())

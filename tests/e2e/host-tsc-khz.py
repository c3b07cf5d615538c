#!/usr/bin/env python3
"""Print the host's TSC frequency in kHz (x86-64 only), measured: RDTSC against
CLOCK_MONOTONIC over 7 x 20 ms, the median (each reading of the TSC
bracketed by two clock readings, retried if they are far apart).

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
    def stamp():
        # A (clock, TSC) pair read close together: retried while a
        # preemption separates the two reads by more than 50 us.
        for _ in range(100):
            a = time.perf_counter_ns()
            c = rdtsc()
            b = time.perf_counter_ns()
            if b - a <= 50_000:
                return (a + b) // 2, c
        return None

    samples = []
    for _ in range(7):
        s0 = stamp()
        time.sleep(0.02)
        s1 = stamp()
        if s0 is None or s1 is None:
            return 1
        (t0, c0), (t1, c1) = s0, s1
        if t1 <= t0 or c1 <= c0:
            return 1
        samples.append((c1 - c0) * 1_000_000 // (t1 - t0))
    khz = sorted(samples)[len(samples) // 2]
    if not 100_000 <= khz <= 10_000_000:
        return 1
    print(khz)
    return 0


if __name__ == "__main__":
    sys.exit(main())

//! Is `/dev/kvm` hardware-backed?
//!
//! Some hosts expose a `/dev/kvm` that is a software hypervisor (PVM on this
//! project's build machines runs plain guest code at about a million
//! instructions per second and cannot boot Linux). Boot tests must know. The
//! probe runs a counted loop in a real-mode guest and times it: hardware
//! virtualization finishes in well under a millisecond.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Iterations of the probe loop (about two guest instructions each).
pub const PROBE_ITERATIONS: u32 = 500_000;
/// Slower than this and KVM is not hardware-backed for our purposes.
pub const HARDWARE_THRESHOLD: Duration = Duration::from_millis(50);

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// The loop ran at hardware speed.
    Hardware(Duration),
    /// KVM works but the loop ran too slowly to boot Linux in a test.
    Software(Duration),
    /// KVM could not run the probe at all.
    Unavailable(String),
}

impl KvmSupport {
    /// Whether boot tests can run.
    pub fn is_hardware(&self) -> bool {
        matches!(self, KvmSupport::Hardware(_))
    }

    /// A one-line explanation, for skip messages.
    pub fn describe(&self) -> String {
        match self {
            KvmSupport::Hardware(d) => format!("hardware-backed KVM ({PROBE_ITERATIONS}-iteration loop in {d:?})"),
            KvmSupport::Software(d) => format!(
                "/dev/kvm is not hardware-backed: a {PROBE_ITERATIONS}-iteration loop took {d:?} at best of {PROBE_RUNS} (threshold {HARDWARE_THRESHOLD:?})"
            ),
            KvmSupport::Unavailable(why) => format!("KVM unavailable: {why}"),
        }
    }
}

/// `mov ecx, N; l: dec ecx; jnz l; hlt` in 16-bit real mode.
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xf4]);
    code
}

/// Probe runs at most: the fastest counts, so one run slowed by a busy
/// host (a preempted vCPU thread) does not make hardware look like software.
pub const PROBE_RUNS: usize = 3;

/// Runs the probe (up to [`PROBE_RUNS`] times, stopping at the first run
/// at hardware speed).
pub fn probe() -> KvmSupport {
    let mut fastest: Option<Duration> = None;
    for _ in 0..PROBE_RUNS {
        match run_probe(PROBE_ITERATIONS) {
            Ok(d) if d < HARDWARE_THRESHOLD => return KvmSupport::Hardware(d),
            Ok(d) => fastest = Some(fastest.map_or(d, |f| f.min(d))),
            Err(e) => return KvmSupport::Unavailable(e),
        }
    }
    match fastest {
        Some(d) => KvmSupport::Software(d),
        None => KvmSupport::Unavailable("the probe did not run".into()),
    }
}

fn run_probe(iterations: u32) -> Result<Duration, String> {
    const MEM: usize = 0x10000;
    const CODE: u64 = 0x1000;
    // The mapping is made first so that it is dropped last, after the VM
    // that refers to it.
    // SAFETY: anonymous private mapping of MEM bytes; checked below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if host == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    struct Unmap(*mut libc::c_void);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the mapping created above.
            unsafe { libc::munmap(self.0, MEM) };
        }
    }
    let _unmap = Unmap(host);
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    let code = probe_code(iterations);
    // SAFETY: `host` is a writable mapping of MEM bytes and the code is far
    // smaller than MEM - CODE.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (host as *mut u8).add(CODE as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is memory we own, and it stays mapped for the VM's
    // whole lifetime (`_unmap` is declared before `vm`, so dropped after it).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory region: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("create vCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;
    let start = Instant::now();
    for _ in 0..1000 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::Hlt => {
                let elapsed = start.elapsed();
                let regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
                if regs.rcx & 0xffff_ffff != 0 {
                    return Err(format!("the probe loop stopped early (ecx = {})", regs.rcx));
                }
                return Ok(elapsed);
            }
            VcpuExit::Intr => continue,
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("the probe guest never halted".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_code_is_the_intended_loop() {
        assert_eq!(
            probe_code(0x01020304),
            vec![0x66, 0xb9, 0x04, 0x03, 0x02, 0x01, 0x66, 0x49, 0x75, 0xfc, 0xf4]
        );
    }

    #[test]
    fn probe_gives_a_verdict() {
        // On every machine the probe answers; print what it found so a
        // skipped boot test's reason is visible in the log.
        let verdict = probe();
        eprintln!("kvm probe: {}", verdict.describe());
        if let KvmSupport::Hardware(d) | KvmSupport::Software(d) = &verdict {
            assert!(*d > Duration::ZERO);
        }
    }
}

//! Is `/dev/kvm` hardware-backed?
//!
//! Some hosts expose a `/dev/kvm` that is a software hypervisor (PVM on this
//! project's build machines runs plain guest code at about a million
//! instructions per second and cannot boot Linux). Boot tests must know. The
//! probe runs a counted loop in a real-mode guest and times it: hardware
//! virtualization finishes in well under a millisecond.
//!
//! [`probe`] has three outcomes, decided by [`classify`] from what each run
//! of the probe guest ended with ([`RunEnd`]):
//!
//! - `Ok(`[`KvmSupport::Hardware`]`)`: a run reached the guest's `HLT` with
//!   the loop counter at 0 in less than [`HARDWARE_THRESHOLD`].
//! - `Ok(`[`KvmSupport::NotHardware`]`)`, only on one of two expected
//!   signatures ([`NotHardware`]): every one of [`PROBE_RUNS`] runs reached
//!   `HLT` with the loop counter at 0, so KVM executed the guest correctly,
//!   but even the fastest took [`HARDWARE_THRESHOLD`] or longer (the software
//!   hypervisor); or opening `/dev/kvm` failed with `ENOENT` (no device node),
//!   `ENODEV` or `ENXIO` (a node but no KVM module behind it): no KVM.
//! - `Err(`[`ProbeError`]`)`: anything else. Opening `/dev/kvm` denied
//!   (`EACCES`, `EPERM`), any other failing system call or ioctl, a vCPU exit
//!   other than `HLT` (or an interrupted `KVM_RUN`, which is retried), a loop
//!   that reached `HLT` with its counter not at 0, a guest that never
//!   reaches `HLT`. These are faults to report, not a verdict on the host.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Iterations of the probe loop (about two guest instructions each).
pub const PROBE_ITERATIONS: u32 = 500_000;
/// Slower than this and KVM is not hardware-backed for our purposes.
pub const HARDWARE_THRESHOLD: Duration = Duration::from_millis(50);
/// Probe runs at most: the fastest counts, so one run slowed by a busy
/// host (a preempted vCPU thread) does not make hardware look like software.
pub const PROBE_RUNS: usize = 3;
/// `KVM_RUN` calls per run that may end interrupted (a signal) before the
/// guest is declared never to halt.
pub const MAX_RUN_CALLS: usize = 1000;

/// `vmm-mini --probe-kvm`'s exit status for [`KvmSupport::Hardware`].
pub const EXIT_HARDWARE: u8 = 0;
/// `vmm-mini --probe-kvm`'s exit status for [`KvmSupport::NotHardware`].
pub const EXIT_NOT_HARDWARE: u8 = 1;
/// `vmm-mini --probe-kvm`'s exit status for a [`ProbeError`] (2 is a usage
/// error, as for every vmm-mini flag).
pub const EXIT_PROBE_ERROR: u8 = 3;

/// What the probe found, where it came to a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// The loop ran at hardware speed (this long): boot tests can run.
    Hardware(Duration),
    /// KVM is not hardware-backed, or absent: boot tests cannot run, and no
    /// package can change that.
    NotHardware(NotHardware),
}

/// Why KVM is not hardware-backed: one of the two signatures the probe
/// accepts as a verdict rather than an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHardware {
    /// The software hypervisor: every run executed the loop correctly (it
    /// reached `HLT` with the counter at 0) but the fastest of them took
    /// this long, at least [`HARDWARE_THRESHOLD`].
    Slow {
        /// The fastest run's time.
        fastest: Duration,
        /// How many runs were made.
        runs: usize,
    },
    /// No KVM: opening `/dev/kvm` failed with this errno, `ENOENT` (no
    /// device node), `ENODEV` or `ENXIO` (no KVM module behind the node).
    NoKvm {
        /// The errno of the failed open.
        errno: i32,
    },
}

impl fmt::Display for NotHardware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotHardware::Slow { fastest, runs } => write!(
                f,
                "a software hypervisor behind /dev/kvm: a {PROBE_ITERATIONS}-iteration \
                 real-mode loop ran correctly but took {fastest:?} at best of {runs} \
                 (hardware: under {HARDWARE_THRESHOLD:?})"
            ),
            NotHardware::NoKvm { errno } => {
                write!(f, "no KVM on this host: open /dev/kvm: {}", os_error(errno))
            }
        }
    }
}

impl KvmSupport {
    /// Whether boot tests can run.
    pub fn is_hardware(&self) -> bool {
        matches!(self, KvmSupport::Hardware(_))
    }

    /// A one-line explanation, for skip messages.
    pub fn describe(&self) -> String {
        match self {
            KvmSupport::Hardware(d) => {
                format!("hardware-backed KVM ({PROBE_ITERATIONS}-iteration loop in {d:?})")
            }
            KvmSupport::NotHardware(why) => format!("KVM is not hardware-backed: {why}"),
        }
    }
}

/// A step of a probe run, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Mapping the guest's memory.
    Mmap,
    /// Opening `/dev/kvm`.
    OpenKvm,
    /// `KVM_CREATE_VM`.
    CreateVm,
    /// `KVM_SET_USER_MEMORY_REGION`.
    SetMemoryRegion,
    /// `KVM_CREATE_VCPU`.
    CreateVcpu,
    /// `KVM_GET_SREGS`.
    GetSregs,
    /// `KVM_SET_SREGS`.
    SetSregs,
    /// `KVM_GET_REGS`.
    GetRegs,
    /// `KVM_SET_REGS`.
    SetRegs,
    /// `KVM_RUN`.
    Run,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Mmap => "mmap of the guest memory",
            Step::OpenKvm => "open /dev/kvm",
            Step::CreateVm => "KVM_CREATE_VM",
            Step::SetMemoryRegion => "KVM_SET_USER_MEMORY_REGION",
            Step::CreateVcpu => "KVM_CREATE_VCPU",
            Step::GetSregs => "KVM_GET_SREGS",
            Step::SetSregs => "KVM_SET_SREGS",
            Step::GetRegs => "KVM_GET_REGS",
            Step::SetRegs => "KVM_SET_REGS",
            Step::Run => "KVM_RUN",
        })
    }
}

/// How one run of the probe guest ended: the raw observation that
/// [`classify`] judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest executed its `HLT` this long after the first `KVM_RUN`,
    /// with `ecx` left in the loop counter (0 when the loop ran through).
    Halted {
        /// From the first `KVM_RUN` to the `HLT` exit.
        elapsed: Duration,
        /// The guest's ECX at `HLT`.
        ecx: u32,
    },
    /// A system call or ioctl failed.
    Failed {
        /// Which.
        step: Step,
        /// With this errno.
        errno: i32,
    },
    /// The vCPU exited for another reason than `HLT` (described).
    UnexpectedExit(String),
    /// [`MAX_RUN_CALLS`] `KVM_RUN` calls all ended interrupted.
    NeverHalted,
}

/// The probe could not come to a verdict: something failed that neither
/// hardware KVM nor the expected software hypervisor or missing KVM
/// explains.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A system call or ioctl failed (opening `/dev/kvm` included, unless
    /// KVM is simply absent).
    #[error("{step}: {}", os_error(.errno))]
    Failed {
        /// Which.
        step: Step,
        /// With this errno.
        errno: i32,
    },
    /// The vCPU exited for another reason than `HLT`.
    #[error("the probe guest's vCPU exited unexpectedly: {0}")]
    UnexpectedExit(String),
    /// The guest reached `HLT` without counting its loop down to 0.
    #[error("the probe loop stopped early (ECX = {ecx} at HLT, not 0)")]
    StoppedEarly {
        /// The guest's ECX at `HLT`.
        ecx: u32,
    },
    /// The guest never reached `HLT`.
    #[error("the probe guest never reached HLT ({MAX_RUN_CALLS} KVM_RUN calls interrupted)")]
    NeverHalted,
    /// There was no run to judge.
    #[error("the probe made no run")]
    NoRuns,
}

fn os_error(errno: &i32) -> io::Error {
    io::Error::from_raw_os_error(*errno)
}

/// Judges the runs of the probe guest, in the order they were made. Runs
/// that halted correctly but slowly accumulate; the first other run
/// decides: a correct halt under [`HARDWARE_THRESHOLD`] is
/// [`KvmSupport::Hardware`], an open of `/dev/kvm` failing with `ENOENT`,
/// `ENODEV` or `ENXIO` is [`NotHardware::NoKvm`], and anything else is a
/// [`ProbeError`]. Runs that were all correct and slow are
/// [`NotHardware::Slow`]; no runs at all is [`ProbeError::NoRuns`].
pub fn classify(runs: &[RunEnd]) -> Result<KvmSupport, ProbeError> {
    let mut fastest: Option<Duration> = None;
    for run in runs {
        match *run {
            RunEnd::Halted { ecx, .. } if ecx != 0 => {
                return Err(ProbeError::StoppedEarly { ecx });
            }
            RunEnd::Halted { elapsed, .. } if elapsed < HARDWARE_THRESHOLD => {
                return Ok(KvmSupport::Hardware(elapsed));
            }
            RunEnd::Halted { elapsed, .. } => {
                fastest = Some(fastest.map_or(elapsed, |f| f.min(elapsed)));
            }
            RunEnd::Failed {
                step: Step::OpenKvm,
                errno: errno @ (libc::ENOENT | libc::ENODEV | libc::ENXIO),
            } => return Ok(KvmSupport::NotHardware(NotHardware::NoKvm { errno })),
            RunEnd::Failed { step, errno } => return Err(ProbeError::Failed { step, errno }),
            RunEnd::UnexpectedExit(ref what) => {
                return Err(ProbeError::UnexpectedExit(what.clone()));
            }
            RunEnd::NeverHalted => return Err(ProbeError::NeverHalted),
        }
    }
    match fastest {
        Some(fastest) => Ok(KvmSupport::NotHardware(NotHardware::Slow {
            fastest,
            runs: runs.len(),
        })),
        None => Err(ProbeError::NoRuns),
    }
}

/// `vmm-mini --probe-kvm`'s exit status for a probe result:
/// [`EXIT_HARDWARE`], [`EXIT_NOT_HARDWARE`] or [`EXIT_PROBE_ERROR`].
pub fn exit_status(result: &Result<KvmSupport, ProbeError>) -> u8 {
    match result {
        Ok(KvmSupport::Hardware(_)) => EXIT_HARDWARE,
        Ok(KvmSupport::NotHardware(_)) => EXIT_NOT_HARDWARE,
        Err(_) => EXIT_PROBE_ERROR,
    }
}

/// `mov ecx, N; l: dec ecx; jnz l; hlt` in 16-bit real mode.
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xf4]);
    code
}

/// Runs the probe guest up to [`PROBE_RUNS`] times, stopping at the first
/// run that is not a correct but slow halt, and [`classify`]s the runs.
pub fn probe() -> Result<KvmSupport, ProbeError> {
    let mut runs = Vec::with_capacity(PROBE_RUNS);
    for _ in 0..PROBE_RUNS {
        let end = run_probe(PROBE_ITERATIONS);
        let slow =
            matches!(end, RunEnd::Halted { elapsed, ecx: 0 } if elapsed >= HARDWARE_THRESHOLD);
        runs.push(end);
        if !slow {
            break;
        }
    }
    classify(&runs)
}

/// One run of the probe guest.
fn run_probe(iterations: u32) -> RunEnd {
    match try_run_probe(iterations) {
        Ok(end) | Err(end) => end,
    }
}

/// `map_err` for a failed `step`.
fn failed(step: Step) -> impl FnOnce(kvm_ioctls::Error) -> RunEnd {
    move |e| RunEnd::Failed {
        step,
        errno: e.errno(),
    }
}

fn try_run_probe(iterations: u32) -> Result<RunEnd, RunEnd> {
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
        return Err(RunEnd::Failed {
            step: Step::Mmap,
            errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    struct Unmap(*mut libc::c_void);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the mapping created above.
            unsafe { libc::munmap(self.0, MEM) };
        }
    }
    let _unmap = Unmap(host);
    let kvm = Kvm::new().map_err(failed(Step::OpenKvm))?;
    let vm = kvm.create_vm().map_err(failed(Step::CreateVm))?;
    let code = probe_code(iterations);
    // SAFETY: `host` is a writable mapping of MEM bytes and the code is far
    // smaller than MEM - CODE.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            host.cast::<u8>().add(CODE as usize),
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
    unsafe { vm.set_user_memory_region(region) }.map_err(failed(Step::SetMemoryRegion))?;
    let mut vcpu = vm.create_vcpu(0).map_err(failed(Step::CreateVcpu))?;
    let mut sregs = vcpu.get_sregs().map_err(failed(Step::GetSregs))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(failed(Step::SetSregs))?;
    let mut regs = vcpu.get_regs().map_err(failed(Step::GetRegs))?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(failed(Step::SetRegs))?;
    let start = Instant::now();
    for _ in 0..MAX_RUN_CALLS {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => {
                let elapsed = start.elapsed();
                let regs = vcpu.get_regs().map_err(failed(Step::GetRegs))?;
                return Ok(RunEnd::Halted {
                    elapsed,
                    ecx: (regs.rcx & 0xffff_ffff) as u32,
                });
            }
            // A signal interrupted KVM_RUN: run on.
            Ok(VcpuExit::Intr) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Ok(other) => return Ok(RunEnd::UnexpectedExit(format!("{other:?}"))),
            Err(e) => return Err(failed(Step::Run)(e)),
        }
    }
    Ok(RunEnd::NeverHalted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(300);
    const SLOW: Duration = Duration::from_millis(440);

    fn halted(elapsed: Duration) -> RunEnd {
        RunEnd::Halted { elapsed, ecx: 0 }
    }

    #[test]
    fn probe_code_is_the_intended_loop() {
        assert_eq!(
            probe_code(0x01020304),
            vec![0x66, 0xb9, 0x04, 0x03, 0x02, 0x01, 0x66, 0x49, 0x75, 0xfc, 0xf4]
        );
    }

    #[test]
    fn a_correct_fast_halt_is_hardware() {
        let r = classify(&[halted(FAST)]);
        assert_eq!(r, Ok(KvmSupport::Hardware(FAST)));
        assert_eq!(exit_status(&r), EXIT_HARDWARE);
        // A busy host's slow runs before it do not matter.
        let r = classify(&[halted(SLOW), halted(SLOW * 2), halted(FAST)]);
        assert_eq!(r, Ok(KvmSupport::Hardware(FAST)));
    }

    #[test]
    fn correct_slow_halts_are_the_software_hypervisor() {
        let r = classify(&[halted(SLOW * 2), halted(SLOW), halted(SLOW * 3)]);
        assert_eq!(
            r,
            Ok(KvmSupport::NotHardware(NotHardware::Slow {
                fastest: SLOW,
                runs: 3
            }))
        );
        assert_eq!(exit_status(&r), EXIT_NOT_HARDWARE);
        // Exactly at the threshold is not hardware speed.
        assert!(matches!(
            classify(&[halted(HARDWARE_THRESHOLD)]),
            Ok(KvmSupport::NotHardware(NotHardware::Slow { .. }))
        ));
        let why = r.unwrap().describe();
        assert!(
            why.contains("not hardware-backed") && why.contains("440ms"),
            "{why}"
        );
    }

    #[test]
    fn no_kvm_device_or_module_is_not_hardware() {
        for errno in [libc::ENOENT, libc::ENODEV, libc::ENXIO] {
            let r = classify(&[RunEnd::Failed {
                step: Step::OpenKvm,
                errno,
            }]);
            assert_eq!(
                r,
                Ok(KvmSupport::NotHardware(NotHardware::NoKvm { errno })),
                "errno {errno}"
            );
            assert_eq!(exit_status(&r), EXIT_NOT_HARDWARE);
        }
    }

    #[test]
    fn permission_denied_on_dev_kvm_is_an_error() {
        for errno in [libc::EACCES, libc::EPERM] {
            let r = classify(&[RunEnd::Failed {
                step: Step::OpenKvm,
                errno,
            }]);
            assert_eq!(
                r,
                Err(ProbeError::Failed {
                    step: Step::OpenKvm,
                    errno
                })
            );
            assert_eq!(exit_status(&r), EXIT_PROBE_ERROR);
        }
        let msg = ProbeError::Failed {
            step: Step::OpenKvm,
            errno: libc::EACCES,
        }
        .to_string();
        assert!(
            msg.starts_with("open /dev/kvm: ") && msg.contains("ermission denied"),
            "{msg}"
        );
    }

    #[test]
    fn failing_ioctls_are_errors_even_with_missing_kvm_errnos() {
        for step in [
            Step::Mmap,
            Step::CreateVm,
            Step::SetMemoryRegion,
            Step::CreateVcpu,
            Step::GetSregs,
            Step::SetSregs,
            Step::GetRegs,
            Step::SetRegs,
            Step::Run,
        ] {
            for errno in [libc::EINVAL, libc::ENOENT, libc::ENXIO, libc::ENOMEM] {
                assert_eq!(
                    classify(&[RunEnd::Failed { step, errno }]),
                    Err(ProbeError::Failed { step, errno }),
                    "{step} with errno {errno}"
                );
            }
        }
        // A failure after slow runs is still a failure.
        assert_eq!(
            classify(&[
                halted(SLOW),
                RunEnd::Failed {
                    step: Step::Run,
                    errno: libc::EFAULT
                }
            ]),
            Err(ProbeError::Failed {
                step: Step::Run,
                errno: libc::EFAULT
            })
        );
    }

    #[test]
    fn unexpected_exits_and_wrong_loops_are_errors() {
        let r = classify(&[RunEnd::UnexpectedExit("Shutdown".into())]);
        assert_eq!(r, Err(ProbeError::UnexpectedExit("Shutdown".into())));
        assert_eq!(exit_status(&r), EXIT_PROBE_ERROR);
        // Fast, but the loop did not run through: not hardware, an error.
        assert_eq!(
            classify(&[RunEnd::Halted {
                elapsed: FAST,
                ecx: 17
            }]),
            Err(ProbeError::StoppedEarly { ecx: 17 })
        );
        assert_eq!(
            classify(&[halted(SLOW), RunEnd::NeverHalted]),
            Err(ProbeError::NeverHalted)
        );
        assert_eq!(classify(&[]), Err(ProbeError::NoRuns));
    }

    #[test]
    fn the_probe_comes_to_a_verdict_here() {
        // The real probe: hardware-backed or not, but never an error (no
        // access to /dev/kvm, a failing ioctl, an unexpected exit), which
        // fails this test.
        match probe() {
            Ok(verdict) => {
                eprintln!("kvm probe: {}", verdict.describe());
                match verdict {
                    KvmSupport::Hardware(d) => {
                        assert!(d > Duration::ZERO && d < HARDWARE_THRESHOLD)
                    }
                    KvmSupport::NotHardware(NotHardware::Slow { fastest, runs }) => {
                        assert!(fastest >= HARDWARE_THRESHOLD);
                        assert_eq!(runs, PROBE_RUNS);
                    }
                    KvmSupport::NotHardware(NotHardware::NoKvm { .. }) => {}
                }
            }
            Err(e) => panic!("the KVM probe failed: {e}"),
        }
    }
}

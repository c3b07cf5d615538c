//! `vmm-mini`: parse flags into a `VmConfig`, hand it to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm_mini::config::{FsSpec, P9Spec, VmConfig};
use vmm_mini::kvm_probe;

/// A minimal KVM VMM: boots a Linux kernel (PVH vmlinux or bzImage) with an
/// 8250 console on stdio and virtio-mmio shares, and exits with the guest's
/// status.
///
/// With our initramfs (guest/build-initramfs.sh), each virtio-fs share is
/// mounted at /mnt/TAG and each 9P share at /mnt/TAG; the COMMAND after `--`
/// runs in the guest's shell, or a shell opens on the console without one.
#[derive(Debug, Parser)]
#[command(name = "vmm-mini", version)]
#[command(after_help = "Example:\n  vmm-mini --kernel target/guest/vmlinux \
--initrd target/guest/initramfs.cpio.gz --fs tag=c,dir=/some/dir -- ls /mnt/c\n\n\
The COMMAND after --: one word is a shell command line, run as it is, as ssh \
runs one (-- 'cd /mnt/c && ls | wc -l'); several words are a program and its \
arguments, each kept as one argument (-- touch /mnt/c/'a b' makes one file).\n\n\
Exit status: the guest's (what its init writes to I/O port 0x501); 125 when \
the guest resets without one (reboot, panic); 1 when the VM cannot be built \
or a vCPU fails; 2 for bad flags.\n\n\
With --probe-kvm: 0 when /dev/kvm is hardware-backed, 1 when it is not (the \
reason on stdout), 3 when the probe failed (the error on stderr).")]
struct Cli {
    /// The guest kernel: a PVH-capable ELF vmlinux or a bzImage.
    #[arg(long, required_unless_present = "probe_kvm")]
    kernel: Option<PathBuf>,
    /// The initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB (64 to 3072).
    #[arg(long, default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(64..=(vmm_mini::MAX_RAM >> 20)))]
    mem: u64,
    /// vCPUs (1 to 32).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=vmm_mini::MAX_CPUS as i64))]
    cpus: u8,
    /// A virtio-fs share: tag=T,dir=DIR[,readonly][,queues=N] serves DIR
    /// in-process; tag=T,socket=PATH[,queues=N] connects to a vhost-user
    /// backend (virtiofsd-rs or upstream virtiofsd). Repeatable.
    #[arg(long = "fs", value_name = "SPEC")]
    fs: Vec<FsSpec>,
    /// A virtio-9p share: tag=T,dir=DIR[,readonly] in-process, or
    /// tag=T,socket=PATH for a vhost-user 9P backend (p9d --socket-path).
    /// Repeatable.
    #[arg(long = "9p", value_name = "SPEC")]
    p9: Vec<P9Spec>,
    /// Extra kernel command line, appended to vmm-mini's. The environment
    /// variable VMM_MINI_CMDLINE, when set, is appended after it.
    #[arg(long)]
    cmdline: Vec<String>,
    /// Print the time from VM creation to the guest's init (when the init
    /// writes I/O port 0x502) on stderr.
    #[arg(long)]
    boot_timer: bool,
    /// Report whether /dev/kvm is hardware-backed and exit: 0 if it is, 1
    /// if not (a software hypervisor, or no KVM), 3 if the probe failed (no
    /// permission to open /dev/kvm, a failing ioctl, an unexpected VM exit).
    #[arg(long)]
    probe_kvm: bool,
    /// Pin every vCPU thread to these host CPUs (comma-separated CPU
    /// numbers). Without it the host's scheduler places them.
    #[arg(
        long,
        value_name = "CPUS",
        value_delimiter = ',',
        env = "VMM_MINI_VCPU_AFFINITY"
    )]
    vcpu_affinity: Vec<usize>,
    /// Log level: error, warn, info, debug, trace, off.
    #[arg(long, default_value = "warn")]
    log_level: log::LevelFilter,
    /// The command the guest runs: one word is a shell command line ('a; b'),
    /// several are a program and its arguments; none: an interactive shell.
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .init();
    if cli.probe_kvm {
        let result = kvm_probe::probe();
        match &result {
            Ok(support) => println!("{}", support.describe()),
            Err(e) => eprintln!("vmm-mini: the KVM probe failed: {e}"),
        }
        return ExitCode::from(kvm_probe::exit_status(&result));
    }
    let Some(kernel) = cli.kernel else {
        unreachable!("clap requires --kernel without --probe-kvm")
    };
    let mut cfg = VmConfig::new(kernel);
    cfg.initrd = cli.initrd;
    cfg.mem_mib = cli.mem;
    cfg.cpus = cli.cpus;
    cfg.cmdline = cli.cmdline;
    // For runners that must adjust every guest they start (tests/e2e/
    // nested-kvm.sh: nopv under QEMU's emulated SVM).
    if let Some(extra) = std::env::var_os("VMM_MINI_CMDLINE") {
        cfg.cmdline.push(extra.to_string_lossy().into_owned());
    }
    cfg.shares = cli
        .fs
        .into_iter()
        .map(|s| s.0)
        .chain(cli.p9.into_iter().map(|s| s.0))
        .collect();
    cfg.command = (!cli.command.is_empty()).then_some(cli.command);
    cfg.boot_timer = cli.boot_timer;
    cfg.vcpu_affinity = cli.vcpu_affinity;
    cfg.stdin = true;
    match vmm_mini::vm::run(&cfg, Box::new(std::io::stdout())) {
        Ok(outcome) => {
            if outcome.reason == vmm_mini::vm::ExitReason::Reset {
                eprintln!("vmm-mini: the guest reset without an exit status (reboot, panic or triple fault)");
            }
            ExitCode::from(outcome.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("vmm-mini: {e}");
            ExitCode::from(1)
        }
    }
}

//! vmm-mini as a program: the built binary boots the custom guest kernel
//! (`target/guest/vmlinux`, PVH, or `target/guest/bzImage`) with the custom
//! initramfs (`target/guest/initramfs.cpio.gz`, whose init runs vmm-mini's
//! `vmm.sh=` command) and shares a host directory over in-process
//! virtio-fs, in-process virtio-9p or vhost-user virtio-fs (`virtiofsd-rs`).
//!
//! The boot tests need a hardware-backed `/dev/kvm`. They share one
//! result of `vmm_mini::kvm_probe::probe()`, made by the first of them to
//! ask ([`kvm`]). Where the probe fails (no permission on `/dev/kvm`, a
//! failing ioctl, an unexpected VM exit) they fail. Where it says KVM is not
//! hardware-backed (a software hypervisor, or no KVM) each prints
//!   SKIP: <test>: KVM is not hardware-backed: <the probe's reason>
//! past the harness's output capture and passes without booting, also when
//! `VIRTIOFSD_RS_REQUIRE_E2E` is set (no package can fix the machine; the
//! line then says so). Only on hardware KVM do they look for the kernel,
//! the initramfs (which must be newer than `guest/init`) and, for
//! vhost-user, `virtiofsd-rs` next to `vmm-mini`: when one is missing they
//! print `SKIP: <test>: <why>`, or fail when `VIRTIOFSD_RS_REQUIRE_E2E` is
//! set. They boot one at a time, each killed after 120 s.
//! `VMM_MINI_ASSUME_HARDWARE_KVM=1` makes them boot even where the probe
//! says not hardware-backed: for testing these tests themselves (the boots
//! then fail).
//!
//! The other tests need no hardware KVM: the shared probe comes to a
//! verdict, `--probe-kvm` answers (exit status 0 or 1, not 3: a failed
//! probe), bad flags are usage errors (exit status 2), a missing kernel is a
//! run-time error (exit 1).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use vmm_mini::kvm_probe::{self, KvmSupport, ProbeError};

const VMM: &str = env!("CARGO_BIN_EXE_vmm-mini");
/// How long a boot test's VM may run before it is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a run that must not boot may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(60);

/// Prints a line past the test harness's output capture (which only takes
/// `print!`/`eprint!`), so that skip reasons show in `cargo test`'s output.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

// --- running vmm-mini ---------------------------------------------------------

/// How a vmm-mini run ended.
struct Run {
    /// Its exit status; None when a signal ended it.
    code: Option<i32>,
    signal: Option<i32>,
    /// The guest console (`\r` removed).
    stdout: String,
    stderr: String,
    args: Vec<OsString>,
}

impl Run {
    /// Everything about the run, for assertion messages.
    fn transcript(&self) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let tail = &lines[lines.len().saturating_sub(80)..];
        format!(
            "vmm-mini {:?}\nexit status {:?}, signal {:?}\n--- stderr ---\n{}\n--- console (last {} of {} lines) ---\n{}",
            self.args,
            self.code,
            self.signal,
            self.stderr.trim_end(),
            tail.len(),
            lines.len(),
            tail.join("\n")
        )
    }

    /// The console has a line with `text` in it. (Not "is": the kernel's
    /// own messages may land on the same line. The guest's init echoes the
    /// command it runs, so `text` must be what the command prints, not what
    /// it says: "CPUS=2" for `echo CPUS=$(...)`.)
    fn has_line(&self, text: &str) -> bool {
        self.stdout.lines().any(|l| l.contains(text))
    }

    /// stderr's lines that say something: without blank lines and clap's
    /// closing "For more information, try '--help'." hint.
    fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
            .collect()
    }
}

fn reader(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).replace('\r', "")
    })
}

/// Runs vmm-mini with `args` (stdin empty), killing it after `timeout`.
fn run_vmm<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> Run {
    let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(VMM)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {VMM}: {e}"));
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for vmm-mini") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        args,
    };
    assert!(
        status.is_some(),
        "vmm-mini did not finish within {timeout:?} and was killed\n{}",
        run.transcript()
    );
    run
}

// --- what a boot test needs -------------------------------------------------

/// The one KVM probe of this test process, made by the first test to ask
/// and shared by all (tests run in threads of one process).
fn kvm() -> &'static Result<KvmSupport, ProbeError> {
    static PROBE: OnceLock<Result<KvmSupport, ProbeError>> = OnceLock::new();
    PROBE.get_or_init(kvm_probe::probe)
}

/// Whether boots are required here (VIRTIOFSD_RS_REQUIRE_E2E is set).
fn required() -> bool {
    std::env::var_os("VIRTIOFSD_RS_REQUIRE_E2E").is_some_and(|v| !v.is_empty())
}

/// Whether `test` may boot: KVM is hardware-backed (or the tests are being
/// tested). Prints a SKIP line with the probe's reason where it is not;
/// fails the test where the probe failed.
fn hardware_kvm(test: &str) -> bool {
    let support = match kvm() {
        Ok(support) => support,
        Err(e) => panic!("{test}: the KVM probe failed (not a verdict on the host): {e}"),
    };
    if support.is_hardware() {
        return true;
    }
    if std::env::var_os("VMM_MINI_ASSUME_HARDWARE_KVM").is_some_and(|v| v == "1") {
        say(&format!(
            "{test}: VMM_MINI_ASSUME_HARDWARE_KVM=1: booting although {}",
            support.describe()
        ));
        return true;
    }
    let note = if required() {
        " (VIRTIOFSD_RS_REQUIRE_E2E is set, but no package can fix the machine: still a skip)"
    } else {
        ""
    };
    say(&format!("SKIP: {test}: {}{note}", support.describe()));
    false
}

/// Something this machine lacks for `test` (past the KVM probe): a SKIP
/// line, or a failure when VIRTIOFSD_RS_REQUIRE_E2E is set.
fn not_here<T>(test: &str, why: &str) -> Option<T> {
    assert!(
        !required(),
        "{test}: required here (VIRTIOFSD_RS_REQUIRE_E2E is set), but {why}"
    );
    say(&format!("SKIP: {test}: {why}"));
    None
}

fn mtime(p: &Path) -> Option<SystemTime> {
    p.metadata().and_then(|m| m.modified()).ok()
}

#[derive(Clone, Copy)]
enum Kernel {
    /// `target/guest/vmlinux`, booted through its PVH entry.
    Pvh,
    /// `target/guest/bzImage`, booted through the 64-bit Linux boot protocol.
    BzImage,
}

/// A guest to boot, and the right to boot it: the boot tests run one at a
/// time (each VM has 2 vCPUs or less, on CI machines with 2 cores).
struct Guest {
    kernel: PathBuf,
    initrd: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Guest {
    /// The guest for `test`, or None (after saying why) when this machine
    /// cannot boot it.
    fn get(test: &str, kernel: Kernel) -> Option<Guest> {
        if !hardware_kvm(test) {
            return None;
        }
        let dir = repo_root().join("target/guest");
        let kernel = dir.join(match kernel {
            Kernel::Pvh => "vmlinux",
            Kernel::BzImage => "bzImage",
        });
        let initrd = dir.join("initramfs.cpio.gz");
        if !kernel.is_file() {
            return not_here(
                test,
                &format!(
                    "{} is missing (run guest/build-kernel.sh)",
                    kernel.display()
                ),
            );
        }
        if !initrd.is_file() {
            return not_here(
                test,
                &format!(
                    "{} is missing (run guest/build-initramfs.sh --custom-kernel)",
                    initrd.display()
                ),
            );
        }
        let init = repo_root().join("guest/init");
        if let (Some(built), Some(source)) = (mtime(&initrd), mtime(&init)) {
            if built < source {
                return not_here(
                    test,
                    &format!(
                        "{} is older than guest/init (run guest/build-initramfs.sh --custom-kernel)",
                        initrd.display()
                    ),
                );
            }
        }
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        Some(Guest {
            kernel,
            initrd,
            _turn: turn,
        })
    }

    /// Boots with `devices_and_flags` and runs `script` (`sh -c`) in the
    /// guest.
    fn run(&self, devices_and_flags: &[OsString], script: &str) -> Run {
        self.run_words(devices_and_flags, &["sh", "-c", script])
    }

    /// Boots with `devices_and_flags` and `-- WORDS...`.
    fn run_words(&self, devices_and_flags: &[OsString], words: &[&str]) -> Run {
        let mut args: Vec<OsString> = vec![
            "--kernel".into(),
            self.kernel.clone().into(),
            "--initrd".into(),
            self.initrd.clone().into(),
            "--mem".into(),
            "256".into(),
        ];
        args.extend(devices_and_flags.iter().cloned());
        args.push("--".into());
        args.extend(words.iter().map(OsString::from));
        let run = run_vmm(&args, BOOT_TIMEOUT);
        say(&format!(
            "vmm-mini exited with {:?} after running: {words:?}",
            run.code
        ));
        run
    }
}

/// `key=value` for a `--fs`/`--9p` spec.
fn spec(tag: &str, key: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("tag={tag},{key}="));
    s.push(path);
    assert!(
        !path.to_string_lossy().contains(','),
        "{} has a comma, which a share spec cannot carry",
        path.display()
    );
    s
}

/// A share with hello.txt, of unique content; returns the directory and
/// that content (one line).
fn share_with_a_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("vmm-mini-boot")
        .tempdir()
        .expect("a temporary share");
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let content = format!("hello from the host, pid {} at {nanos}", std::process::id());
    std::fs::write(dir.path().join("hello.txt"), format!("{content}\n")).expect("write hello.txt");
    (dir, content)
}

/// The guest reads hello.txt from the share at /mnt/c and writes
/// from-guest.txt there; the console shows the one, the host sees the other.
const READ_AND_WRITE: &str =
    "cat /mnt/c/hello.txt && echo written by the guest >/mnt/c/from-guest.txt";

fn check_read_and_write(run: &Run, share: &Path, content: &str) {
    assert_eq!(
        run.code,
        Some(0),
        "the guest's command succeeded\n{}",
        run.transcript()
    );
    assert!(
        run.has_line(content),
        "the console shows the host file's content {content:?}\n{}",
        run.transcript()
    );
    let written = std::fs::read_to_string(share.join("from-guest.txt"));
    assert_eq!(
        written.as_deref().ok(),
        Some("written by the guest\n"),
        "the host sees the file the guest wrote ({written:?})\n{}",
        run.transcript()
    );
}

// --- boot tests ---------------------------------------------------------------

#[test]
fn in_process_virtio_fs_serves_a_host_directory() {
    let Some(guest) = Guest::get("in_process_virtio_fs_serves_a_host_directory", Kernel::Pvh)
    else {
        return;
    };
    let (share, content) = share_with_a_file();
    let run = guest.run(
        &["--fs".into(), spec("c", "dir", share.path())],
        READ_AND_WRITE,
    );
    check_read_and_write(&run, share.path(), &content);
}

#[test]
fn the_guest_exit_status_is_vmm_minis() {
    let Some(guest) = Guest::get("the_guest_exit_status_is_vmm_minis", Kernel::Pvh) else {
        return;
    };
    // One word after `--` is a shell command line, as `ssh host 'a; b'`
    // takes it: both commands run, the quotes group, the exit is the
    // guest's.
    let run = guest.run_words(&[], &["echo ONE-$((40 + 2)); echo 'TWO  THREE'; exit 7"]);
    assert_eq!(
        run.code,
        Some(7),
        "vmm-mini exits with the guest's status\n{}",
        run.transcript()
    );
    assert!(
        run.has_line("ONE-42") && run.has_line("TWO  THREE"),
        "the one-word command ran as a shell command line\n{}",
        run.transcript()
    );
}

#[test]
fn in_process_virtio_9p_serves_a_host_directory() {
    let Some(guest) = Guest::get("in_process_virtio_9p_serves_a_host_directory", Kernel::Pvh)
    else {
        return;
    };
    let (share, content) = share_with_a_file();
    let run = guest.run(
        &["--9p".into(), spec("c", "dir", share.path())],
        READ_AND_WRITE,
    );
    check_read_and_write(&run, share.path(), &content);
}

/// `virtiofsd-rs` serving `share` on `socket`; killed if still running when
/// dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, share: &Path, socket: &Path, log: &Path) -> Daemon {
        let log_file = std::fs::File::create(log).expect("daemon log");
        let child = Command::new(bin)
            .arg("--shared-dir")
            .arg(share)
            .arg("--socket-path")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("daemon log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut d = Daemon {
            child,
            log: log.to_owned(),
        };
        let start = Instant::now();
        while !socket.exists() {
            if let Some(st) = d.child.try_wait().expect("waiting for the daemon") {
                panic!(
                    "{} exited with {st} before creating its socket\n{}",
                    bin.display(),
                    d.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} created no socket within 20 s\n{}",
                bin.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        format!(
            "--- daemon log ---\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// The daemon's exit status once the frontend is gone (at most 10 s).
    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(st) = self.child.try_wait().expect("waiting for the daemon") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vhost_user_virtio_fs_with_virtiofsd_rs() {
    let test = "vhost_user_virtio_fs_with_virtiofsd_rs";
    let Some(guest) = Guest::get(test, Kernel::Pvh) else {
        return;
    };
    // The daemon of the same build: target/<profile>/virtiofsd-rs.
    let daemon_bin = Path::new(VMM).with_file_name("virtiofsd-rs");
    if !daemon_bin.is_file() {
        not_here::<()>(
            test,
            &format!(
                "{} is not built (cargo build -p virtiofs, same profile)",
                daemon_bin.display()
            ),
        );
        return;
    }
    let (share, content) = share_with_a_file();
    let work = tempfile::Builder::new()
        .prefix("vmm-mini-vhost")
        .tempdir()
        .expect("a temporary directory");
    let socket = work.path().join("vhost-user-fs.sock");
    let mut daemon = Daemon::start(
        &daemon_bin,
        share.path(),
        &socket,
        &work.path().join("daemon.log"),
    );
    let run = guest.run(
        &["--fs".into(), spec("c", "socket", &socket)],
        READ_AND_WRITE,
    );
    let exit = daemon.wait_exit();
    let daemon_log = daemon.log();
    check_read_and_write(&run, share.path(), &content);
    let exit = exit.unwrap_or_else(|| {
        panic!("virtiofsd-rs did not exit within 10 s of vmm-mini disconnecting\n{daemon_log}")
    });
    assert!(
        exit.success(),
        "virtiofsd-rs exited with {exit}\n{daemon_log}"
    );
}

#[test]
fn two_vcpus_are_online() {
    let Some(guest) = Guest::get("two_vcpus_are_online", Kernel::Pvh) else {
        return;
    };
    let run = guest.run(
        &["--cpus".into(), "2".into()],
        "echo CPUS=$(grep -c ^processor /proc/cpuinfo)",
    );
    assert_eq!(
        run.code,
        Some(0),
        "the guest's command succeeded\n{}",
        run.transcript()
    );
    assert!(
        run.has_line("CPUS=2"),
        "the guest sees 2 processors in /proc/cpuinfo\n{}",
        run.transcript()
    );
}

#[test]
fn a_bzimage_boots_too() {
    let Some(guest) = Guest::get("a_bzimage_boots_too", Kernel::BzImage) else {
        return;
    };
    let run = guest.run(&[], "echo BOOTED-$(uname -m); exit 3");
    assert_eq!(
        run.code,
        Some(3),
        "vmm-mini exits with the guest's status\n{}",
        run.transcript()
    );
    assert!(
        run.has_line("BOOTED-x86_64"),
        "the guest's command ran\n{}",
        run.transcript()
    );
}

// --- no hardware KVM needed ----------------------------------------------------

#[test]
fn the_shared_kvm_probe_comes_to_a_verdict() {
    // The boot tests' probe: hardware-backed or not, never an error.
    match kvm() {
        Ok(support) => say(&format!(
            "the boot tests' KVM probe: {}",
            support.describe()
        )),
        Err(e) => panic!("the boot tests' KVM probe failed: {e}"),
    }
}

#[test]
fn probe_kvm_answers_in_one_line() {
    let run = run_vmm(&["--probe-kvm"], QUICK_TIMEOUT);
    assert!(
        matches!(
            run.code.and_then(|c| u8::try_from(c).ok()),
            Some(kvm_probe::EXIT_HARDWARE | kvm_probe::EXIT_NOT_HARDWARE)
        ),
        "--probe-kvm exits 0 (hardware-backed) or 1 (not), not {} (the probe failed)\n{}",
        kvm_probe::EXIT_PROBE_ERROR,
        run.transcript()
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "--probe-kvm prints one line\n{}",
        run.transcript()
    );
    let says = if run.code == Some(0) {
        "hardware-backed KVM"
    } else {
        "KVM is not hardware-backed: "
    };
    assert!(
        lines[0].starts_with(says),
        "--probe-kvm's line agrees with its exit status {:?}: starts with {says:?}\n{}",
        run.code,
        run.transcript()
    );
    say(&format!(
        "vmm-mini --probe-kvm: exit status {:?}: {}",
        run.code, lines[0]
    ));
}

/// Exit status 2 and one line of error (clap's "For more information" hint
/// aside) that contains `says`.
fn assert_usage_error(args: &[&str], says: &str) {
    let run = run_vmm(args, QUICK_TIMEOUT);
    assert_eq!(
        run.code,
        Some(2),
        "{args:?} is a usage error\n{}",
        run.transcript()
    );
    let lines = run.error_lines();
    assert!(
        lines.len() == 1 && lines[0].contains(says),
        "{args:?}: one line of error that says {says:?}, got {lines:?}"
    );
    assert!(
        run.stdout.is_empty(),
        "{args:?}: nothing on stdout\n{}",
        run.transcript()
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let k = ["--kernel", "/nonexistent/vmlinux"];
    let with =
        |more: &[&'static str]| -> Vec<&'static str> { k.iter().chain(more).copied().collect() };
    assert_usage_error(
        &with(&["--fs", "tag=c"]),
        "give exactly one of dir= and socket=",
    );
    assert_usage_error(
        &with(&["--fs", "tag=c,dir=/tmp,socket=/tmp/s"]),
        "give exactly one of dir= and socket=",
    );
    assert_usage_error(&with(&["--fs", "dir=/tmp"]), "missing tag=");
    assert_usage_error(&with(&["--fs", "tag=a b,dir=/tmp"]), "bad tag");
    assert_usage_error(
        &with(&["--fs", "tag=c,dir=/tmp,cache=always"]),
        "unknown item",
    );
    assert_usage_error(&with(&["--9p", "tag=c,dir=/tmp,queues=2"]), "queues=");
    assert_usage_error(&with(&["--cpus", "300"]), "--cpus");
    assert_usage_error(&with(&["--mem", "lots"]), "--mem");
    // clap follows these with its usage line, so only the exit status and
    // the first line are checked.
    for args in [&["--bogus"][..], &[][..]] {
        let run = run_vmm(args, QUICK_TIMEOUT);
        assert_eq!(
            run.code,
            Some(2),
            "{args:?} is a usage error\n{}",
            run.transcript()
        );
        assert!(
            run.stderr.starts_with("error:"),
            "{args:?}: the error comes first\n{}",
            run.transcript()
        );
    }
}

#[test]
fn out_of_range_memory_and_cpus_are_usage_errors() {
    let k = ["--kernel", "/nonexistent/vmlinux"];
    for (flag, value) in [
        ("--mem", "1"),
        ("--mem", "63"),
        ("--mem", "3073"),
        ("--cpus", "0"),
        ("--cpus", "33"),
    ] {
        let args: Vec<&str> = k.iter().copied().chain([flag, value]).collect();
        assert_usage_error(&args, flag);
    }
}

#[test]
fn a_missing_kernel_is_a_run_time_error_that_names_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kernel = dir.path().join("no-such-vmlinux");
    let kernel_s = kernel.to_str().expect("a UTF-8 temporary path");
    let run = run_vmm(&["--kernel", kernel_s], QUICK_TIMEOUT);
    assert_eq!(
        run.code,
        Some(1),
        "a missing kernel file is exit status 1\n{}",
        run.transcript()
    );
    let lines = run.error_lines();
    // vmm-mini opens /dev/kvm and creates the VM before it loads the
    // kernel, so without usable KVM the error is about that instead.
    assert!(
        lines.len() == 1
            && (lines[0].contains(kernel_s)
                || lines[0].contains("/dev/kvm")
                || lines[0].starts_with("vmm-mini: KVM ")),
        "one line of error naming {kernel_s} (or /dev/kvm, where KVM is unusable), got {lines:?}"
    );
}

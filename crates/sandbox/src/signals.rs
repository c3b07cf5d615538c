//! Termination signals (SIGTERM, SIGINT, SIGHUP, SIGQUIT) for daemons that
//! wait for them on a thread of their own: blocked in every thread (each
//! thread inherits the mask of the one that starts it), then taken with
//! `sigwait`.

/// The termination signals, blocked in the calling thread.
#[derive(Clone, Copy)]
pub struct Termination(libc::sigset_t);

impl Termination {
    /// The set of termination signals.
    pub fn set() -> Termination {
        // SAFETY: a zeroed sigset_t is valid storage; sigemptyset and
        // sigaddset initialise it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(&mut set, sig);
            }
            Termination(set)
        }
    }

    /// Blocks them in the calling thread, and so in every thread it starts
    /// from now on. Call before starting threads.
    pub fn block() -> Termination {
        let t = Termination::set();
        // SAFETY: a valid set; the old mask is not wanted.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &t.0, std::ptr::null_mut()) };
        t
    }

    /// Waits for one of them and returns it.
    pub fn wait(&self) -> libc::c_int {
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set and out-pointer; the signals are blocked.
        while unsafe { libc::sigwait(&self.0, &mut sig) } != 0 {}
        sig
    }

    /// The raw set, for `sigprocmask`.
    pub fn as_sigset(&self) -> &libc::sigset_t {
        &self.0
    }
}

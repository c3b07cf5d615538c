//! Waiting for a device, as a driver does: sleep on the queues' call
//! eventfds (the interrupts) until what is waited for has happened.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Polls `fds` for readability for at most `timeout` (rounded to whole
/// milliseconds, at most `i32::MAX` of them). Returns, per fd, whether it is
/// readable (all false on timeout); an interrupted poll counts as a timeout.
pub fn poll_readable(fds: &[&EventFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds, alive for the
    // duration of the call; the eventfds are borrowed, hence open.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds
        .iter()
        .map(|p| r > 0 && p.revents & libc::POLLIN != 0)
        .collect())
}

/// Waits until `done()` holds, checking it first, then again after each
/// poll of `fds` (which ends when one is readable, or after `slice`); after
/// each poll, `on_wake` gets, per fd, whether it was readable (to drain the
/// eventfds, or to play the VMM's interrupt relay). Returns false once
/// `timeout` has passed without `done()`, or if polling fails.
pub fn wait_until(
    fds: &[&EventFd],
    slice: Duration,
    timeout: Duration,
    mut on_wake: impl FnMut(&[bool]),
    mut done: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        match poll_readable(fds, slice) {
            Ok(readable) => on_wake(&readable),
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn a_readable_fd_wakes_the_waiter_and_is_reported() {
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = EventFd::new(EFD_NONBLOCK).unwrap();
        b.write(1).unwrap();
        let r = poll_readable(&[&a, &b], Duration::from_secs(5)).unwrap();
        assert_eq!(r, [false, true]);
        let mut woken = Vec::new();
        let mut n = 0;
        let ok = wait_until(
            &[&a, &b],
            Duration::from_millis(10),
            Duration::from_secs(5),
            |r| {
                woken.push(r.to_vec());
                if r[1] {
                    b.read().unwrap();
                }
            },
            || {
                n += 1;
                n == 2
            },
        );
        assert!(ok);
        assert_eq!(woken, [vec![false, true]]);
    }

    #[test]
    fn waiting_gives_up_after_the_timeout() {
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let start = Instant::now();
        let ok = wait_until(
            &[&a],
            Duration::from_millis(5),
            Duration::from_millis(30),
            |_| {},
            || false,
        );
        assert!(!ok);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}

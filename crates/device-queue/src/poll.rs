//! Adaptive polling before sleeping, as QEMU's event loop polls
//! (`poll-max-ns`) and vhost-net busy-polls: a driver that sends its next
//! request soon after a reply gets it seen without the server going to
//! sleep and being woken, which on a VM host costs more than a small request
//! itself. While polling a virtqueue its notifications stay off, so the
//! guest does not even kick.
//!
//! The window grows while requests arrive soon after the server went to
//! sleep, and shrinks while polling finds nothing. The spin yields the CPU
//! to anything else runnable on it, so a driver (or guest vCPU) sharing the
//! CPU is not held up.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default limit: about what waking a sleeping thread on another CPU
/// of a VM costs.
pub const DEFAULT_POLL: Duration = Duration::from_micros(50);

/// One server loop's polling state.
#[derive(Debug, Clone)]
pub struct Poller {
    window: Duration,
    max: Duration,
    slept_at: Option<Instant>,
}

impl Poller {
    /// The smallest window polling grows from.
    const GROW_FROM: Duration = Duration::from_micros(4);

    /// Polling up to `max` (zero: never).
    pub fn new(max: Duration) -> Poller {
        Poller {
            window: Duration::ZERO,
            max,
            slept_at: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Spins until `ready()` or the window passes; true if ready.
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let deadline = Instant::now() + self.window;
        loop {
            if ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // SAFETY: plain syscall without arguments.
            unsafe { libc::sched_yield() };
        }
    }

    /// Learns from one sleep that polling did not avoid: the work came
    /// `blocked` after the server went to sleep, after polling for the
    /// current window (as QEMU's event loop adapts `poll-ns`).
    pub fn learn(&mut self, blocked: Duration) {
        let waited = self.window + blocked;
        if waited <= self.max {
            // A longer window would have caught it.
            self.window = (self.window * 2).max(Self::GROW_FROM).min(self.max);
        } else {
            self.window /= 2;
            if self.window < Self::GROW_FROM {
                self.window = Duration::ZERO;
            }
        }
    }

    /// For a loop whose sleeping is done elsewhere (an epoll loop): the
    /// server goes to sleep now.
    pub fn sleeping(&mut self) {
        self.slept_at = Some(Instant::now());
    }

    /// ... and has been woken: learns from the time since [`Self::sleeping`].
    pub fn woken(&mut self) {
        if let Some(t) = self.slept_at.take() {
            self.learn(t.elapsed());
        }
    }
}

/// Whether `fd` has data to read now.
pub fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) != 0 }
}

/// One [`Poller`] per queue of a device, each used by its queue's worker.
#[derive(Debug)]
pub struct QueuePollers(Vec<Mutex<Poller>>);

impl QueuePollers {
    /// `queues` pollers polling up to `max` (zero: never).
    pub fn new(queues: usize, max: Duration) -> QueuePollers {
        QueuePollers((0..queues).map(|_| Mutex::new(Poller::new(max))).collect())
    }

    /// Queue `q`'s poller (a disabled one for a queue out of range).
    pub fn get(&self, q: usize) -> PollerGuard<'_> {
        match self.0.get(q) {
            Some(m) => PollerGuard::Shared(m.lock().unwrap_or_else(|p| p.into_inner())),
            None => PollerGuard::Off(Poller::new(Duration::ZERO)),
        }
    }
}

/// A queue's poller, borrowed for one kick.
pub enum PollerGuard<'a> {
    /// The queue's own.
    Shared(MutexGuard<'a, Poller>),
    /// No polling.
    Off(Poller),
}

impl std::ops::Deref for PollerGuard<'_> {
    type Target = Poller;
    fn deref(&self) -> &Poller {
        match self {
            PollerGuard::Shared(g) => g,
            PollerGuard::Off(p) => p,
        }
    }
}

impl std::ops::DerefMut for PollerGuard<'_> {
    fn deref_mut(&mut self) -> &mut Poller {
        match self {
            PollerGuard::Shared(g) => g,
            PollerGuard::Off(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_grows_on_quick_arrivals_and_shrinks_when_idle() {
        let max = Duration::from_micros(50);
        let mut p = Poller::new(max);
        // Work arriving soon after the server slept: grow to the limit.
        for _ in 0..10 {
            p.learn(Duration::ZERO);
        }
        assert_eq!(p.window(), max);
        // Polling the whole window and then sleeping past the limit: the
        // wait was longer than polling may be, so shrink.
        p.learn(Duration::from_micros(10));
        assert_eq!(p.window(), max / 2);
        // A wait within the limit (window + sleep): grow again.
        p.learn(Duration::from_micros(10));
        assert_eq!(p.window(), max);
        // An idle driver: shrink to nothing.
        for _ in 0..10 {
            p.learn(Duration::from_millis(5));
        }
        assert_eq!(p.window(), Duration::ZERO);
        // Disabled polling never spins.
        let mut off = Poller::new(Duration::ZERO);
        off.learn(Duration::ZERO);
        assert_eq!(off.window(), Duration::ZERO);
        assert!(!off.spin(|| panic!("must not poll")));
        // sleeping/woken learn the time between. The limit is far above
        // any scheduling delay, so the test does not depend on timing.
        let long = Duration::from_secs(60);
        let mut p = Poller::new(long);
        p.sleeping();
        p.woken();
        assert_eq!(p.window(), Poller::GROW_FROM);
        for _ in 0..40 {
            p.learn(Duration::ZERO);
        }
        assert_eq!(p.window(), long);
        // A spin returns as soon as the work is there.
        let mut calls = 0;
        assert!(p.spin(|| {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        // A spin that never finds work gives up once its window passed.
        let mut short = Poller::new(Duration::from_micros(1));
        short.learn(Duration::ZERO);
        assert!(!short.spin(|| false));
    }
}

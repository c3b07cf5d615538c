//! Measurement: the timing window of a run, the latency samples, and their
//! summary (rate, bandwidth, median and 99th percentile).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// When a run measures: after a warm-up, until a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The run started (set-up done).
    pub begin: Instant,
    /// Completions from here on count.
    pub measure_from: Instant,
    /// Nothing new is submitted from here on.
    pub until: Instant,
}

impl Window {
    /// A window starting now: `warmup` unmeasured, then measured until
    /// `duration` after the start.
    pub fn starting_now(duration: Duration, warmup: Duration) -> Window {
        let begin = Instant::now();
        Window {
            begin,
            measure_from: begin + warmup.min(duration / 2),
            until: begin + duration,
        }
    }

    /// Seconds left until the deadline.
    pub fn left(&self, now: Instant) -> f64 {
        self.until.saturating_duration_since(now).as_secs_f64()
    }
}

/// Latency samples (in ns, to 3 significant digits) and the work they did,
/// inside a [`Window`].
#[derive(Debug, Clone)]
pub struct Recorder {
    window: Window,
    /// The last counted completion (the window's end when the deadline
    /// passed before any operation completed in it).
    end: Instant,
    lat_ns: Histogram<u64>,
    units: u64,
    bytes: u64,
}

impl Recorder {
    /// An empty recorder for `window`.
    pub fn new(window: Window) -> Recorder {
        Recorder {
            window,
            end: window.until,
            lat_ns: Histogram::new_with_max(u64::MAX, 3).expect("valid histogram bounds"),
            units: 0,
            bytes: 0,
        }
    }

    /// Counts an operation that completed at `done` after `latency`, worth
    /// `units` (requests or entries) and `bytes`, if it completed inside the
    /// window. When nothing has been counted by the deadline, the first
    /// completion after it is counted and ends the window (so one slow
    /// operation still yields a figure).
    pub fn record(&mut self, done: Instant, latency: Duration, units: u64, bytes: u64) {
        if done < self.window.measure_from {
            return;
        }
        if done > self.window.until {
            if !self.lat_ns.is_empty() {
                return;
            }
            self.end = done;
        }
        self.lat_ns
            .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.units += units;
        self.bytes += bytes;
    }

    /// Whether new operations should still be started at `now`.
    pub fn keep_going(&self, now: Instant) -> bool {
        now < self.window.until || self.lat_ns.is_empty()
    }

    /// The number of operations counted.
    pub fn count(&self) -> usize {
        self.lat_ns.len() as usize
    }

    /// The figures of the run; nearest-rank percentiles (0 for no samples).
    pub fn summary(self) -> Summary {
        let secs = self
            .end
            .saturating_duration_since(self.window.measure_from)
            .as_secs_f64()
            .max(1e-9);
        Summary {
            ops_per_s: self.units as f64 / secs,
            mib_per_s: self.bytes as f64 / secs / (1024.0 * 1024.0),
            p50_us: self.lat_ns.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: self.lat_ns.value_at_quantile(0.99) as f64 / 1000.0,
            samples: self.lat_ns.len(),
            seconds: secs,
        }
    }
}

/// The latencies of one pass of a tree workload (each request, or each
/// system call for native) and the entries it finished; the pass is timed
/// whole, without a warm-up, less the time spent sampling the server
/// ([`Pass::pause`]).
#[derive(Debug, Clone)]
pub struct Pass {
    started: Instant,
    lat_ns: Histogram<u64>,
    units: u64,
    paused: Duration,
}

impl Pass {
    /// A pass starting now.
    pub fn start() -> Pass {
        Pass {
            started: Instant::now(),
            lat_ns: Histogram::new_with_max(u64::MAX, 3).expect("valid histogram bounds"),
            units: 0,
            paused: Duration::ZERO,
        }
    }

    /// A request that started at `started` has completed now, finishing
    /// `units` entries.
    pub fn op(&mut self, started: Instant, units: u64) {
        let ns = started.elapsed().as_nanos();
        self.lat_ns
            .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
        self.units += units;
    }

    /// Leaves `d` (spent on something else than the pass) out of its time.
    pub fn pause(&mut self, d: Duration) {
        self.paused += d;
    }

    /// Entries finished so far.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.lat_ns.len()
    }

    /// The pass's time so far, less the pauses.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.paused)
    }

    /// The figures of the pass ending now: entries per second over its
    /// time, latencies per request (nearest rank; 0 for none).
    pub fn summary(&self) -> Summary {
        let secs = self.elapsed().as_secs_f64().max(1e-9);
        Summary {
            ops_per_s: self.units as f64 / secs,
            mib_per_s: 0.0,
            p50_us: self.lat_ns.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: self.lat_ns.value_at_quantile(0.99) as f64 / 1000.0,
            samples: self.lat_ns.len(),
            seconds: secs,
        }
    }
}

impl crate::session::Probe for Pass {
    fn op(&mut self, started: Instant, units: u64) {
        Pass::op(self, started, units);
    }
}

/// The figures of one (server, engine, workload) run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Operations per second (requests, composite operations or directory
    /// entries: see [`crate::workload::Workload::unit`]).
    pub ops_per_s: f64,
    /// Payload MiB per second (0 for metadata workloads).
    pub mib_per_s: f64,
    /// Median latency of one operation, µs.
    pub p50_us: f64,
    /// 99th percentile latency of one operation, µs.
    pub p99_us: f64,
    /// Operations measured.
    pub samples: u64,
    /// Length of the measured window, s.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures of a recorder that counted these latencies (ns).
    fn summary_of(lat_ns: impl IntoIterator<Item = u64>) -> Summary {
        let w = Window::starting_now(Duration::from_secs(2), Duration::from_secs(1));
        let mut r = Recorder::new(w);
        for ns in lat_ns {
            r.record(w.measure_from, Duration::from_nanos(ns), 1, 0);
        }
        r.summary()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = |s: Summary| (s.p50_us, s.p99_us);
        assert_eq!(p(summary_of(1..=100)), (0.05, 0.099));
        assert_eq!(p(summary_of([7])), (0.007, 0.007));
        assert_eq!(p(summary_of([])), (0.0, 0.0));
        assert_eq!(p(summary_of([10, 20])), (0.01, 0.02));
        // From 2048 ns on, within 3 significant digits of the exact sample.
        let v: Vec<u64> = (1..=10_000).map(|i| 1000 + 7 * i * i).collect();
        let s = summary_of(v.iter().copied());
        for (got, exact) in [(s.p50_us, v[4999]), (s.p99_us, v[9899])] {
            let exact = exact as f64 / 1e3;
            assert!(
                got >= exact && got - exact <= exact / 1e3,
                "{got} vs {exact}"
            );
        }
    }

    #[test]
    fn only_completions_inside_the_window_count() {
        let w = Window::starting_now(Duration::from_secs(2), Duration::from_secs(1));
        let mut r = Recorder::new(w);
        let us = Duration::from_micros;
        r.record(w.begin + us(10), us(5), 1, 4096); // warm-up
        r.record(w.measure_from + us(1), us(2), 1, 4096);
        r.record(w.measure_from + us(2), us(4), 1, 4096);
        r.record(w.until + us(1), us(100), 1, 4096); // after the deadline
        assert_eq!(r.count(), 2);
        assert!(!r.keep_going(w.until));
        let s = r.summary();
        assert_eq!(s.samples, 2);
        assert!((s.ops_per_s - 2.0).abs() < 1e-6, "{s:?}");
        assert!((s.mib_per_s - 8192.0 / 1048576.0).abs() < 1e-9);
        // To 3 significant digits, 4000 ns is 4001 ns.
        assert_eq!((s.p50_us, s.p99_us), (2.0, 4.001));
    }

    #[test]
    fn a_pass_counts_entries_and_requests_without_its_pauses() {
        let mut p = Pass::start();
        let t0 = Instant::now();
        p.op(t0, 0);
        p.op(t0, 1);
        p.op(t0, 1);
        assert_eq!((p.units(), p.requests()), (2, 3));
        p.pause(Duration::from_secs(3600));
        assert_eq!(p.elapsed(), Duration::ZERO, "pauses never make it negative");
        let s = p.summary();
        assert_eq!((s.samples, s.mib_per_s), (3, 0.0));
        assert!(s.ops_per_s > 0.0 && s.p99_us >= s.p50_us);
    }

    #[test]
    fn a_slow_operation_past_the_deadline_still_counts_when_alone() {
        let w = Window::starting_now(Duration::from_secs(2), Duration::from_secs(1));
        let mut r = Recorder::new(w);
        assert!(r.keep_going(w.until + Duration::from_secs(1)));
        r.record(
            w.until + Duration::from_secs(1),
            Duration::from_secs(2),
            10,
            0,
        );
        let s = r.summary();
        assert_eq!(s.samples, 1);
        assert!((s.seconds - 2.0).abs() < 1e-6);
        assert!((s.ops_per_s - 5.0).abs() < 1e-6);
    }
}

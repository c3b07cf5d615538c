//! Measurement: the timing window of a run, the latency samples, and their
//! summary (rate, bandwidth, median and 99th percentile).

use std::time::{Duration, Instant};

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

/// Latency samples and the work they did, inside a [`Window`].
#[derive(Debug, Clone)]
pub struct Recorder {
    window: Window,
    /// The last counted completion (the window's end when the deadline
    /// passed before any operation completed in it).
    end: Instant,
    lat_ns: Vec<u64>,
    units: u64,
    bytes: u64,
}

impl Recorder {
    /// An empty recorder for `window`.
    pub fn new(window: Window) -> Recorder {
        Recorder {
            window,
            end: window.until,
            lat_ns: Vec::with_capacity(1 << 16),
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
        self.lat_ns.push(latency.as_nanos() as u64);
        self.units += units;
        self.bytes += bytes;
    }

    /// Whether new operations should still be started at `now`.
    pub fn keep_going(&self, now: Instant) -> bool {
        now < self.window.until || self.lat_ns.is_empty()
    }

    /// The number of operations counted.
    pub fn count(&self) -> usize {
        self.lat_ns.len()
    }

    /// The figures of the run.
    pub fn summary(mut self) -> Summary {
        let secs = self
            .end
            .saturating_duration_since(self.window.measure_from)
            .as_secs_f64()
            .max(1e-9);
        self.lat_ns.sort_unstable();
        Summary {
            ops_per_s: self.units as f64 / secs,
            mib_per_s: self.bytes as f64 / secs / (1024.0 * 1024.0),
            p50_us: percentile(&self.lat_ns, 50.0) as f64 / 1000.0,
            p99_us: percentile(&self.lat_ns, 99.0) as f64 / 1000.0,
            samples: self.lat_ns.len() as u64,
            seconds: secs,
        }
    }
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by the nearest-rank
/// method: the smallest sample with at least p% of the samples at or below
/// it. 0 for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.1), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let two = [10, 20];
        assert_eq!(percentile(&two, 50.0), 10);
        assert_eq!(percentile(&two, 99.0), 20);
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
        assert_eq!((s.p50_us, s.p99_us), (2.0, 4.0));
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

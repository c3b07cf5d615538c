//! fsbench: throughput and latency of this project's file servers against
//! their peers and against the machine's own limit.
//!
//! Every virtio-fs server (virtiofsd-rs with each I/O engine, upstream
//! virtiofsd) is driven over vhost-user by vmm-mini's driver-side harness
//! ([`vfs`]), so each sees the same FUSE requests in the same guest-memory
//! layout, the one Linux's virtio-fs driver produces. Every 9P server (p9d,
//! diod) is driven over a unix socket by one 9P2000.L client ([`p9client`]).
//! **native** ([`native`]) does the same operations as direct syscalls in
//! the benchmark process: the physical limit.
//!
//! - [`workload`]: the twelve workloads and their offsets;
//! - [`tree`]: the trees of the tree workloads, generated from a seed;
//! - [`gitstatus`]: `git-status`, the real `git status` through
//!   virtiofsd-rs's host FUSE mount, once per run;
//! - [`fixture`]: the scratch directory all servers share;
//! - [`daemon`]: server processes and their logs;
//! - [`session`]: what the measuring loops need from a server;
//! - [`stats`]: the measuring window, latencies and percentiles;
//! - [`runner`]: one fresh server per (target, workload), progress line;
//! - [`report`]: the table, JSON, SVG chart and the targets;
//! - [`affinity`]: `--pin`, where fsbench and the server run;
//! - [`cli`]: the command line.
//!
//! `fsbench --quick` proves the tool works in about two minutes and
//! asserts no speed; `docs/benchmarks/README.md` has a full run.

#![deny(missing_docs)]

pub mod affinity;
pub mod cli;
pub mod daemon;
pub mod fixture;
pub mod gitstatus;
pub mod native;
pub mod p9client;
pub mod report;
pub mod runner;
pub mod session;
pub mod stats;
pub mod tree;
pub mod vfs;
pub mod workload;

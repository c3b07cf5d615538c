//! Where the benchmark and the server run: `--pin`.
//!
//! On a virtual machine, waking a thread on another, idle vCPU can cost tens
//! of microseconds (the hypervisor must wake the vCPU), which then dominates
//! every request-response and hides what the servers themselves cost.
//! Pinning makes the placement explicit and repeatable:
//! - `none`: the scheduler decides (threads usually spread over idle CPUs);
//! - `shared`: fsbench and the server on one CPU (every hand-off is a local
//!   context switch; what is measured is the CPU time of a request);
//! - `split` (the default): fsbench (the "guest") on the first allowed CPU,
//!   the server on the others (every hand-off crosses CPUs, as between a
//!   vCPU and its host daemon); with one CPU allowed, `shared`.

use std::io;

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Pin {
    /// Leave placement to the scheduler.
    None,
    /// fsbench and the server on the same CPU.
    Shared,
    /// fsbench on one CPU, the server on the others.
    #[default]
    Split,
}

impl Pin {
    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Pin::None => "none",
            Pin::Shared => "shared",
            Pin::Split => "split",
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: reading bits of an initialised set, within CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// A `cpu_set_t` holding `cpus`.
pub fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET on a valid set; out-of-range CPUs are ignored by
        // the macro's bounds check in libc.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Binds the calling thread (and what it later spawns) to `set`.
pub fn bind(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs of each side; `None` leaves a side unbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// fsbench (and so native).
    pub bench: Option<Vec<usize>>,
    /// The server processes.
    pub server: Option<Vec<usize>>,
}

/// The placement `pin` asks for, from the `allowed` CPUs.
pub fn plan(pin: Pin, allowed: &[usize]) -> Result<Placement, String> {
    let p = |bench, server| Placement {
        bench: Some(bench),
        server: Some(server),
    };
    match pin {
        Pin::None => Ok(Placement {
            bench: None,
            server: None,
        }),
        Pin::Shared => {
            let c = *allowed.last().ok_or("no CPU allowed")?;
            Ok(p(vec![c], vec![c]))
        }
        Pin::Split if allowed.len() < 2 => plan(Pin::Shared, allowed),
        Pin::Split => Ok(p(vec![allowed[0]], allowed[1..].to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_place_the_sides() {
        let cpus = [0, 1, 2];
        let at = |pin| {
            let p = plan(pin, &cpus).unwrap();
            (p.bench, p.server)
        };
        assert_eq!(at(Pin::None), (None, None));
        assert_eq!(at(Pin::Shared), (Some(vec![2]), Some(vec![2])));
        assert_eq!(at(Pin::Split), (Some(vec![0]), Some(vec![1, 2])));
        let one = plan(Pin::Split, &[3]).unwrap();
        assert_eq!(
            (one.bench, one.server),
            (Some(vec![3]), Some(vec![3])),
            "one CPU: shared"
        );
        assert!(plan(Pin::Shared, &[]).is_err());
    }

    #[test]
    fn this_process_has_cpus_and_a_set_round_trips() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        let set = cpu_set(&cpus[..1]);
        // SAFETY: reading a bit of an initialised set.
        assert!(unsafe { libc::CPU_ISSET(cpus[0], &set) });
    }
}

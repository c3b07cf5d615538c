//! The device models behind the virtio-mmio transport: any
//! `VhostUserBackend` run in-process (our virtio-fs and virtio-9p devices,
//! linked as libraries), and a vhost-user frontend to a backend in another
//! process (`virtiofsd-rs`, upstream virtiofsd, `p9d`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use log::warn;
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio_mmio::{DeviceError, GuestMem, QueueConfig, VirtioDevice};
use virtio_driver::{VhostUserConn, VringSetup};

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// virtio device id of a 9P transport.
pub const VIRTIO_ID_9P: u32 = 9;
/// Length of virtio-fs's tag field.
pub const FS_TAG_LEN: usize = 36;
/// Queue size vmm-mini offers a vhost-user backend.
pub const VHOST_USER_QUEUE_SIZE: u16 = 1024;

/// `struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }`.
pub fn fs_config(tag: &str, request_queues: usize) -> Vec<u8> {
    let mut c = vec![0u8; FS_TAG_LEN + 4];
    let n = tag.len().min(FS_TAG_LEN);
    c[..n].copy_from_slice(&tag.as_bytes()[..n]);
    c[FS_TAG_LEN..].copy_from_slice(&(request_queues as u32).to_le_bytes());
    c
}

/// `struct virtio_9p_config { le16 tag_len; u8 tag[]; }`.
pub fn p9_config(tag: &str) -> Vec<u8> {
    let mut c = (tag.len() as u16).to_le_bytes().to_vec();
    c.extend_from_slice(tag.as_bytes());
    c
}

/// A `File` that owns a duplicate of `fd` (the vring takes ownership).
fn dup_file(fd: &impl AsRawFd) -> io::Result<File> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new descriptor
    // that nobody else owns.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(new) })
}

type Backend = dyn VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Send + Sync;

/// A `VhostUserBackend` served in this process: the transport's kicks wake
/// one worker thread per entry of the backend's `queues_per_thread()`, each
/// calling `handle_event` as vhost-user-backend's daemon would.
pub struct InProcess {
    backend: Arc<Backend>,
    device_type: u32,
    config: Vec<u8>,
    workers: Vec<(EventNotifier, JoinHandle<()>)>,
}

impl InProcess {
    /// Serves `backend` as device `device_type` with `config` as its config
    /// space.
    pub fn new(backend: Arc<Backend>, device_type: u32, config: Vec<u8>) -> InProcess {
        InProcess {
            backend,
            device_type,
            config,
            workers: Vec::new(),
        }
    }

    fn stop_workers(&mut self) {
        for (exit, worker) in self.workers.drain(..) {
            if let Err(e) = exit.notify() {
                warn!("in-process device: cannot stop a worker: {e}");
                continue;
            }
            let _ = worker.join();
        }
    }
}

/// One worker thread: waits for the kicks of `queues` (the ready ones of
/// `mask`) and calls `handle_event` as vhost-user-backend does, with the
/// vrings of `mask` only and each event numbered by its queue's position
/// among them.
fn worker(
    backend: Arc<Backend>,
    vrings: Arc<Vec<VringRwLock>>,
    mask: u64,
    queues: Vec<usize>,
    thread: usize,
    exit: EventConsumer,
) {
    let thread_vrings: Vec<VringRwLock> = (0..vrings.len())
        .filter(|q| mask & (1 << q) != 0)
        .map(|q| vrings[q].clone())
        .collect();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return warn!("in-process device worker {thread}: epoll: {e}"),
    };
    let exit_token = u64::MAX;
    let add = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    if let Err(e) = add(exit.as_raw_fd(), exit_token) {
        return warn!("in-process device worker {thread}: epoll: {e}");
    }
    for &q in &queues {
        let fd = match vrings[q].get_ref().get_kick() {
            Some(k) => k.as_raw_fd(),
            None => continue,
        };
        if let Err(e) = add(fd, q as u64) {
            return warn!("in-process device worker {thread}: epoll: {e}");
        }
    }
    let mut events = vec![EpollEvent::default(); queues.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return warn!("in-process device worker {thread}: epoll_wait: {e}"),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == exit_token {
                let _ = exit.consume();
                return;
            }
            let q = token as usize;
            match vrings[q].read_kick() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!("in-process device: queue {q}: reading the kick: {e}");
                    continue;
                }
            }
            let Some(event) = device_queue::event_of_queue(&[mask], 0, q) else {
                continue;
            };
            if let Err(e) = backend.handle_event(event, EventSet::IN, &thread_vrings, thread) {
                warn!("in-process device: queue {q}: {e}");
            }
        }
    }
}

impl VirtioDevice for InProcess {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let max = self.backend.max_queue_size().min(u16::MAX as usize / 2 + 1) as u16;
        vec![max; self.backend.num_queues()]
    }

    fn features(&self) -> u64 {
        self.backend.features() & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), DeviceError> {
        let event_idx = acked & (1 << 29) != 0;
        let max = self.backend.max_queue_size() as u16;
        let mut vrings = Vec::with_capacity(queues.len());
        for (index, q) in queues.iter().enumerate() {
            let bad = |reason: String| DeviceError::BadQueue { index, reason };
            let v = VringRwLock::new(mem.clone(), max).map_err(|e| bad(e.to_string()))?;
            if q.ready {
                v.set_queue_size(q.size);
                v.set_queue_info(q.desc, q.avail, q.used)
                    .map_err(|e| bad(e.to_string()))?;
                v.set_queue_event_idx(event_idx);
                v.set_queue_ready(true);
                v.set_enabled(true);
                v.set_kick(Some(dup_file(&kicks[index])?));
                v.set_call(Some(dup_file(&calls[index])?));
            }
            vrings.push(v);
        }
        self.backend.acked_features(acked);
        self.backend.set_event_idx(event_idx);
        self.backend
            .update_memory(mem)
            .map_err(|e| DeviceError::Memory(e.to_string()))?;
        let vrings = Arc::new(vrings);
        for (thread, mask) in self.backend.queues_per_thread().into_iter().enumerate() {
            let mine: Vec<usize> = (0..queues.len())
                .filter(|q| mask & (1 << q) != 0 && queues[*q].ready)
                .collect();
            let Some((consumer, notifier)) = self.backend.exit_event(thread) else {
                return Err(DeviceError::Io(io::Error::other(format!(
                    "backend has no exit event for worker {thread}"
                ))));
            };
            let (b, v) = (self.backend.clone(), vrings.clone());
            let handle = std::thread::Builder::new()
                .name(format!("vmm-dev{}-q{thread}", self.device_type))
                .spawn(move || worker(b, v, mask, mine, thread, consumer))?;
            self.workers.push((notifier, handle));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        self.backend.reset_device();
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// A device whose queues a vhost-user backend in another process serves.
pub struct VhostUser {
    conn: VhostUserConn,
    device_type: u32,
    queues: usize,
    config: Vec<u8>,
}

impl VhostUser {
    /// Connects to the backend at `socket` for a device of `device_type`
    /// with `queues` queues and `config` as its config space (a VMM-side
    /// property, as in QEMU: the tag comes from vmm-mini's command line).
    pub fn connect(
        socket: &Path,
        device_type: u32,
        queues: usize,
        config: Vec<u8>,
    ) -> Result<VhostUser, DeviceError> {
        Ok(VhostUser {
            conn: VhostUserConn::connect(socket, queues)?,
            device_type,
            queues,
            config,
        })
    }
}

impl VirtioDevice for VhostUser {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VHOST_USER_QUEUE_SIZE; self.queues]
    }

    fn features(&self) -> u64 {
        self.conn.offered()
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), DeviceError> {
        // A vhost-user backend serves queues 0..n; the guest's drivers set
        // them all up.
        let ready = queues.iter().take_while(|q| q.ready).count();
        let setups: Vec<VringSetup<'_>> = queues[..ready]
            .iter()
            .zip(kicks.iter().zip(calls))
            .map(|(q, (kick, call))| VringSetup {
                size: q.size,
                desc: GuestAddress(q.desc),
                avail: GuestAddress(q.avail),
                used: GuestAddress(q.used),
                kick,
                call,
            })
            .collect();
        self.conn.start(&mem.memory(), acked, &setups)?;
        Ok(())
    }

    fn reset(&mut self) {
        if let Err(e) = self.conn.stop() {
            warn!(
                "vhost-user device {}: stopping the rings: {e}",
                self.device_type
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layouts() {
        let c = fs_config("myfs", 2);
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..4], b"myfs");
        assert!(c[4..36].iter().all(|b| *b == 0));
        assert_eq!(&c[36..], &2u32.to_le_bytes());
        assert_eq!(p9_config("share"), b"\x05\x00share".to_vec());
    }
}

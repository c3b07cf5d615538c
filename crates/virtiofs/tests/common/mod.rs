//! Plumbing shared by the tests that drive a [`VirtioFsBackend`] in-process
//! from the driver's side (`device.rs`, `record.rs`).

use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtiofs::VirtioFsBackend;
use vmm_sys_util::epoll::EventSet;

/// Kicks `queue` of `dev` as vhost-user-backend does: on the worker thread
/// whose mask has the queue, with only that thread's vrings (taken from
/// `vrings`, which holds every queue's), the event numbered among them.
///
/// # Panics
/// When no worker thread serves `queue`, or `handle_event` fails.
pub fn kick(dev: &VirtioFsBackend, vrings: &[VringRwLock], queue: usize) {
    let masks = dev.queues_per_thread();
    let thread = masks
        .iter()
        .position(|m| (m >> queue) & 1 == 1)
        .expect("every queue has a worker thread");
    let mine: Vec<VringRwLock> = (0..vrings.len())
        .filter(|q| (masks[thread] >> q) & 1 == 1)
        .map(|q| vrings[q].clone())
        .collect();
    let event = device_queue::event_of_queue(&masks, thread, queue).expect("its thread's queue");
    dev.handle_event(event, EventSet::IN, &mine, thread)
        .expect("handle_event must not fail on guest input");
}

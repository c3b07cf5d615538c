//! Open files and directories, by the handle number given to the guest.
//!
//! A data-path engine (the io_uring engine, 9P's inline path) obtains a
//! handle through `PassthroughFs::data_handle` (which applies the read-only
//! rule) and its host fd with [`HandleData::as_raw_fd`] while holding the `Arc`, so
//! the fd stays open until the submission completes even if the guest releases
//! the handle meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// One open file or directory.
pub struct HandleData {
    /// The node id the handle was opened on.
    pub inode: u64,
    file: File,
    /// Serialises `lseek` + `getdents` on directory handles.
    dir_lock: Mutex<()>,
}

impl HandleData {
    /// The open host file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Locks the directory stream position for a readdir.
    pub fn lock_dir(&self) -> MutexGuard<'_, ()> {
        self.dir_lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsRawFd for HandleData {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The handles of one session.
pub struct HandleTable {
    map: RwLock<HashMap<u64, Arc<HandleData>>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            map: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    /// Stores `file`, opened on `inode`, and returns its new handle number.
    pub fn insert(&self, inode: u64, file: File) -> u64 {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(HandleData {
            inode,
            file,
            dir_lock: Mutex::new(()),
        });
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle, data);
        handle
    }

    /// The handle `handle`, which must have been opened on `inode`; `EBADF` otherwise.
    pub fn get(&self, inode: u64, handle: u64) -> io::Result<Arc<HandleData>> {
        match self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle)
        {
            Some(h) if h.inode == inode => Ok(h.clone()),
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Removes `handle` if it belongs to `inode`; `EBADF` otherwise.
    pub fn remove(&self, inode: u64, handle: u64) -> io::Result<()> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get(&handle) {
            Some(h) if h.inode == inode => {
                map.remove(&handle);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Closes every handle (session end).
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many handles are open.
    #[allow(clippy::len_without_is_empty)] // a count for diagnostics
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

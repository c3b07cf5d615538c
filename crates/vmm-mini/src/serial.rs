//! The 8250/16550 UART at COM1 (vm-superio's model): guest output to a
//! writer (stdout by default), host input from stdin, interrupt through an
//! irqfd.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt line by writing its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART as the I/O bus sees it.
pub type Uart = Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;

/// Feeds `input` to the UART until it ends (EOF or an error), waiting while
/// the guest has not drained the receive FIFO.
pub fn pump_input(uart: Arc<Mutex<Uart>>, mut input: impl Read) {
    let mut buf = [0u8; 64];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = {
                let mut u = uart.lock().unwrap_or_else(|p| p.into_inner());
                let room = u.fifo_capacity().min(rest.len());
                if room > 0 {
                    u.enqueue_raw_bytes(&rest[..room]).unwrap_or(0)
                } else {
                    0
                }
            };
            rest = &rest[taken..];
            if taken == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Puts a terminal on stdin in raw mode (the guest's line discipline does the
/// echoing and editing) and restores it when dropped. A no-op when stdin is
/// not a terminal.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal.
    pub fn enter() -> RawTerminal {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty on a valid descriptor number has no side effects.
        if unsafe { libc::isatty(fd) } != 1 {
            return RawTerminal { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and `t` a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return RawTerminal { saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: applying a termios derived from the terminal's own.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the settings read in `enter`.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_input_the_guest() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let uart: Uart = Serial::new(
            IrqTrigger(irq.try_clone().unwrap()),
            Box::new(out.clone()) as Box<dyn Write + Send>,
        );
        let uart = Arc::new(Mutex::new(uart));
        for b in b"hi\n" {
            uart.lock().unwrap().write(0, *b).unwrap();
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Enable the received-data interrupt (IER bit 0), then type.
        uart.lock().unwrap().write(1, 1).unwrap();
        pump_input(uart.clone(), &b"ls\n"[..]);
        assert!(irq.read().unwrap() >= 1);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(uart.lock().unwrap().read(0));
        }
        assert_eq!(got, b"ls\n");
    }
}

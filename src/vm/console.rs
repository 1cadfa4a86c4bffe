//! `kubestick vm console NODE`: the node's serial console in this terminal, in both
//! directions (raw mode, so keys such as Ctrl-C go to the node). Ctrl-] leaves.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};

/// Ctrl-], as telnet and virsh use it.
const ESCAPE: u8 = 0x1d;

/// The terminal's settings before raw mode, put back however the console ends.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }

    fn restore(&self) {
        // SAFETY: puts back the settings read in `enter`.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

pub fn attach(socket: &Path, node: &str) -> Result<()> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach {node}'s serial console at {} (is it running? `kubestick vm start {node}`; \
             only one console can be attached at a time)",
            socket.display()
        )
    })?;
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "Connected to {node}'s serial console{}.\r",
        if interactive {
            "; press Enter for a prompt, Ctrl-] to leave"
        } else {
            ""
        }
    );
    let raw = Arc::new(Mutex::new(if interactive { RawMode::enter() } else { None }));

    let mut from_vm = stream.try_clone()?;
    let raw_out = Arc::clone(&raw);
    let node_name = node.to_string();
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                break;
            }
        }
        if let Some(r) = raw_out.lock().expect("console lock").as_ref() {
            r.restore();
        }
        eprintln!("\r\n[{node_name} closed its console: the VM stopped]");
        std::process::exit(0);
    });

    let mut to_vm = stream;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if interactive && let Some(i) = chunk.iter().position(|&b| b == ESCAPE) {
            to_vm.write_all(&chunk[..i])?;
            break;
        }
        to_vm.write_all(chunk)?;
    }
    if !interactive {
        // Piped input: give the node a moment to answer the last line before leaving.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    if let Some(r) = raw.lock().expect("console lock").as_ref() {
        r.restore();
    }
    eprintln!("\r\n[left {node}'s console; it keeps running]");
    Ok(())
}

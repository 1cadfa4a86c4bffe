//! Background processes (QEMU, the hub) tracked by pid files. A pid counts as ours only if
//! that process's command line mentions the file or socket it was started for, so a pid
//! reused by an unrelated process after a crash is never signalled.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub fn read_pid(pidfile: &Path) -> Option<i32> {
    fs::read_to_string(pidfile).ok()?.trim().parse().ok().filter(|&p| p > 0)
}

/// True while `pid` runs with `marker` somewhere in its command line (a zombie has none).
pub fn is_ours(pid: i32, marker: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    !marker.is_empty() && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// The pid recorded in `pidfile`, if that process still runs as ours.
pub fn running(pidfile: &Path, marker: &Path) -> Option<i32> {
    read_pid(pidfile).filter(|&pid| is_ours(pid, marker))
}

/// Sends `signal` to `pid` and waits up to `timeout` for it to go away.
pub fn signal_and_wait(pid: i32, marker: &Path, signal: i32, timeout: Duration) -> bool {
    // SAFETY: kill(2) with a pid we checked is ours; no memory is involved.
    unsafe {
        libc::kill(pid, signal);
    }
    wait_gone(pid, marker, timeout)
}

pub fn wait_gone(pid: i32, marker: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while is_ours(pid, marker) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Stops the process in `pidfile` (SIGKILL: no chance to clean up, like pulling the plug)
/// and removes the pid file. Returns whether one was running.
pub fn kill(pidfile: &Path, marker: &Path) -> Result<bool> {
    let was = match running(pidfile, marker) {
        Some(pid) => {
            if !signal_and_wait(pid, marker, libc::SIGKILL, Duration::from_secs(10)) {
                bail!("process {pid} ({}) did not exit after SIGKILL", pidfile.display());
            }
            true
        }
        None => false,
    };
    let _ = fs::remove_file(pidfile);
    Ok(was)
}

/// Runs QEMU with `-daemonize`: its first process exits once the VM is set up (or failed to
/// be), so errors in the command line or the files surface here, with QEMU's own message.
pub fn run_qemu_daemon(qemu: &Path, args: &[OsString], what: &str) -> Result<()> {
    // A file, not a pipe, for stderr: the daemon keeps its descriptors until it redirects
    // them, and reading a pipe to its end would wait for that.
    let err = tempfile::tempfile()?;
    let status = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?)
        .status()
        .with_context(|| {
            format!(
                "running {} (install QEMU: apt-get install qemu-system-x86 qemu-utils, or give --qemu)",
                qemu.display()
            )
        })?;
    let message = read_all(err);
    if !status.success() {
        bail!(
            "QEMU could not start {what} ({status}): {}\n  command: {} {}",
            message.trim(),
            qemu.display(),
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

fn read_all(mut f: fs::File) -> String {
    use std::io::{Read as _, Seek as _};
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut s);
    s
}

/// Starts `cmd` detached from this terminal (own session, stdin closed, output to `log`)
/// and returns its pid. Used for the hub, which must outlive `kubestick vm up`.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<i32> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_ours_only_with_the_marker_in_its_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("thing.pid");
        let log = dir.path().join("log");
        let mut cmd = Command::new("sleep");
        cmd.arg("30").env("IGNORED", &marker);
        // `sleep 30` does not mention the marker; `sh -c 'sleep 30' MARKER` does.
        let other = spawn_detached(&mut cmd, &log).unwrap();
        assert!(!is_ours(other, &marker));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("sleep 30").arg(&marker);
        let ours = spawn_detached(&mut cmd, &log).unwrap();
        fs::write(&marker, format!("{ours}\n")).unwrap();
        assert_eq!(running(&marker, &marker), Some(ours));

        assert!(kill(&marker, &marker).unwrap());
        assert!(!marker.exists());
        assert!(!kill(&marker, &marker).unwrap(), "nothing left to stop");
        // SAFETY: cleaning up the unrelated child started above.
        unsafe {
            libc::kill(other, libc::SIGKILL);
        }
    }

    #[test]
    fn a_failing_qemu_reports_its_message_and_command() {
        let err = run_qemu_daemon(
            Path::new("sh"),
            &["-c".into(), "echo no such file >&2; exit 1".into()],
            "optiplex-1",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("could not start optiplex-1") && msg.contains("no such file"),
            "{msg}"
        );
        let err = run_qemu_daemon(Path::new("/nonexistent/qemu"), &[], "x").unwrap_err();
        assert!(err.to_string().contains("install QEMU"), "{err}");
    }
}

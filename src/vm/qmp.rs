//! Just enough of QEMU's machine protocol (QMP) to press a VM's power button, so
//! `kubestick vm down` shuts the guests down cleanly, as a person would.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Sends an ACPI power button press to the VM behind `socket`.
pub fn powerdown(socket: &Path) -> Result<()> {
    let stream = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    if !line.contains("\"QMP\"") {
        bail!("{} did not greet like QMP: {line:?}", socket.display());
    }
    for command in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\":\"{command}\"}}")?;
        // Events may come first; the answer is the next line with "return" or "error".
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed {} before answering {command}", socket.display());
            }
            let reply: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if reply.get("return").is_some() {
                break;
            }
            if let Some(e) = reply.get("error") {
                bail!("QEMU refused {command}: {e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in QEMU that answers like QMP, with an event in between, and records commands.
    #[test]
    fn presses_the_power_button() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut got = Vec::new();
            for reply in [r#"{"return": {}}"#, r#"{"event": "POWERDOWN", "timestamp": {}}"#] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                got.push(line.trim().to_string());
                writeln!(w, "{reply}").unwrap();
            }
            writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
            got
        });
        powerdown(&socket).unwrap();
        assert_eq!(
            server.join().unwrap(),
            [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"system_powerdown"}"#]
        );
    }
}

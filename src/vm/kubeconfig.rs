//! A kubeconfig for the host: the admin kubeconfig `kubestick build` wrote, with the server
//! moved to the forwarded port on 127.0.0.1. `tls-server-name` keeps certificate checks
//! strict: the API server's certificate names the virtual IP, not 127.0.0.1.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Rewrites the `server:` line of `admin_conf` (as the renderer writes it) and adds
/// `tls-server-name:` beside it.
pub fn for_host(admin_conf: &str, vip: Ipv4Addr, api_port: u16, host_port: u16) -> Result<String> {
    let server = format!("server: https://{vip}:{api_port}");
    let mut out = String::new();
    let mut found = false;
    for line in admin_conf.lines() {
        if line.trim() == server {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}server: https://127.0.0.1:{host_port}\n"));
            out.push_str(&format!("{indent}tls-server-name: {vip}\n"));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        bail!("the admin kubeconfig has no `{server}` line: was it written by `kubestick build`?");
    }
    Ok(out)
}

/// Writes `dest` (0600: it holds the admin's key) from `OUT/admin.conf`.
pub fn write(out_dir: &Path, dest: &Path, vip: Ipv4Addr, api_port: u16, host_port: u16) -> Result<()> {
    let src = out_dir.join("admin.conf");
    let text = std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let text = for_host(&text, vip, api_port, host_port).with_context(|| src.display().to_string())?;
    crate::fsx::write_atomic(dest, text.as_bytes(), crate::fsx::SECRET_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: rehearsal\n  cluster:\n    \
                         server: https://10.77.0.10:6443\n    certificate-authority-data: Q0E=\nusers: []\n";

    #[test]
    fn points_at_the_forward_and_keeps_verifying_the_vip() {
        let text = for_host(ADMIN, Ipv4Addr::new(10, 77, 0, 10), 6443, 40001).unwrap();
        assert_eq!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rehearsal\n  cluster:\n    \
             server: https://127.0.0.1:40001\n    tls-server-name: 10.77.0.10\n    \
             certificate-authority-data: Q0E=\nusers: []\n"
        );
    }

    #[test]
    fn refuses_a_kubeconfig_for_another_address() {
        let err = for_host(ADMIN, Ipv4Addr::new(10, 77, 0, 99), 6443, 40001).unwrap_err();
        assert!(err.to_string().contains("server: https://10.77.0.99:6443"), "{err}");
    }

    #[test]
    fn the_written_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.conf"), ADMIN).unwrap();
        let dest = dir.path().join("kubeconfig");
        write(dir.path(), &dest, Ipv4Addr::new(10, 77, 0, 10), 6443, 40001).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

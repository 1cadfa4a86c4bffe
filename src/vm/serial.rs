//! What a node's serial log says about it. The log holds every boot of the node: lines
//! kubestick vm writes when it powers the node on, the kernel's, systemd's, the journal's
//! (forwarded to the console in VMs), and the node's own reports:
//!
//! ```text
//! kubestick: node=optiplex-1 role=control-plane lan0=10.77.0.21/24 root=15000MiB disks=ata-...
//! kubestick: storage    done: ... is empty: nothing to clear, rook will use it
//! kubestick: bootstrap  running (journalctl -u kubestick-bootstrap.service)
//! ```

/// The first-boot steps in the order they run.
pub const STEPS: [&str; 5] = ["prepare", "images", "storage", "bootstrap", "addons"];

/// How the node's status unit words a step's state (templates/firstboot/status).
const STATES: [&str; 5] = ["done", "running", "FAILED", "waiting", "applied by"];

/// Written into the serial log by `kubestick vm` each time it powers a node on.
pub const POWER_ON: &str = "[kubestick vm] power on:";

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Kernel boots seen (guest reboots and power cycles).
    pub boots: usize,
    /// The node's identity line from the current boot, if it has printed it yet.
    pub report: Option<String>,
    /// The latest state each step reported, over all boots (a finished step stays finished:
    /// later boots skip it).
    pub steps: Vec<(String, String)>,
    /// The step messages from the journal (e.g. `kubestick-storage: cleared ...`), last first.
    pub last_message: Option<String>,
}

impl Summary {
    pub fn step(&self, name: &str) -> Option<&str> {
        self.steps.iter().find(|(s, _)| s == name).map(|(_, v)| v.as_str())
    }

    /// The first step not finished yet ("bootstrap: running (...)"), or "all steps done".
    pub fn progress(&self) -> String {
        if self.steps.is_empty() {
            return "-".to_string();
        }
        let finished = |state: &str| state.starts_with("done") || state.starts_with("applied by");
        STEPS
            .iter()
            .find_map(|s| match self.step(s) {
                Some(state) if finished(state) => None,
                Some(state) => Some(format!("{s}: {state}")),
                None => Some(format!("{s}: -")),
            })
            .unwrap_or_else(|| "all steps done".to_string())
    }
}

/// Removes terminal escape sequences (systemd colours its status lines) and carriage returns.
pub fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn summarize(log: &str) -> Summary {
    let mut s = Summary::default();
    let mut steps: Vec<(String, String)> = Vec::new();
    for raw in log.lines() {
        let line = clean(raw);
        if line.contains("] Linux version ") || line.starts_with("Linux version ") {
            s.boots += 1;
            s.report = None;
        } else if line.starts_with(POWER_ON) {
            s.report = None;
        }
        // The node's own lines; a login prompt may precede them on the same console line.
        // systemd's lines mention "kubestick: " too, in unit descriptions ("kubestick:
        // prepare the node for Kubernetes"), which never read like a step's state.
        for (i, _) in line.match_indices("kubestick: ") {
            let rest = &line[i + "kubestick: ".len()..];
            if rest.starts_with("node=") {
                s.report = Some(line[i..].trim_end().to_string());
            } else if let Some((step, state)) = rest.split_once(' ')
                && STEPS.contains(&step)
                && STATES.iter().any(|p| state.trim_start().starts_with(p))
            {
                let state = state.trim().to_string();
                match steps.iter_mut().find(|(n, _)| n == step) {
                    Some(e) => e.1 = state,
                    None => steps.push((step.to_string(), state)),
                }
            }
        }
        // Journal lines forwarded to the console: "storage[712]: kubestick-storage: ..."
        if let Some(i) = line.find(": kubestick-")
            && STEPS
                .iter()
                .any(|st| line[i + 2..].starts_with(&format!("kubestick-{st}: ")))
        {
            s.last_message = Some(line[i + 2..].trim_end().to_string());
        }
    }
    steps.sort_by_key(|(n, _)| STEPS.iter().position(|s| s == n));
    s.steps = steps;
    s
}

/// The part of the log since the last power-on, to show or search when a drill fails.
pub fn since_power_on(log: &str) -> &str {
    log.rfind(POWER_ON).map_or(log, |i| &log[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[kubestick vm] power on: optiplex-1 at 1764000000 (tcg)\n\
[    0.000000] Linux version 6.12.48+deb13-amd64 (debian-kernel@lists.debian.org)\n\
         Starting \x1b[0;1;39mkubestick-prepare.service\x1b[0m - kubestick: prepare the node...\r\n\
optiplex-1 login: kubestick: prepare    done\r\n\
kubestick: images     running (journalctl -u kubestick-images.service)\n\
kubestick: images     done: imported 24 images (328K) in 2s, pinned\n\
[   34.413361] systemd[1]: Finished kubestick-prepare.service - kubestick: prepare the node for Kubernetes.\n\
[   90.262891] systemd[1]: Finished kubestick-storage.service - kubestick: prepare this node's disk for ceph.\n\
kubestick: storage    waiting\n\
kubestick: bootstrap  waiting\n\
[   90.207347] storage[712]: kubestick-storage: /dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1 (/dev/sda) is empty: nothing to clear, rook will use it\n\
kubestick: storage    done: /dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1 (/dev/sda) is empty\n\
kubestick: node=optiplex-1 role=control-plane lan0=10.77.0.21/24 root=15000MiB disks=ata-QEMU_HARDDISK_SATA-NODE1\n\
kubestick: bootstrap  running (journalctl -u kubestick-bootstrap.service)\n\
[   92.847164] bootstrap[739]: kubestick-bootstrap: no API answers at https://10.77.0.10:6443: this is the init node, creating the cluster\n\
kubestick: bootstrap  done: created the cluster (kubeadm init)\n";

    #[test]
    fn reads_identity_and_steps() {
        let s = summarize(LOG);
        assert_eq!(s.boots, 1);
        assert_eq!(
            s.report.as_deref(),
            Some(
                "kubestick: node=optiplex-1 role=control-plane lan0=10.77.0.21/24 root=15000MiB disks=ata-QEMU_HARDDISK_SATA-NODE1"
            )
        );
        assert_eq!(s.step("prepare"), Some("done"));
        assert_eq!(s.step("images"), Some("done: imported 24 images (328K) in 2s, pinned"));
        assert_eq!(
            s.step("storage"),
            Some("done: /dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1 (/dev/sda) is empty")
        );
        assert_eq!(s.step("addons"), None);
        assert_eq!(s.progress(), "addons: -");
        assert!(
            s.last_message
                .unwrap()
                .starts_with("kubestick-bootstrap: no API answers")
        );
    }

    #[test]
    fn a_new_boot_forgets_the_identity_line_but_not_finished_steps() {
        let log = format!(
            "{LOG}{POWER_ON} optiplex-1 at 1764000100 (tcg)\n[    0.000000] Linux version 6.12\nkubestick: prepare    done\n"
        );
        let s = summarize(&log);
        assert_eq!(s.boots, 2);
        assert_eq!(s.report, None);
        assert_eq!(s.step("bootstrap"), Some("done: created the cluster (kubeadm init)"));
        let all = format!("{log}kubestick: addons     applied by optiplex-1\n");
        assert_eq!(summarize(&all).progress(), "all steps done");
        let waiting = format!("{log}kubestick: bootstrap  running (journalctl -u kubestick-bootstrap.service)\n");
        assert_eq!(
            summarize(&waiting).progress(),
            "bootstrap: running (journalctl -u kubestick-bootstrap.service)"
        );
        assert!(since_power_on(&log).starts_with(POWER_ON));
        assert!(!since_power_on(&log).contains("node=optiplex-1"));
    }

    #[test]
    fn an_empty_log_says_nothing() {
        let s = summarize("");
        assert_eq!((s.boots, s.report.clone(), s.progress()), (0, None, "-".to_string()));
    }

    #[test]
    fn escape_sequences_go() {
        assert_eq!(clean("\x1b[0;32m  OK  \x1b[0m] Finished\r"), "  OK  ] Finished");
        assert_eq!(clean("[!p]104[?7h"), "[!p]104[?7h");
    }
}

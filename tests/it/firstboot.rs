//! The first-boot scripts' decisions, run for real with the commands that would touch the
//! machine's own state (findmnt, lsblk, LVM) replaced by recording doubles. Tools that work
//! on a plain file (sfdisk, wipefs, mkfs, dd) stay real, so a "disk" here is a file behind
//! a /dev/disk/by-id style symlink.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::*;

const DISK_SIZE: u64 = 128 << 20;

/// The rendered storage script (node-independent, so any example will do).
fn storage_script() -> &'static Path {
    static SCRIPT: OnceLock<(Scratch, PathBuf)> = OnceLock::new();
    &SCRIPT
        .get_or_init(|| {
            let (s, out) = render_example("homelab");
            (s, out.join("common/files/usr/local/lib/kubestick/storage"))
        })
        .1
}

/// One fake node: its disk, its node.env, doubles on PATH and a call record.
struct Machine {
    dir: tempfile::TempDir,
}

const DOUBLES: &[(&str, &str)] = &[
    ("findmnt", "echo \"$FAKE_ROOT_SOURCE\""),
    ("lsblk", "echo \"$FAKE_BOOT_DISK\""),
    ("pvs", "[ -n \"${FAKE_PV_VG:-}\" ] && echo \"  $FAKE_PV_VG\" || exit 5"),
    ("lvs", "echo \"  ${FAKE_LV_TAGS:-}\""),
    ("vgchange", "exit 0"),
    ("vgremove", "exit 0"),
    ("pvremove", "exit 0"),
    ("blockdev", "exit 0"),
];

impl Machine {
    fn new(wipe: &str) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let m = Machine { dir };
        fs::create_dir_all(m.path("bin")).unwrap();
        for (name, body) in DOUBLES {
            let p = m.path(&format!("bin/{name}"));
            fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >> \"$RECORD\"\n{body}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(m.path("dev/disk/by-id")).unwrap();
        for d in ["sda", "sdb"] {
            fs::File::create(m.path(&format!("dev/{d}")))
                .unwrap()
                .set_len(DISK_SIZE)
                .unwrap();
        }
        std::os::unix::fs::symlink("../../sdb", m.path("dev/disk/by-id/ata-DATA")).unwrap();
        std::os::unix::fs::symlink("../../sda", m.path("dev/disk/by-id/ata-BOOT")).unwrap();
        m.set_env("ata-DATA", wipe);
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn set_env(&self, by_id: &str, wipe: &str) {
        let disk = self.path(&format!("dev/disk/by-id/{by_id}"));
        fs::write(
            self.path("node.env"),
            format!(
                "KUBESTICK_NODE=n1\nKUBESTICK_DISK={}\nKUBESTICK_WIPE={wipe}\n",
                disk.display()
            ),
        )
        .unwrap();
    }

    fn run(&self, extra_env: &[(&str, &str)]) -> Output {
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.path("bin").display());
        let mut cmd = Command::new("bash");
        cmd.arg(storage_script())
            .env_clear()
            .env("PATH", path)
            .env("KUBESTICK_ENV", self.path("node.env"))
            .env("KUBESTICK_STATE", self.path("state"))
            .env("KUBESTICK_DISK_WAIT", "1")
            .env("RECORD", self.path("calls"))
            .env("FAKE_ROOT_SOURCE", self.path("dev/sda3"))
            .env("FAKE_BOOT_DISK", "sda");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.path("calls")).unwrap_or_default()
    }

    fn disk(&self) -> Vec<u8> {
        fs::read(self.path("dev/sdb")).unwrap()
    }

    fn signatures(&self) -> String {
        let out = run_tool(
            "wipefs",
            &[
                "--no-act",
                "--noheadings",
                "--output",
                "TYPE",
                self.path("dev/sdb").to_str().unwrap(),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn log(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn partition_table(m: &Machine) {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(m.path("dev/sdb"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\n,16M\n,16M\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_empty_disk_is_left_to_rook() {
    let m = Machine::new("if-not-osd");
    let out = m.run(&[]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(log(&out).contains("is empty: nothing to clear"), "{}", log(&out));
    assert!(
        !m.calls().contains("wipefs") && !m.calls().contains("vgremove"),
        "{}",
        m.calls()
    );
    assert!(
        fs::read_to_string(m.path("state/storage.done"))
            .unwrap()
            .contains("is empty")
    );
}

#[test]
fn a_partition_table_and_filesystem_are_cleared() {
    let m = Machine::new("if-not-osd");
    partition_table(&m);
    assert!(m.signatures().contains("gpt"), "{}", m.signatures());
    let out = m.run(&[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("clearing") && text.contains("signatures: gpt") && text.contains("running: wipefs --all --force"),
        "{text}"
    );
    assert!(text.contains("running: dd if=/dev/zero"), "{text}");
    assert_eq!(m.signatures(), "", "signatures left after the wipe");
    assert!(m.disk()[..1 << 20].iter().all(|b| *b == 0));

    let m = Machine::new("if-not-osd");
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(m.path("dev/sdb"))
            .status()
            .unwrap()
            .success()
    );
    let text = log(&m.run(&[]));
    assert!(text.contains("signatures: ext4"), "{text}");
    assert_eq!(m.signatures(), "");
}

#[test]
fn an_lvm_volume_group_is_removed_before_the_wipe() {
    let m = Machine::new("if-not-osd");
    let out = m.run(&[("FAKE_PV_VG", "oldvg"), ("FAKE_LV_TAGS", "")]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("LVM volume group oldvg"), "{text}");
    let calls = m.calls();
    let order: Vec<&str> = calls
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .filter(|c| ["vgchange", "vgremove", "pvremove"].contains(c))
        .collect();
    assert_eq!(order, ["vgchange", "vgremove", "pvremove"], "{calls}");
}

#[test]
fn a_bluestore_label_keeps_the_disk_intact() {
    let m = Machine::new("if-not-osd");
    let mut data = m.disk();
    data[..23].copy_from_slice(b"bluestore block device\n");
    data[100..110].copy_from_slice(b"osd data!!");
    fs::write(m.path("dev/sdb"), &data).unwrap();
    let out = m.run(&[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("carries a ceph bluestore label: left intact"), "{text}");
    assert_eq!(m.disk(), data, "the OSD disk was modified");
    assert!(!m.calls().contains("wipefs"));
}

#[test]
fn an_lvm_osd_keeps_the_disk_intact() {
    let m = Machine::new("if-not-osd");
    partition_table(&m);
    let before = m.disk();
    let out = m.run(&[
        ("FAKE_PV_VG", "ceph-1234"),
        ("FAKE_LV_TAGS", "ceph.osd_id=3,ceph.type=block"),
    ]);
    assert!(
        log(&out).contains("holds a ceph OSD in LVM volume group ceph-1234: left intact"),
        "{}",
        log(&out)
    );
    assert_eq!(m.disk(), before);
    assert!(!m.calls().contains("vgremove"));
}

#[test]
fn the_boot_disk_named_by_mistake_is_refused() {
    let m = Machine::new("if-not-osd");
    m.set_env("ata-BOOT", "if-not-osd");
    let before = fs::read(m.path("dev/sda")).unwrap();
    let out = m.run(&[]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("REFUSED") && text.contains("is the disk this system booted from"),
        "{text}"
    );
    assert_eq!(fs::read(m.path("dev/sda")).unwrap(), before);
    assert!(
        !m.path("state/storage.done").exists(),
        "a refusal is not a finished step"
    );
}

#[test]
fn wipe_never_leaves_old_contents_alone() {
    let m = Machine::new("never");
    partition_table(&m);
    let before = m.disk();
    let out = m.run(&[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("wipe = \"never\": left as is"), "{text}");
    assert_eq!(m.disk(), before);
}

#[test]
fn a_missing_disk_is_an_error_naming_it() {
    let m = Machine::new("if-not-osd");
    m.set_env("ata-NOPE", "if-not-osd");
    let out = m.run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(log(&out).contains("ata-NOPE does not exist"), "{}", log(&out));
}

#[test]
fn a_second_boot_does_nothing_again() {
    let m = Machine::new("if-not-osd");
    partition_table(&m);
    assert!(m.run(&[]).status.success());
    let calls = m.calls();
    partition_table(&m); // whatever happens to the disk later is rook's
    let out = m.run(&[]);
    assert!(out.status.success());
    assert!(log(&out).contains("already done"), "{}", log(&out));
    assert_eq!(m.calls(), calls, "the second run called commands");
    assert!(m.signatures().contains("gpt"));
}

#[test]
fn a_node_without_a_disk_has_nothing_to_do() {
    let m = Machine::new("if-not-osd");
    fs::write(m.path("node.env"), "KUBESTICK_NODE=n1\n").unwrap();
    let out = m.run(&[]);
    assert!(out.status.success());
    assert!(log(&out).contains("no disk is configured"), "{}", log(&out));
}

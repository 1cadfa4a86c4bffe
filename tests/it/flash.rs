//! `kubestick flash` on fake machines: sysfs, `/proc/self/mountinfo` and `/dev` built in a
//! temp dir and handed over through `KUBESTICK_{SYSFS,PROC,DEV}_ROOT`. Device nodes are
//! regular files of the disk's size, so the whole write and verify path runs on them; one
//! test uses a real loop device where the machine allows it.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::FromRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use assert_cmd::assert::OutputAssertExt as _;
use predicates::prelude::*;
use sha2::Digest as _;

use crate::common::kubestick;

const MIB: u64 = 1024 * 1024;
const USB_HOST: &str = "pci0000:00/0000:00:14.0/usb2";
const SATA: &str = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0";

/// A disk in the fake machine.
struct DiskSpec<'a> {
    name: &'a str,
    dev: &'a str,
    bytes: u64,
    removable: bool,
    /// Hardware path below `devices/`; contains `/usb` for USB disks.
    hw: String,
    /// The USB device (below `devices/`) that carries `idVendor` and `serial`.
    usb_dev: Option<String>,
    vendor: &'a str,
    model: &'a str,
    serial: Option<&'a str>,
    /// (name, dev) of each partition.
    partitions: &'a [(&'a str, &'a str)],
}

impl<'a> DiskSpec<'a> {
    /// A USB stick, as usb-storage shows it: the disk hangs off a SCSI device below the USB
    /// interface; the serial is on the USB device.
    fn usb(name: &'a str, dev: &'a str, bytes: u64) -> Self {
        let port = unique(name);
        let usb_dev = format!("{USB_HOST}/2-{port}");
        DiskSpec {
            name,
            dev,
            bytes,
            removable: true,
            hw: format!("{usb_dev}/2-{port}:1.0/host{port}/target{port}:0:0/{port}:0:0:0"),
            usb_dev: Some(usb_dev),
            vendor: "SanDisk",
            model: "Cruzer Blade",
            serial: Some("4C530001230830117"),
            partitions: &[],
        }
    }

    fn sata(name: &'a str, dev: &'a str, bytes: u64) -> Self {
        DiskSpec {
            name,
            dev,
            bytes,
            removable: false,
            hw: format!("{SATA}/0:0:{}:0", unique(name)),
            usb_dev: None,
            vendor: "ATA",
            model: "Samsung SSD 870",
            serial: None,
            partitions: &[],
        }
    }
}

/// A small number unique to a disk name, for its place in the hardware tree.
fn unique(name: &str) -> u32 {
    name.bytes().map(u32::from).sum()
}

struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let m = Machine {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(m.sys().join("block")).unwrap();
        fs::create_dir_all(m.root().join("proc/self")).unwrap();
        fs::create_dir_all(m.dev().join("disk/by-id")).unwrap();
        fs::write(m.mountinfo(), "22 1 0:21 / /proc rw,relatime - proc proc rw\n").unwrap();
        m
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }
    fn sys(&self) -> PathBuf {
        self.root().join("sys")
    }
    fn dev(&self) -> PathBuf {
        self.root().join("dev")
    }
    fn mountinfo(&self) -> PathBuf {
        self.root().join("proc/self/mountinfo")
    }

    fn write_sys(&self, rel: &str, contents: &str) {
        let p = self.sys().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }

    /// Adds the disk to sysfs and a stand-in node of its size to /dev (plus one per
    /// partition, and a by-id link for USB disks).
    fn disk(&self, d: &DiskSpec) -> &Self {
        let real = format!("devices/{}/block/{}", d.hw, d.name);
        self.write_sys(&format!("{real}/dev"), &format!("{}\n", d.dev));
        self.write_sys(&format!("{real}/size"), &format!("{}\n", d.bytes / 512));
        self.write_sys(&format!("{real}/removable"), if d.removable { "1\n" } else { "0\n" });
        self.write_sys(&format!("{real}/ro"), "0\n");
        symlink("../..", self.sys().join(&real).join("device")).unwrap();
        symlink(format!("../{real}"), self.sys().join("block").join(d.name)).unwrap();
        if !d.hw.starts_with("virtual") {
            self.write_sys(&format!("devices/{}/vendor", d.hw), &format!("{:<8}\n", d.vendor));
            self.write_sys(&format!("devices/{}/model", d.hw), &format!("{:<16}\n", d.model));
        }
        if let Some(usb_dev) = &d.usb_dev {
            self.write_sys(&format!("devices/{usb_dev}/idVendor"), "0781\n");
            if let Some(serial) = d.serial {
                self.write_sys(&format!("devices/{usb_dev}/serial"), &format!("{serial}\n"));
                symlink(
                    format!("../../{}", d.name),
                    self.dev().join(format!(
                        "disk/by-id/usb-{}_{}_{serial}-0:0",
                        d.vendor,
                        d.model.replace(' ', "_")
                    )),
                )
                .unwrap();
            }
        }
        let node = File::create(self.dev().join(d.name)).unwrap();
        node.set_len(d.bytes).unwrap();
        for (part, dev) in d.partitions {
            self.write_sys(&format!("{real}/{part}/dev"), &format!("{dev}\n"));
            self.write_sys(&format!("{real}/{part}/partition"), "1\n");
            File::create(self.dev().join(part)).unwrap();
        }
        self
    }

    /// Adds a mountinfo line: `dev` mounted from `source` on `point` (escaped as the kernel does).
    fn mount(&self, dev: &str, source: &str, point: &str) -> &Self {
        let mut f = OpenOptions::new().append(true).open(self.mountinfo()).unwrap();
        let point = point.replace(' ', "\\040");
        writeln!(f, "100 1 {dev} / {point} rw,relatime shared:1 - ext4 {source} rw").unwrap();
        self
    }

    fn env(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("KUBESTICK_SYSFS_ROOT", self.sys()),
            ("KUBESTICK_PROC_ROOT", self.root().join("proc")),
            ("KUBESTICK_DEV_ROOT", self.dev()),
        ]
    }

    fn flash(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        kubestick().arg("flash").args(args).envs(self.env()).assert()
    }

    fn image(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8 ^ 0x5a).collect();
        fs::create_dir_all(self.root().join("out")).unwrap();
        let path = self.root().join("out").join(name);
        fs::write(&path, &data).unwrap();
        (path, data)
    }

    fn node_digest(&self, name: &str) -> String {
        hex::encode(sha2::Sha256::digest(fs::read(self.dev().join(name)).unwrap()))
    }
}

/// The machine most tests use: a USB stick (sdb, 16 MiB), a mounted stick (sdc), an
/// internal SATA disk (sdd), the system disk (sda), a 1 MiB stick (sde), an SD card, and
/// the kernel-made devices `--list` must hide.
fn lab() -> Machine {
    let m = Machine::new();
    m.disk(&DiskSpec {
        partitions: &[("sda1", "8:1"), ("sda2", "8:2")],
        ..DiskSpec::sata("sda", "8:0", 32 * MIB)
    })
    .disk(&DiskSpec {
        partitions: &[("sdb1", "8:17")],
        ..DiskSpec::usb("sdb", "8:16", 16 * MIB)
    })
    .disk(&DiskSpec {
        partitions: &[("sdc1", "8:33")],
        vendor: "Kingston",
        model: "DataTraveler 3.0",
        serial: None,
        ..DiskSpec::usb("sdc", "8:32", 16 * MIB)
    })
    .disk(&DiskSpec::sata("sdd", "8:48", 24 * MIB))
    .disk(&DiskSpec {
        serial: None,
        ..DiskSpec::usb("sde", "8:64", MIB)
    })
    .disk(&DiskSpec {
        removable: false,
        hw: "pci0000:00/0000:00:1a.0/mmc_host/mmc0/mmc0:aaaa".to_string(),
        vendor: "",
        model: "SD32G",
        ..DiskSpec::sata("mmcblk0", "179:0", 32 * MIB)
    })
    .mount("8:2", "/dev/sda2", "/")
    .mount("8:1", "/dev/sda1", "/boot/efi")
    .mount("8:33", "/dev/sdc1", "/media/me/MY STICK");
    m.write_sys("devices/pci0000:00/0000:00:1a.0/mmc_host/mmc0/mmc0:aaaa/type", "SD\n");
    for (name, dev) in [
        ("loop0", "7:0"),
        ("zram0", "251:0"),
        ("dm-0", "253:0"),
        ("md127", "9:127"),
    ] {
        m.disk(&DiskSpec {
            removable: true,
            hw: "virtual".to_string(),
            ..DiskSpec::sata(name, dev, 64 * MIB)
        });
    }
    m
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[test]
fn list_shows_only_removable_and_usb_disks() {
    let m = lab();
    let a = m.flash(&["--list"]).success();
    let out = stdout(&a);
    for shown in [
        "/dev/sdb       16.8 MB  SanDisk Cruzer Blade, serial 4C530001230830117",
        "/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001230830117-0:0",
        "/dev/sdc       16.8 MB  Kingston DataTraveler 3.0, no serial",
        "mounted: /dev/sdc1 on /media/me/MY STICK",
        "/dev/sde",
        "/dev/mmcblk0",
    ] {
        assert!(out.contains(shown), "missing {shown:?} in:\n{out}");
    }
    for hidden in ["/dev/sda", "/dev/sdd", "loop0", "zram0", "dm-0", "md127"] {
        assert!(!out.contains(hidden), "{hidden} listed:\n{out}");
    }
}

#[test]
fn list_with_no_sticks_says_so() {
    let m = Machine::new();
    m.disk(&DiskSpec::sata("sda", "8:0", 32 * MIB));
    m.flash(&["--list"])
        .success()
        .stdout(predicate::str::contains("No removable or USB disks found"));
}

#[test]
fn flashes_a_usb_stick_and_verifies_it() {
    let m = lab();
    // Not a multiple of the block size, and longer than the first MiB that is written last.
    let (image, data) = m.image("node-1.img", 3 * MIB as usize + 517);
    let a = m.flash(&[image.to_str().unwrap(), "/dev/sdb", "--yes"]).success();
    let (out, err) = (stdout(&a), stderr(&a));
    assert!(err.contains("Everything on /dev/sdb will be destroyed"), "{err}");
    assert!(
        err.contains("SanDisk Cruzer Blade, 16.8 MB, serial 4C530001230830117"),
        "{err}"
    );
    let digest = hex::encode(sha2::Sha256::digest(&data));
    assert!(
        out.contains("Verified: read 3.1 MB back from /dev/sdb") && out.contains(&digest),
        "{out}"
    );
    assert!(out.contains("/dev/sdb is ready for node-1."), "{out}");
    let written = fs::read(m.dev().join("sdb")).unwrap();
    assert_eq!(written.len() as u64, 16 * MIB, "a device never changes size");
    assert_eq!(&written[..data.len()], &data[..]);
    assert!(written[data.len()..].iter().all(|&b| b == 0));
}

#[test]
fn flashes_through_a_by_id_link() {
    let m = lab();
    let (image, data) = m.image("node-2.img", MIB as usize);
    m.flash(&[
        image.to_str().unwrap(),
        "/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001230830117-0:0",
        "-y",
    ])
    .success()
    .stderr(predicate::str::contains(
        "Everything on /dev/sdb (/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001230830117-0:0)",
    ));
    assert_eq!(&fs::read(m.dev().join("sdb")).unwrap()[..data.len()], &data[..]);
}

/// Runs a refused flash and checks that it exits 2 with `message` and leaves every disk alone.
fn refused(m: &Machine, image: &Path, device: &str, extra: &[&str], message: &str) -> String {
    let before: Vec<String> = ["sda", "sdb", "sdc", "sdd", "sde"]
        .iter()
        .map(|d| m.node_digest(d))
        .collect();
    let mut args = vec![image.to_str().unwrap(), device];
    args.extend(extra);
    let a = m.flash(&args).code(2);
    let err = stderr(&a);
    assert!(err.contains(message), "expected {message:?} in:\n{err}");
    assert!(stdout(&a).is_empty(), "{}", stdout(&a));
    let after: Vec<String> = ["sda", "sdb", "sdc", "sdd", "sde"]
        .iter()
        .map(|d| m.node_digest(d))
        .collect();
    assert_eq!(before, after, "a refused flash wrote something");
    err
}

#[test]
fn refuses_a_partition_and_names_the_disk() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    refused(
        &m,
        &image,
        "/dev/sdb1",
        &["--yes"],
        "error: /dev/sdb1 is a partition of /dev/sdb; an image replaces the whole disk, so name the disk: /dev/sdb",
    );
}

#[test]
fn refuses_an_internal_disk_unless_forced() {
    let m = lab();
    let (image, data) = m.image("node-1.img", 1000);
    refused(
        &m,
        &image,
        "/dev/sdd",
        &["--yes"],
        "error: /dev/sdd (ATA Samsung SSD 870, 25.2 MB, no serial) is neither removable nor on USB, so it is \
         probably an internal disk; check the name with `kubestick flash --list`, or pass --force-non-removable",
    );
    m.flash(&[image.to_str().unwrap(), "/dev/sdd", "--yes", "--force-non-removable"])
        .success();
    assert_eq!(&fs::read(m.dev().join("sdd")).unwrap()[..data.len()], &data[..]);
}

#[test]
fn refuses_a_mounted_stick_and_says_how_to_unmount_it() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    refused(
        &m,
        &image,
        "/dev/sdc",
        &["--yes"],
        "error: /dev/sdc has mounted partitions: /dev/sdc1 on /media/me/MY STICK; unmount them first: \
         umount '/media/me/MY STICK'",
    );
}

#[test]
fn refuses_the_system_disk_even_when_forced() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    let err = refused(
        &m,
        &image,
        "/dev/sda",
        &["--yes", "--force-non-removable"],
        "error: /dev/sda holds the running system (/ is mounted from /dev/sda2)",
    );
    assert!(!err.contains("umount"), "unmounting / is no advice: {err}");
}

#[test]
fn refuses_a_stick_smaller_than_the_image() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 2 * MIB as usize);
    refused(
        &m,
        &image,
        "/dev/sde",
        &["--yes"],
        "error: /dev/sde is too small: it holds 1.0 MB (1048576 bytes), the image needs 2.1 MB (2097152 bytes); \
         use a stick of at least 2.1 MB",
    );
}

#[test]
fn reports_every_reason_at_once() {
    let m = lab();
    m.mount("8:48", "/dev/sdd", "/srv");
    let image = m.root().join("out/big.img");
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    File::create(&image).unwrap().set_len(100 * MIB).unwrap();
    let err = refused(
        &m,
        &image,
        "/dev/sdd",
        &["--yes"],
        "error: refusing to write to /dev/sdd:\n  - ",
    );
    for reason in ["neither removable nor on USB", "mounted partitions", "too small"] {
        assert!(err.contains(reason), "{reason} missing: {err}");
    }
}

#[test]
fn refuses_missing_devices_and_bad_images() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    refused(&m, &image, "/dev/sdx", &["--yes"], "error: /dev/sdx does not exist");
    let plain = m.root().join("out/not-a-disk");
    fs::write(&plain, b"").unwrap();
    refused(
        &m,
        &image,
        plain.to_str().unwrap(),
        &["--yes"],
        "is not a disk (it is a regular file, not a block device)",
    );
    refused(
        &m,
        &m.root().join("out/missing.img"),
        "/dev/sdb",
        &["--yes"],
        "missing.img does not exist",
    );
    refused(&m, &m.root().join("out"), "/dev/sdb", &["--yes"], "out is a directory");
    let (empty, _) = m.image("empty.img", 0);
    refused(&m, &empty, "/dev/sdb", &["--yes"], "empty.img is empty");
}

/// Piped input is no confirmation: without a terminal to ask on, --yes is required.
#[test]
fn refuses_without_a_terminal_or_yes() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    let before = m.node_digest("sdb");
    kubestick()
        .args(["flash", image.to_str().unwrap(), "/dev/sdb"])
        .envs(m.env())
        .write_stdin("wrong-name\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "stdin is not a terminal, so kubestick cannot ask before overwriting /dev/sdb; pass --yes",
        ));
    assert_eq!(m.node_digest("sdb"), before);
}

/// A pseudo-terminal whose input is `typed`; the master end must outlive the child.
fn terminal_with_input(typed: &str) -> (File, File) {
    // SAFETY: plain libc calls on descriptors this function owns; ptsname_r gets a buffer
    // of the size it is told.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let mut master_file = File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::OsStr::from_bytes(CStr::from_ptr(name.as_ptr()).to_bytes());
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap();
        master_file.write_all(typed.as_bytes()).unwrap();
        (master_file, slave)
    }
}

fn flash_on_terminal(m: &Machine, args: &[&str], typed: &str) -> assert_cmd::assert::Assert {
    let (master, slave) = terminal_with_input(typed);
    let program = kubestick().get_program().to_owned();
    let output = StdCommand::new(program)
        .env("NO_COLOR", "1")
        .envs(m.env())
        .arg("flash")
        .args(args)
        .stdin(Stdio::from(slave))
        .output()
        .unwrap();
    drop(master);
    output.assert()
}

#[test]
fn a_wrong_name_typed_at_the_prompt_writes_nothing() {
    let m = lab();
    let (image, _) = m.image("node-1.img", 1000);
    let before = m.node_digest("sdb");
    let a = flash_on_terminal(&m, &[image.to_str().unwrap(), "/dev/sdb"], "wrong-name\n").code(2);
    let err = stderr(&a);
    assert!(err.contains("Type the node name (node-1) to continue: "), "{err}");
    assert!(
        err.contains("error: `wrong-name` is not the node name `node-1`; nothing was written to /dev/sdb"),
        "{err}"
    );
    assert_eq!(m.node_digest("sdb"), before);
}

#[test]
fn the_node_name_typed_at_the_prompt_flashes() {
    let m = lab();
    let (image, data) = m.image("node-1.img", 1000);
    flash_on_terminal(&m, &[image.to_str().unwrap(), "/dev/sdb"], "node-1\n")
        .success()
        .stdout(predicate::str::contains("Verified"));
    assert_eq!(&fs::read(m.dev().join("sdb")).unwrap()[..data.len()], &data[..]);
}

/// Detaches the loop device when the test ends, however it ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = StdCommand::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The real block-device path (O_EXCL, O_DIRECT, BLKRRPART) on a loop device that a fake
/// sysfs describes as a USB stick. Needs root and loop devices; says so when skipped.
#[test]
fn flashes_a_loop_device_described_as_a_usb_stick() {
    let scratch = tempfile::tempdir().unwrap();
    let backing = scratch.path().join("stick.raw");
    File::create(&backing).unwrap().set_len(16 * MIB).unwrap();
    let setup = StdCommand::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&backing)
        .output();
    let device = match setup {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap().trim().to_string(),
        Ok(out) => {
            eprintln!(
                "SKIPPED flashes_a_loop_device_described_as_a_usb_stick: `losetup --find --show` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED flashes_a_loop_device_described_as_a_usb_stick: cannot run losetup: {e}");
            return;
        }
    };
    let attached = Loop(device.clone());
    let name = device.trim_start_matches("/dev/");
    let dev = fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    let (major, minor) = dev.trim().split_once(':').unwrap();

    let m = Machine::new();
    m.disk(&DiskSpec::usb("sdz", dev.trim(), 16 * MIB));
    // The stand-in node becomes the real loop device.
    let node = m.dev().join("sdz");
    fs::remove_file(&node).unwrap();
    let path = std::ffi::CString::new(node.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a device number made by libc.
    let rc = unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major.parse().unwrap(), minor.parse().unwrap()),
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIPPED flashes_a_loop_device_described_as_a_usb_stick: mknod in {} failed: {}",
            m.dev().display(),
            std::io::Error::last_os_error()
        );
        return;
    }
    let (image, data) = m.image("node-7.img", 3 * MIB as usize + 517);

    // Whatever the fake mountinfo says, the kernel's exclusive open is the last guard:
    // here this test holds the device the way a mount or RAID would.
    let holder = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&device)
        .unwrap();
    m.flash(&[image.to_str().unwrap(), "/dev/sdz", "--yes"])
        .code(2)
        .stderr(predicate::str::contains(
            "error: /dev/sdz is busy: the kernel refused exclusive access",
        ));
    drop(holder);
    assert!(
        fs::read(&backing).unwrap().iter().all(|&b| b == 0),
        "a busy device was written"
    );

    let a = m.flash(&[image.to_str().unwrap(), "/dev/sdz", "--yes"]).success();
    let (out, err) = (stdout(&a), stderr(&a));
    assert!(out.contains("back from /dev/sdz bypassing the page cache"), "{out}");
    assert!(!err.contains("warning"), "{err}");
    drop(attached);
    assert_eq!(&fs::read(&backing).unwrap()[..data.len()], &data[..]);
}

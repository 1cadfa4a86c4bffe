//! QEMU command lines: one per node VM, and one for the host's port on the segment.
//! Built as plain argument lists so tests can check them without running QEMU.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::Path;

use anyhow::{Result, bail};
use ipnet::Ipv4Net;

use crate::vm::accel::Accel;
use crate::vm::disk::SataIdentity;
use crate::vm::state::{NodeDir, Settings};

/// Appended to the kernel command line of every boot entry by systemd-boot (it reads SMBIOS
/// type 11 strings): journald copies the journal to the serial console, so the serial log
/// shows what the first-boot units log (`kubestick-storage: ...`) and not only that they
/// started. Only the VMs get it; the image is the one that goes on the USB stick.
pub const KERNEL_CMDLINE_EXTRA: &str = "systemd.journald.forward_to_console=1";

/// QEMU splits option values at commas; a literal comma is written twice.
fn escaped(value: &OsStr) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out
}

/// `prefix` followed by `path` with its commas escaped, then `suffix`.
fn with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut v = prefix.as_bytes().to_vec();
    v.extend(escaped(path.as_os_str()));
    v.extend(suffix.as_bytes());
    OsString::from_vec(v)
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

pub struct NodeVm<'a> {
    pub name: &'a str,
    pub accel: Accel,
    pub settings: &'a Settings,
    pub files: &'a NodeDir,
    pub mac: &'a str,
    pub sata: Option<&'a SataIdentity>,
    pub hub: &'a Path,
    /// The guest's clock at power-on (`-rtc base=`), when it is not the host's.
    pub rtc_base: Option<&'a str>,
}

/// QEMU's `-rtc base=` value for `epoch` (seconds since 1970, UTC).
pub fn rtc_base(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A node: q35 with UEFI (OVMF code read-only, the node's own variables), the overlay as its
/// boot disk, its SATA disk on an AHCI controller, one NIC with the node's MAC on the hub,
/// the serial console on a socket with everything also logged to a file, QMP for the power
/// button; daemonised, with a pid file.
pub fn node_args(vm: &NodeVm<'_>) -> Vec<OsString> {
    let s = vm.settings;
    let f = vm.files;
    let mut a = Vec::new();
    push(
        &mut a,
        &["-name", &format!("{},process=kubestick-{}", vm.name, vm.name)],
    );
    push(
        &mut a,
        &["-machine", "q35", "-accel", vm.accel.as_str(), "-cpu", vm.accel.cpu()],
    );
    push(&mut a, &["-m", &s.memory_mib.to_string(), "-smp", &s.cpus.to_string()]);
    push(&mut a, &["-nodefaults", "-no-user-config", "-display", "none"]);
    if let Some(base) = vm.rtc_base {
        push(&mut a, &["-rtc", &format!("base={base},clock=host")]);
    }
    a.push("-drive".into());
    a.push(with_path("if=pflash,format=raw,readonly=on,file=", &s.ovmf_code, ""));
    a.push("-drive".into());
    a.push(with_path("if=pflash,format=raw,file=", &f.vars, ""));
    a.push("-drive".into());
    // The USB stick: at the host's speed, or throttled to a cheap stick's (`--stick`).
    a.push(with_path(
        "if=none,id=boot,format=qcow2,file=",
        &f.boot,
        &s.stick.drive_options(),
    ));
    push(&mut a, &["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
    if let Some(sata) = vm.sata {
        push(&mut a, &["-device", "ahci,id=ahci"]);
        a.push("-drive".into());
        a.push(with_path("if=none,id=sata0,format=raw,file=", &f.sata, ""));
        push(
            &mut a,
            &[
                "-device",
                &format!("ide-hd,bus=ahci.0,drive=sata0,{}", sata.device_properties()),
            ],
        );
    }
    a.push("-netdev".into());
    a.push(with_path(
        "stream,id=lan,server=off,addr.type=unix,addr.path=",
        vm.hub,
        "",
    ));
    push(
        &mut a,
        &["-device", &format!("virtio-net-pci,netdev=lan,mac={}", vm.mac)],
    );
    a.push("-chardev".into());
    let mut console = with_path("socket,id=console,server=on,wait=off,path=", &f.console, ",logfile=");
    console.push(OsString::from_vec(escaped(f.serial_log.as_os_str())));
    console.push(",logappend=on");
    a.push(console);
    push(&mut a, &["-serial", "chardev:console"]);
    a.push("-qmp".into());
    a.push(with_path("unix:", &f.qmp, ",server=on,wait=off"));
    push(
        &mut a,
        &[
            "-smbios",
            &format!("type=11,value=io.systemd.boot.kernel-cmdline-extra={KERNEL_CMDLINE_EXTRA}"),
        ],
    );
    a.push("-pidfile".into());
    a.push(f.pid.clone().into_os_string());
    a.push("-daemonize".into());
    a
}

/// A host port forwarded into the segment: 127.0.0.1:`host_port` → `guest`:`guest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub what: String,
    pub host_port: u16,
    pub guest: Ipv4Addr,
    pub guest_port: u16,
}

pub struct HostNet<'a> {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub dhcp_start: Ipv4Addr,
    pub forwards: &'a [Forward],
    pub hub: &'a Path,
    pub pidfile: &'a Path,
}

/// The host's port on the segment: a machine-less QEMU whose user-mode network (slirp)
/// takes the cluster's gateway address and is joined to the hub through QEMU's internal
/// hub. `restrict=on`: no guest packet is ever routed off this machine; only the explicit
/// forwards from 127.0.0.1 get in.
pub fn hostnet_args(net: &HostNet<'_>) -> Vec<OsString> {
    let mut user = format!(
        "user,id=host,restrict=on,ipv6=off,net={},host={},dns={},dhcpstart={}",
        net.subnet, net.gateway, net.dns, net.dhcp_start
    );
    for f in net.forwards {
        user.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-{}:{}",
            f.host_port, f.guest, f.guest_port
        ));
    }
    let mut a = Vec::new();
    push(&mut a, &["-name", "kubestick-net,process=kubestick-net"]);
    push(
        &mut a,
        &["-machine", "none", "-nodefaults", "-no-user-config", "-display", "none"],
    );
    push(&mut a, &["-netdev", &user]);
    a.push("-netdev".into());
    a.push(with_path(
        "stream,id=lan,server=off,addr.type=unix,addr.path=",
        net.hub,
        "",
    ));
    push(&mut a, &["-netdev", "hubport,id=p0,hubid=0,netdev=host"]);
    push(&mut a, &["-netdev", "hubport,id=p1,hubid=0,netdev=lan"]);
    a.push("-pidfile".into());
    a.push(net.pidfile.as_os_str().to_owned());
    a.push("-daemonize".into());
    a
}

/// Refuses a command line with a user-mode network that could reach beyond this machine:
/// every user netdev must have `restrict=on`, forwards may only listen on 127.0.0.1, and
/// the shorthand forms (`-nic user`, `-net user`) that hide these settings are not used.
/// Checked before any QEMU is started, so a future change cannot slip past the tests.
pub fn check_contained(args: &[OsString]) -> Result<()> {
    for pair in args.windows(2) {
        let (opt, value) = (pair[0].to_string_lossy(), pair[1].to_string_lossy());
        let value = value.as_ref();
        if (opt == "-nic" || opt == "-net") && (value == "user" || value.starts_with("user,")) {
            bail!("refusing to start QEMU with `{opt} {value}`: user networking must be a -netdev with restrict=on");
        }
        if opt != "-netdev" || !(value == "user" || value.starts_with("user,")) {
            continue;
        }
        let parts: Vec<&str> = value.split(',').collect();
        if !parts.contains(&"restrict=on") {
            bail!("refusing to start QEMU: the user-mode network `{value}` lacks restrict=on");
        }
        for p in &parts {
            if let Some(rule) = p.strip_prefix("hostfwd=") {
                if !rule.starts_with("tcp:127.0.0.1:") {
                    bail!("refusing to start QEMU: forward {rule} does not listen on 127.0.0.1 only");
                }
            } else if p.starts_with("guestfwd=") || p.starts_with("smb=") || p.starts_with("tftp=") {
                bail!("refusing to start QEMU: `{p}` would expose the host to the guests");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::StateDir;
    use crate::vm::stick::Stick;
    use std::path::PathBuf;

    fn settings() -> Settings {
        Settings {
            memory_mib: 1536,
            cpus: 1,
            disk_gib: 10,
            boot_gib: 16,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            qemu: "qemu-system-x86_64".into(),
            stick: Stick::Full,
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The value following `opt` whose text contains `needle`.
    fn value<'a>(args: &'a [String], opt: &str, needle: &str) -> &'a str {
        args.windows(2)
            .find(|w| w[0] == opt && w[1].contains(needle))
            .map(|w| w[1].as_str())
            .unwrap_or_else(|| panic!("no {opt} with {needle} in {args:?}"))
    }

    fn node(state: &StateDir, accel: Accel, sata: Option<&SataIdentity>) -> Vec<String> {
        let settings = settings();
        let files = state.node("optiplex-1");
        strings(&node_args(&NodeVm {
            name: "optiplex-1",
            accel,
            settings: &settings,
            files: &files,
            mac: "52:54:00:77:00:01",
            sata,
            hub: &state.hub_socket(),
            rtc_base: None,
        }))
    }

    #[test]
    fn a_clock_ahead_is_the_guests_rtc_base_and_only_then() {
        let state = StateDir::resolve(Path::new("/srv/out"), None);
        assert!(!node(&state, Accel::Tcg, None).iter().any(|a| a == "-rtc"));
        let settings = settings();
        let files = state.node("optiplex-1");
        let base = rtc_base(1_796_438_414 + 365 * 86_400);
        assert_eq!(base, "2027-12-05T02:40:14");
        let a = strings(&node_args(&NodeVm {
            name: "optiplex-1",
            accel: Accel::Tcg,
            settings: &settings,
            files: &files,
            mac: "52:54:00:77:00:01",
            sata: None,
            hub: &state.hub_socket(),
            rtc_base: Some(&base),
        }));
        assert_eq!(value(&a, "-rtc", "base="), "base=2027-12-05T02:40:14,clock=host");
    }

    #[test]
    fn a_node_boots_uefi_from_its_overlay_with_its_disk_mac_and_console() {
        let state = StateDir::resolve(Path::new("/srv/out"), None);
        let sata = crate::vm::disk::sata_identity("/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1").unwrap();
        let a = node(&state, Accel::Tcg, Some(&sata));
        assert_eq!(value(&a, "-machine", "q35"), "q35");
        assert_eq!(value(&a, "-accel", ""), "tcg");
        assert_eq!(value(&a, "-cpu", ""), "max");
        assert_eq!(value(&a, "-m", ""), "1536");
        assert_eq!(
            value(&a, "-drive", "OVMF_CODE"),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        );
        assert_eq!(
            value(&a, "-drive", "vars"),
            "if=pflash,format=raw,file=/srv/out/vm/optiplex-1/vars.fd"
        );
        assert_eq!(
            value(&a, "-drive", "id=boot"),
            "if=none,id=boot,format=qcow2,file=/srv/out/vm/optiplex-1/boot.qcow2"
        );
        assert_eq!(
            value(&a, "-device", "ide-hd"),
            "ide-hd,bus=ahci.0,drive=sata0,serial=SATA-NODE1"
        );
        assert_eq!(
            value(&a, "-drive", "sata0"),
            "if=none,id=sata0,format=raw,file=/srv/out/vm/optiplex-1/sata.raw"
        );
        assert_eq!(
            value(&a, "-device", "virtio-net"),
            "virtio-net-pci,netdev=lan,mac=52:54:00:77:00:01"
        );
        assert_eq!(
            value(&a, "-netdev", "stream"),
            "stream,id=lan,server=off,addr.type=unix,addr.path=/srv/out/vm/hub.sock"
        );
        assert_eq!(
            value(&a, "-chardev", "console"),
            "socket,id=console,server=on,wait=off,path=/srv/out/vm/optiplex-1/console.sock,\
             logfile=/srv/out/vm/optiplex-1/serial.log,logappend=on"
        );
        assert!(value(&a, "-smbios", "").ends_with("kernel-cmdline-extra=systemd.journald.forward_to_console=1"));
        assert!(a.contains(&"-daemonize".to_string()));
        check_contained(&node_args(&NodeVm {
            name: "n",
            accel: Accel::Kvm,
            settings: &settings(),
            files: &state.node("n"),
            mac: "52:54:00:00:00:01",
            sata: None,
            hub: &state.hub_socket(),
            rtc_base: None,
        }))
        .unwrap();
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_a_node_without_disk_gets_no_sata_controller() {
        let state = StateDir::resolve(Path::new("out"), None);
        let a = node(&state, Accel::Kvm, None);
        assert_eq!(value(&a, "-accel", ""), "kvm");
        assert_eq!(value(&a, "-cpu", ""), "host");
        assert!(!a.iter().any(|x| x.contains("ahci") || x.contains("sata")), "{a:?}");
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let state = StateDir::resolve(Path::new("/srv/a,b"), None);
        let a = node(&state, Accel::Tcg, None);
        assert_eq!(
            value(&a, "-drive", "boot"),
            "if=none,id=boot,format=qcow2,file=/srv/a,,b/vm/optiplex-1/boot.qcow2"
        );
    }

    fn hostnet() -> Vec<OsString> {
        let forwards = [
            Forward {
                what: "API".into(),
                host_port: 40001,
                guest: Ipv4Addr::new(10, 77, 0, 10),
                guest_port: 6443,
            },
            Forward {
                what: "ssh optiplex-1".into(),
                host_port: 40002,
                guest: Ipv4Addr::new(10, 77, 0, 21),
                guest_port: 22,
            },
        ];
        hostnet_args(&HostNet {
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            dns: Ipv4Addr::new(10, 77, 0, 254),
            dhcp_start: Ipv4Addr::new(10, 77, 0, 238),
            forwards: &forwards,
            hub: &PathBuf::from("/srv/out/vm/hub.sock"),
            pidfile: &PathBuf::from("/srv/out/vm/net.pid"),
        })
    }

    #[test]
    fn the_host_joins_the_segment_restricted_with_loopback_forwards_only() {
        let args = hostnet();
        let a = strings(&args);
        assert_eq!(
            value(&a, "-netdev", "user"),
            "user,id=host,restrict=on,ipv6=off,net=10.77.0.0/24,host=10.77.0.1,dns=10.77.0.254,dhcpstart=10.77.0.238,\
             hostfwd=tcp:127.0.0.1:40001-10.77.0.10:6443,hostfwd=tcp:127.0.0.1:40002-10.77.0.21:22"
        );
        assert_eq!(value(&a, "-netdev", "netdev=host"), "hubport,id=p0,hubid=0,netdev=host");
        assert_eq!(value(&a, "-netdev", "netdev=lan"), "hubport,id=p1,hubid=0,netdev=lan");
        assert_eq!(value(&a, "-machine", ""), "none");
        check_contained(&args).unwrap();
    }

    #[test]
    fn every_user_netdev_must_be_restricted_and_forward_from_loopback_only() {
        let check = |v: &[&str]| check_contained(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(check(&["-netdev", "user,id=u"]).is_err());
        assert!(check(&["-netdev", "user,id=u,restrict=off"]).is_err());
        assert!(check(&["-netdev", "user,id=u,restrict=on,hostfwd=tcp::2222-10.0.0.2:22"]).is_err());
        assert!(check(&["-netdev", "user,id=u,restrict=on,hostfwd=tcp:0.0.0.0:2222-10.0.0.2:22"]).is_err());
        assert!(check(&["-netdev", "user,id=u,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:x"]).is_err());
        assert!(check(&["-nic", "user"]).is_err());
        assert!(check(&["-net", "user,restrict=on"]).is_err());
        assert!(
            check(&[
                "-netdev",
                "user,id=u,restrict=on,hostfwd=tcp:127.0.0.1:2222-10.0.0.2:22"
            ])
            .is_ok()
        );
        assert!(check(&["-netdev", "stream,id=s,addr.type=unix,addr.path=/x"]).is_ok());
    }
}

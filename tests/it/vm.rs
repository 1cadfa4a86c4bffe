//! `kubestick vm` refusing bad input before it starts anything: each case exits 2, says
//! what is wrong and how to fix it, and leaves no VM state behind. (Booting VMs is what
//! qemu-tests/drills.sh does.)

use std::fs;
use std::path::Path;

use crate::common::*;

/// A build output directory as `kubestick build` leaves it, as far as `vm` reads it:
/// cluster.json (the rehearsal cluster with `disks` as given) and one image file per node.
fn build_output(s: &Scratch, disks: [&str; 3]) -> std::path::PathBuf {
    let out = s.path("out");
    fs::create_dir_all(&out).unwrap();
    let nodes: Vec<serde_json::Value> = (1..=3)
        .map(|i| {
            let name = format!("optiplex-{i}");
            fs::write(out.join(format!("{name}.img")), b"not a real image").unwrap();
            serde_json::json!({
                "name": name,
                "role": "control-plane",
                "ip": format!("10.77.0.2{i}"),
                "mac": format!("52:54:00:77:00:0{i}"),
                "disk": disks[i - 1],
                "image": format!("{name}.img"),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "format": 1,
        "cluster": "rehearsal",
        "subnet": "10.77.0.0/24",
        "gateway": "10.77.0.1",
        "api_vip": "10.77.0.10",
        "api_port": 6443,
        "ingress_vip": null,
        "admin_user": "kube",
        "nodes": nodes,
    });
    fs::write(
        out.join("cluster.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    out
}

const QEMU_DISKS: [&str; 3] = [
    "/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1",
    "/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE2",
    "/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE3",
];

/// Runs `kubestick vm ARGS`, expecting exit 2; returns stderr.
fn refused(args: &[&str]) -> String {
    let assert = kubestick()
        .arg("vm")
        .args(args)
        .env_remove("KUBESTICK_ACCEL")
        .assert()
        .code(2);
    String::from_utf8(assert.get_output().stderr.clone()).unwrap()
}

fn assert_no_state(out: &Path) {
    assert!(!out.join("vm").exists(), "VM state created despite bad input");
}

#[test]
fn up_without_a_build_output_says_to_build() {
    let s = Scratch::new();
    fs::create_dir_all(s.path("out")).unwrap();
    let err = refused(&["up", s.path("out").to_str().unwrap()]);
    assert!(err.contains("cluster.json does not exist"), "{err}");
    assert!(err.contains("kubestick build"), "{err}");
    assert_no_state(&s.path("out"));
}

#[test]
fn a_disk_name_qemu_cannot_produce_is_named_with_its_node() {
    let s = Scratch::new();
    let out = build_output(
        &s,
        [
            QEMU_DISKS[0],
            "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64ANS0T123456",
            "/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_S6PUNX0R123456A",
        ],
    );
    let err = refused(&["up", out.to_str().unwrap()]);
    assert!(
        err.contains(
            "node optiplex-2: /dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64ANS0T123456 cannot be given to a virtual disk"
        ),
        "{err}"
    );
    assert!(err.contains("ata-<model>_<serial>"), "{err}");
    // A real SATA disk's name can be produced (model and serial), so only one node is named.
    assert!(!err.contains("optiplex-3"), "{err}");
    assert_no_state(&out);
}

#[test]
fn an_unknown_node_lists_the_known_ones() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let err = refused(&["up", out.to_str().unwrap(), "optiplex-9"]);
    assert!(
        err.contains("no node \"optiplex-9\" in cluster rehearsal; its nodes are optiplex-1, optiplex-2, optiplex-3"),
        "{err}"
    );
    assert_no_state(&out);
}

#[test]
fn a_missing_image_says_to_build() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    fs::remove_file(out.join("optiplex-2.img")).unwrap();
    let err = refused(&["up", out.to_str().unwrap()]);
    assert!(err.contains("optiplex-2.img does not exist"), "{err}");
    assert!(err.contains("kubestick build"), "{err}");
    assert_no_state(&out);
}

#[test]
fn missing_firmware_names_the_package_and_the_option() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let missing = s.path("no/OVMF_CODE_4M.fd");
    let err = refused(&["up", out.to_str().unwrap(), "--ovmf-code", missing.to_str().unwrap()]);
    assert!(err.contains(&format!("{} does not exist", missing.display())), "{err}");
    assert!(
        err.contains("apt-get install ovmf") && err.contains("--ovmf-code"),
        "{err}"
    );
    assert_no_state(&out);
}

#[test]
fn nonsense_machine_sizes_are_refused() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let err = refused(&["up", out.to_str().unwrap(), "--memory", "64"]);
    assert!(err.contains("--memory 64 MiB is too little"), "{err}");
    let err = refused(&["up", out.to_str().unwrap(), "--cpus", "0"]);
    assert!(err.contains("--cpus"), "{err}");
    assert_no_state(&out);
}

#[test]
fn the_state_directory_cannot_be_the_image_directory() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let err = refused(&["up", out.to_str().unwrap(), "--state", out.to_str().unwrap()]);
    assert!(err.contains("must not be the image directory"), "{err}");
    assert!(!out.join("state.json").exists());
}

#[test]
fn a_state_directory_too_deep_for_sockets_is_refused() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let deep = s.path(&"d".repeat(120));
    let err = refused(&["up", out.to_str().unwrap(), "--state", deep.to_str().unwrap()]);
    assert!(
        err.contains("too deep for unix sockets") && err.contains("--state"),
        "{err}"
    );
    assert!(!deep.exists());
}

#[test]
fn commands_on_vms_that_were_never_started_say_how_to_start_them() {
    let s = Scratch::new();
    let out = build_output(&s, QEMU_DISKS);
    let out = out.to_str().unwrap();
    for args in [
        vec!["status", "-o", out],
        vec!["console", "optiplex-1", "-o", out],
        vec!["stop", "optiplex-1", "-o", out],
        vec!["start", "optiplex-1", "-o", out],
        vec!["down", "-o", out],
        vec!["destroy", "-o", out],
    ] {
        let err = refused(&args);
        assert!(
            err.contains("no VMs here") && err.contains("kubestick vm up"),
            "{args:?}: {err}"
        );
    }
    assert_no_state(Path::new(out));
}

#[test]
fn help_explains_where_things_are() {
    let out = kubestick().args(["vm", "up", "--help"]).assert().success();
    let help = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for needle in [
        "cluster.json",
        "OUT_DIR/vm",
        "127.0.0.1",
        "--accel",
        "KUBESTICK_ACCEL",
        "--ovmf-code",
    ] {
        assert!(help.contains(needle), "{needle} missing from `vm up --help`:\n{help}");
    }
}

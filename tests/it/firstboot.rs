//! The first-boot scripts' decisions, run for real with the commands that would touch the
//! machine's own state (findmnt, lsblk, LVM) replaced by recording doubles. Tools that work
//! on a plain file (sfdisk, wipefs, mkfs, dd) stay real, so a "disk" here is a file behind
//! a /dev/disk/by-id style symlink.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::*;

const DISK_SIZE: u64 = 128 << 20;

/// The rendered first-boot scripts (node-independent, so any example will do).
fn script(name: &str) -> PathBuf {
    static RENDERED: OnceLock<(Scratch, PathBuf)> = OnceLock::new();
    RENDERED
        .get_or_init(|| render_example("homelab"))
        .1
        .join("common/files/usr/local/lib/kubestick")
        .join(name)
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
    // The API at the VIP "answers" once FAKE_API_AFTER earlier looks have failed (never when
    // unset); the node's own API server (at its address) answers unless FAKE_LOCAL_API_DOWN.
    (
        "curl",
        "case \"$*\" in */version*) ip=${*##*https://}; ip=${ip%%:*}\n\
           r=$(printf '%s\\n' $(cat \"$FAKE_DIR/cp-releases\" 2>/dev/null || echo \"${FAKE_CP_RELEASES:-}\") | sed -n \"s/^$ip=//p\"); [ \"$r\" != down ] || exit 7\n\
           printf '{\\n  \"major\": \"1\",\\n  \"gitVersion\": \"v%s\",\\n  \"platform\": \"linux/amd64\"\\n}\\n' \"${r:-1.36.4}\"; exit 0;; esac\n\
         case \"$*\" in *https://10.77.0.2*) [ -z \"${FAKE_LOCAL_API_DOWN:-}\" ] && exit 0; exit 7;; esac\n\
         n=$(cat \"$FAKE_DIR/looks\" 2>/dev/null || echo 0); echo $((n + 1)) > \"$FAKE_DIR/looks\"\n\
         [ -n \"${FAKE_API_AFTER:-}\" ] && [ \"$n\" -ge \"$FAKE_API_AFTER\" ] && exit 0\nexit 7",
    ),
    (
        "systemctl",
        "unit=$(eval echo \\${$#}); step=${unit#kubestick-}; step=${step%.service}\neval echo \\${FAKE_ACTIVE_$step:-inactive}",
    ),
    ("hostname", "echo cp-2"),
    // The CRI client: FAKE_PODS_LEFT are the pod sandboxes a failed kubeadm reset left.
    (
        "crictl",
        "case \"$*\" in *' pods -q'*) printf '%s' \"${FAKE_PODS_LEFT:-}\";;\n\
         ps\\ *) n=$(echo \"$*\" | sed -n 's/.*--name ^\\([a-z-]*\\).*/\\1/p')\n\
           [ -e \"$FAKE_DIR/stopped-$n\" ] && echo \"new-$n\" || echo \"old-$n\";;\n\
         stop\\ *) touch \"$FAKE_DIR/stopped-${2#old-}\";;\n\
         esac",
    ),
    // containerd's client: imports keep the tar stream; the list is what the stream's
    // index.json names, less FAKE_CTR_LOSES (an import that lost an image).
    (
        "ctr",
        "case \"$*\" in\n\
         *' version') [ -z \"${FAKE_CTR_DOWN:-}\" ] || exit 1;;\n\
         *' images import '*) cat > \"$FAKE_DIR/imported.tar\";;\n\
         *' images list '*) tar -xOf \"$FAKE_DIR/imported.tar\" ./index.json | python3 -c 'import json, sys\n\
         for m in json.load(sys.stdin)[\"manifests\"]: print(m[\"annotations\"][\"io.containerd.image.name\"])' | grep -vxF \"${FAKE_CTR_LOSES:-(none)}\";;\n\
         esac",
    ),
    // Time passes while a script waits: the cluster gets created meanwhile.
    (
        "sleep",
        "[ -z \"${FAKE_BOOTSTRAP_DURING_SLEEP:-}\" ] || touch \"$FAKE_DIR/state/bootstrap.done\"\n\
         [ -z \"${FAKE_TURN_FREED_DURING_SLEEP:-}\" ] || rm -f \"$FAKE_DIR/lease\"\n\
         touch \"$FAKE_DIR/slept\"\n\
         [ -z \"${FAKE_CP_READY_AFTER_SLEEP:-}\" ] || printf '%b' \"$FAKE_CP_READY_AFTER_SLEEP\" > \"$FAKE_DIR/cp-ready\"\n\
         [ -z \"${FAKE_CP_RELEASES_AFTER_SLEEP:-}\" ] || echo \"$FAKE_CP_RELEASES_AFTER_SLEEP\" > \"$FAKE_DIR/cp-releases\"",
    ),
    (
        "kubeadm",
        "case \"$*\" in 'join phase etcd-join '*) n=$(cat \"$FAKE_DIR/etcd-joins\" 2>/dev/null || echo 0); echo $((n + 1)) > \"$FAKE_DIR/etcd-joins\"\n\
           [ \"$n\" -ge \"${FAKE_ETCD_JOIN_FAILS:-0}\" ] || exit 1;; esac\n\
         case \"$* \" in *\" phase ${FAKE_FAIL_PHASE:-(none)} \"*) n=$(cat \"$FAKE_DIR/phase-fails\" 2>/dev/null || echo 0); echo $((n + 1)) > \"$FAKE_DIR/phase-fails\"\n\
           [ \"$n\" -ge \"${FAKE_FAIL_TIMES:-0}\" ] || exit 1;; esac\n\
         case \"$1\" in kubeconfig) echo 'apiVersion: v1';; init|join) [ -z \"${FAKE_KUBEADM_FAIL:-}\" ] || exit 1;;\n\
           certs) [ ! -x \"$FAKE_DIR/renew\" ] || \"$FAKE_DIR/renew\";; esac",
    ),
    (
        "kubectl",
        "case \"$*\" in\n\
         *' get node '*) [ -n \"${FAKE_NODE_EXISTS:-}\" ] || exit 1;;\n\
         *' get pods '*) printf 'etcd-cp-1\\netcd-cp-2\\netcd-cp-3\\n';;\n\
         *' get configmap kubeadm-config -o jsonpath'*) [ -z \"${FAKE_API_BUSY:-}\" ] || exit 1\n\
           [ -z \"${FAKE_CONFIG_BUSY:-}\" ] || [ -e \"$FAKE_DIR/slept\" ] || exit 1\n\
           printf 'apiVersion: kubeadm.k8s.io/v1beta4\\nkind: ClusterConfiguration\\nkubernetesVersion: v%s\\n' \"$(cat \"$FAKE_DIR/cluster-release\" 2>/dev/null || echo \"${FAKE_CLUSTER_RELEASE:-1.36.4}\")\";;\n\
         *' get configmap kubeadm-config -o yaml'*) printf 'apiVersion: v1\\nkind: ConfigMap\\ndata:\\n  ClusterConfiguration: |\\n    kind: ClusterConfiguration\\n    kubernetesVersion: v%s\\nmetadata:\\n  resourceVersion: \"7\"\\n' \"$(cat \"$FAKE_DIR/cluster-release\" 2>/dev/null || echo \"${FAKE_CLUSTER_RELEASE:-1.36.4}\")\";;\n\
         *' get nodes -l node-role.kubernetes.io/control-plane'*) cat \"$FAKE_DIR/cp-ready\" 2>/dev/null || printf '%b' \"${FAKE_CP_READY:-cp-1=True\\ncp-2=True\\ncp-3=True\\n}\";;\n\
         *' get nodes -o jsonpath'*kubeletVersion*) printf '%b' \"${FAKE_KUBELETS:-cp-1=v1.36.4\\ncp-2=v1.36.4\\ncp-3=v1.36.4\\n}\";;\n\
         *' get daemonset kube-proxy '*) echo \"registry.k8s.io/kube-proxy:v${FAKE_PROXY_RELEASE:-1.36.4}\";;\n\
         *' member list'*) printf '%b' \"${FAKE_ETCD_MEMBERS:-}\";;\n\
         *' create -f -'*) [ ! -e \"$FAKE_DIR/lease\" ] && [ -z \"${FAKE_API_BUSY:-}\" ] || exit 1\n\
           echo \"$(sed -n 's/.*holderIdentity: //p') now 1\" > \"$FAKE_DIR/lease\";;\n\
         *' get lease '*) [ -z \"${FAKE_API_BUSY:-}\" ] || exit 1\n\
           if [ ! -e \"$FAKE_DIR/lease\" ]; then case \"$*\" in *--ignore-not-found*) exit 0;; *) exit 1;; esac; fi\n\
           read -r holder taken rv < \"$FAKE_DIR/lease\"\n\
           case \"$*\" in *resourceVersion*) echo \"$holder $taken $rv\";; *) echo \"$holder\";; esac;;\n\
         *' replace -f -'*) in=$(cat)\n\
           case \"$in\" in *'kind: ConfigMap'*) printf '%s\\n' \"$in\" | sed -n 's/^ *kubernetesVersion: v//p' > \"$FAKE_DIR/cluster-release\"; exit 0;; esac\n\
           read -r holder taken rv < \"$FAKE_DIR/lease\"\n\
            printf '%s\\n' \"$in\" | grep -qx \"  resourceVersion: \\\"$rv\\\"\" || exit 1\n\
           echo \"$(printf '%s\\n' \"$in\" | sed -n 's/.*holderIdentity: //p') now $((rv + 1))\" > \"$FAKE_DIR/lease\";;\n\
         *' delete lease '*) rm -f \"$FAKE_DIR/lease\";;\n\
         *'get --raw /readyz'*) n=$(cat \"$FAKE_DIR/ready-looks\" 2>/dev/null || echo 0); echo $((n + 1)) > \"$FAKE_DIR/ready-looks\"\n\
           [ \"$n\" -ge \"${FAKE_READY_AFTER:-0}\" ] || exit 1;;\n\
         *'apply '*) case \"$*\" in *\"${FAKE_APPLY_FAIL:-(none)}\"*) exit 1;; esac;;\n\
         esac",
    ),
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
        self.run_script("storage", extra_env)
    }

    fn run_script(&self, name: &str, extra_env: &[(&str, &str)]) -> Output {
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.path("bin").display());
        let mut cmd = Command::new("bash");
        cmd.arg(script(name))
            .env_clear()
            .env("PATH", path)
            .env("KUBESTICK_ENV", self.path("node.env"))
            .env("KUBESTICK_STATE", self.path("state"))
            .env("KUBESTICK_DISK_WAIT", "1")
            .env("RECORD", self.path("calls"))
            .env("FAKE_ROOT_SOURCE", self.path("dev/sda3"))
            .env("FAKE_BOOT_DISK", "sda")
            .env("FAKE_DIR", self.dir.path())
            .env("KUBESTICK_CONF", self.path("conf"))
            .env("KUBESTICK_K8S", self.path("k8s"))
            .env("KUBESTICK_ETCD_DATA", self.path("etcd"))
            .env("KUBESTICK_WAIT_FIRST", "0")
            .env("KUBESTICK_WAIT_MAX", "0")
            .env("KUBESTICK_RUN", self.path("run"))
            .env("KUBESTICK_CONSOLE", self.path("console"));
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

impl Machine {
    /// Runs the bootstrap, which must succeed; its output.
    fn bootstrap_ok(&self, extra_env: &[(&str, &str)]) -> String {
        let out = self.run_script("bootstrap", extra_env);
        let text = log(&out);
        assert!(out.status.success(), "{text}");
        text
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

// --- bootstrap ---------------------------------------------------------------------

/// A node of the five-node example: `node` with `role`; cp-1 creates the cluster.
fn bootstrap_machine(node: &str, role: &str) -> Machine {
    let m = Machine::new("if-not-osd");
    fs::write(
        m.path("node.env"),
        format!(
            "KUBESTICK_NODE={node}\nKUBESTICK_NODE_IP=10.77.0.2{}\nKUBESTICK_ROLE={role}\nKUBESTICK_INIT_NODE=cp-1\nKUBESTICK_API_ENDPOINT=10.77.0.10:6443\n\
             KUBESTICK_KUBERNETES_VERSION=1.36.4\nKUBESTICK_CONTROL_PLANE=\"10.77.0.21 10.77.0.22 10.77.0.23\"\n",
            node.chars().last().unwrap()
        ),
    )
    .unwrap();
    fs::create_dir_all(m.path("conf")).unwrap();
    for f in ["kubeadm-init.yaml", "kubeadm-join.yaml", "kubeadm-cluster.yaml"] {
        fs::write(m.path(&format!("conf/{f}")), "kind: test\n").unwrap();
    }
    fs::write(m.path("conf/ca.crt"), "the cluster CA\n").unwrap();
    // Only control-plane nodes carry the CAs kubeadm uses (a worker's join writes its own).
    if role == "control-plane" {
        fs::create_dir_all(m.path("k8s/pki/etcd")).unwrap();
        fs::write(m.path("k8s/pki/ca.crt"), "the cluster CA\n").unwrap();
        fs::write(m.path("k8s/pki/etcd/ca.key"), "the etcd CA key\n").unwrap();
    }
    fs::create_dir_all(m.path("state")).unwrap();
    fs::write(m.path("state/images.done"), "2026-11-24T09:00:00Z imported 7 images\n").unwrap();
    m
}

/// The recorded commands, first word and subcommand, in order.
fn commands(m: &Machine) -> Vec<String> {
    m.calls()
        .lines()
        .filter(|l| {
            ["kubeadm ", "kubectl ", "vgchange ", "vgremove ", "pvremove "]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// kubeadm init as the bootstrap runs it: the local phases in one go, then each phase that
/// needs the new API server on its own.
fn init_calls(m: &Machine) -> Vec<String> {
    let config = m.path("conf/kubeadm-init.yaml");
    let config = config.display();
    let mut calls = vec![format!(
        "kubeadm init --config {config} --skip-phases wait-control-plane,upload-config,upload-certs,mark-control-plane,bootstrap-token,kubelet-finalize,addon,show-join-command"
    )];
    for phase in [
        "upload-config all",
        "mark-control-plane",
        "bootstrap-token",
        "kubelet-finalize all",
        "addon all",
    ] {
        calls.push(format!("kubeadm init phase {phase} --config {config}"));
    }
    calls
}

fn kubeadm_calls(m: &Machine) -> Vec<String> {
    m.calls()
        .lines()
        .filter(|l| l.starts_with("kubeadm "))
        .map(String::from)
        .collect()
}

#[test]
fn the_init_node_creates_the_cluster_when_no_api_answers() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let text = m.bootstrap_ok(&[]);
    assert!(text.contains("this is the init node, creating the cluster"), "{text}");
    assert_eq!(kubeadm_calls(&m), init_calls(&m));
    let done = fs::read_to_string(m.path("state/bootstrap.done")).unwrap();
    assert!(done.contains("created the cluster"), "{done}");
    assert!(done.contains("(attempt 1, 0 phase retries)"), "{done}");
}

#[test]
fn a_failed_init_phase_is_retried_on_its_own_without_a_reset() {
    // A call of kubeadm's misses its deadline on a busy PC: that phase alone is tried again;
    // the certificates, manifests and kubelet kubeadm wrote before it stay.
    let m = bootstrap_machine("cp-1", "control-plane");
    let text = m.bootstrap_ok(&[("FAKE_FAIL_PHASE", "upload-config"), ("FAKE_FAIL_TIMES", "2")]);
    assert!(
        text.contains("kubeadm init phase upload-config all failed (try 2 of 6); again in 20s"),
        "{text}"
    );
    let calls = kubeadm_calls(&m);
    let mut want = init_calls(&m);
    want.splice(1..1, [want[1].clone(), want[1].clone()]);
    assert_eq!(calls, want);
    let done = fs::read_to_string(m.path("state/bootstrap.done")).unwrap();
    assert!(done.contains("(attempt 1, 2 phase retries)"), "{done}");
}

#[test]
fn the_init_node_waits_for_its_own_api_server_before_the_phases_that_need_it() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let out = m.run_script(
        "bootstrap",
        &[("FAKE_LOCAL_API_DOWN", "1"), ("KUBESTICK_API_WAIT", "30")],
    );
    let text = log(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("waiting for this node's API server to answer (0s so far)"),
        "{text}"
    );
    assert!(
        text.contains("this node's API server did not answer within 30s"),
        "{text}"
    );
    assert_eq!(kubeadm_calls(&m), init_calls(&m)[..1]);
    // Started again by systemd, it continues once the API server answers.
    fs::write(m.path("k8s/kubelet.conf"), "from kubeadm init\n").unwrap();
    let text = m.bootstrap_ok(&[]);
    assert!(text.contains("this node's API server answers after 0s"), "{text}");
    assert_eq!(kubeadm_calls(&m), init_calls(&m));
}

#[test]
fn the_init_node_continues_after_its_local_phases_when_started_again() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let failing = [("FAKE_FAIL_PHASE", "upload-config"), ("FAKE_FAIL_TIMES", "6")];
    let out = m.run_script("bootstrap", &failing);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(m.path("state/init-local.done").exists());
    // What kubeadm's local phases left: a reset would throw it away.
    fs::write(m.path("k8s/kubelet.conf"), "from kubeadm init\n").unwrap();
    fs::remove_file(m.path("calls")).unwrap();
    let text = m.bootstrap_ok(&[]);
    assert!(
        text.contains(
            "kubeadm init wrote this node's control plane in an earlier attempt; continuing with the phases after it"
        ),
        "{text}"
    );
    assert_eq!(kubeadm_calls(&m), init_calls(&m)[1..]);
    let done = fs::read_to_string(m.path("state/bootstrap.done")).unwrap();
    assert!(done.contains("(attempt 2, 5 phase retries)"), "{done}");
}

#[test]
fn an_init_that_fails_twice_more_after_its_local_phases_starts_over() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let failing = [("FAKE_FAIL_PHASE", "mark-control-plane"), ("FAKE_FAIL_TIMES", "99")];
    for _ in 0..3 {
        let out = m.run_script("bootstrap", &failing);
        assert_eq!(out.status.code(), Some(1), "{}", log(&out));
        fs::write(m.path("k8s/kubelet.conf"), "from kubeadm init\n").unwrap();
    }
    // Two continuations failed: the third start resets and begins again.
    fs::remove_file(m.path("calls")).unwrap();
    let text = m.bootstrap_ok(&[]);
    assert!(
        text.contains("continuing kubeadm init failed twice; starting over"),
        "{text}"
    );
    let calls = kubeadm_calls(&m);
    assert_eq!(calls[0], "kubeadm reset --force");
    assert_eq!(calls[1..], init_calls(&m));
    assert!(!m.path("state/init-resumes").exists());
}

#[test]
fn other_control_plane_nodes_wait_then_join() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "2")]);
    assert_eq!(
        text.matches("waiting for the API at https://10.77.0.10:6443 (the cluster is created by cp-1)")
            .count(),
        2,
        "{text}"
    );
    // Nothing stale to forget: the node is unknown and etcd does not list it.
    // The cluster's release (the stick's), take the turn, get node, get the etcd pods, member
    // list; join; kube-proxy already of this release; give the turn back.
    assert_eq!(
        commands(&m),
        [
            "kubeadm kubeconfig",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
            "kubeadm join",
            "kubeadm join",
            "kubeadm join",
            "kubeadm join",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
            "kubectl --kubeconfig",
        ],
        "{}",
        m.calls()
    );
    assert!(!m.calls().contains("member remove") && !m.calls().contains("delete node"));
    let calls = m.calls();
    let join = calls.find("kubeadm join").unwrap();
    assert!(calls.find("create -f -").unwrap() < join, "{calls}");
    assert!(
        calls.find("delete lease kubestick-control-plane-join").unwrap() > join,
        "{calls}"
    );
    assert!(!m.path("lease").exists(), "the turn is given back");
    assert!(text.contains("took the control-plane join turn"), "{text}");
    // The join in kubeadm's phase order, etcd's on its own so that it can be retried.
    let join = m.path("conf/kubeadm-join.yaml");
    let joins: Vec<&str> = calls.lines().filter(|l| l.starts_with("kubeadm join")).collect();
    assert_eq!(
        joins,
        [
            format!(
                "kubeadm join --config {} --skip-phases etcd-join,kubelet-wait-bootstrap,control-plane-join,wait-control-plane",
                join.display()
            ),
            format!("kubeadm join phase etcd-join --config {}", join.display()),
            format!("kubeadm join phase kubelet-wait-bootstrap --config {}", join.display()),
            format!("kubeadm join phase control-plane-join all --config {}", join.display()),
        ]
    );
    assert!(!calls.contains("kubeadm init"));
    assert!(
        !calls.contains("kubeadm upgrade") && !calls.contains("replace -f -"),
        "{calls}"
    );
}

#[test]
fn workers_and_late_joiners_join_an_answering_api() {
    let m = bootstrap_machine("worker-1", "worker");
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    assert_eq!(
        commands(&m),
        ["kubeadm join"],
        "a worker has no CA key and needs no cleanup"
    );
    assert!(log(&out).contains("joined the cluster at https://10.77.0.10:6443 as worker"));
}

// --- releases: upgrading by re-flashing -------------------------------------------------

#[test]
fn a_control_plane_stick_of_the_next_minor_release_moves_the_cluster_to_it() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let text = m.bootstrap_ok(&[
        ("FAKE_API_AFTER", "0"),
        ("FAKE_CLUSTER_RELEASE", "1.35.8"),
        ("FAKE_PROXY_RELEASE", "1.35.8"),
        ("FAKE_KUBELETS", "cp-1=v1.35.8\ncp-2=v1.36.4\ncp-3=v1.35.8\n"),
    ]);
    assert!(
        text.contains(
            "upgrading the cluster from Kubernetes 1.35.8 to 1.36.4 (every other control-plane node is Ready)"
        ),
        "{text}"
    );
    // The ClusterConfiguration now names the stick's release, so kubeadm join deployed it.
    assert_eq!(fs::read_to_string(m.path("cluster-release")).unwrap().trim(), "1.36.4");
    let calls = m.calls();
    let (turn, replace, join) = (
        calls.find("create -f -").unwrap(),
        calls.find("replace -f -").unwrap(),
        calls.find("kubeadm join").unwrap(),
    );
    assert!(
        turn < replace && replace < join,
        "moved while holding the turn, before the join: {calls}"
    );
    // kube-proxy and CoreDNS stay on 1.35 while other nodes run it (their sticks lack 1.36's).
    assert!(
        text.contains("kube-proxy and CoreDNS stay on v1.35.8 until every node runs 1.36.4 (not yet: cp-1 cp-3 )"),
        "{text}"
    );
    assert!(!calls.contains("kubeadm upgrade"), "{calls}");
    assert!(!m.path("lease").exists(), "the turn is given back");
    let done = fs::read_to_string(m.path("state/bootstrap.done")).unwrap();
    assert!(done.contains("as control-plane (Kubernetes 1.36.4)"), "{done}");
}

#[test]
fn the_add_ons_move_to_the_new_release_once_every_node_runs_it() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let admin = m.path("k8s/admin.conf");
    let upgrade = format!("kubeadm upgrade node phase addon all --kubeconfig {}", admin.display());
    // A worker is still on 1.35.8: nothing moves, and it says why.
    let env = [
        ("FAKE_PROXY_RELEASE", "1.35.8"),
        ("FAKE_KUBELETS", "cp-1=v1.36.4\nworker-1=v1.35.8\n"),
    ];
    let out = m.run_script("upgrade", &env);
    assert!(out.status.success(), "{}", log(&out));
    assert!(
        log(&out).contains("stay on v1.35.8 until every node runs 1.36.4 (not yet: worker-1 )"),
        "{}",
        log(&out)
    );
    assert!(!m.calls().contains("kubeadm upgrade"));
    // Every node on 1.36.4: kubeadm moves them.
    let env = [
        ("FAKE_PROXY_RELEASE", "1.35.8"),
        ("FAKE_KUBELETS", "cp-1=v1.36.4\nworker-1=v1.36.4\n"),
    ];
    let out = m.run_script("upgrade", &env);
    assert!(out.status.success(), "{}", log(&out));
    assert!(m.calls().contains(&upgrade), "{}", m.calls());
    // Done: one call, nothing else.
    let before = m.calls().lines().count();
    let out = m.run_script("upgrade", &[]);
    assert!(out.status.success(), "{}", log(&out));
    let calls = m.calls();
    let new: Vec<&str> = calls.lines().skip(before).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("get daemonset kube-proxy"), "{new:?}");
}

#[test]
fn a_cluster_release_that_cannot_be_read_is_waited_for() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "0"), ("FAKE_CONFIG_BUSY", "1")]);
    assert!(
        text.contains("could not read the cluster's release from its ClusterConfiguration"),
        "{text}"
    );
    let calls = m.calls();
    assert!(
        calls.find("sleep").unwrap() < calls.find("kubeadm join").unwrap(),
        "{calls}"
    );
    assert!(m.path("state/bootstrap.done").exists());
}

#[test]
fn an_upgrade_waits_until_every_other_control_plane_node_is_ready() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let text = m.bootstrap_ok(&[
        ("FAKE_API_AFTER", "0"),
        ("FAKE_CLUSTER_RELEASE", "1.35.8"),
        ("FAKE_CP_READY", "cp-1=True\ncp-2=False\ncp-3=False\n"),
        ("FAKE_CP_READY_AFTER_SLEEP", "cp-1=True\ncp-2=False\ncp-3=True\n"),
    ]);
    assert!(
        text.contains("waits for the other control-plane nodes to be Ready (not Ready: cp-3 )"),
        "this node's own old Node does not count: {text}"
    );
    let calls = m.calls();
    // The turn was given back while waiting, and the ClusterConfiguration moved only after.
    let first_wait = calls.find("delete lease").unwrap();
    assert!(calls.find("replace -f -").unwrap() > first_wait, "{calls}");
    assert_eq!(fs::read_to_string(m.path("cluster-release")).unwrap().trim(), "1.36.4");
    assert!(m.path("state/bootstrap.done").exists());
}

#[test]
fn a_stick_older_than_the_cluster_or_a_minor_release_too_far_is_refused_before_kubeadm_runs() {
    for (cluster, says) in [
        (
            "1.37.0",
            "older than the cluster's 1.37.0 (Kubernetes does not downgrade): flash a stick built with kubernetes_version = \"1.37.0\" or newer",
        ),
        ("1.36.5", "older than the cluster's 1.36.5"),
        (
            "1.34.2",
            "but the cluster runs 1.34.2: Kubernetes upgrades one minor release at a time",
        ),
    ] {
        let m = bootstrap_machine("cp-2", "control-plane");
        let env = [("FAKE_API_AFTER", "0"), ("FAKE_CLUSTER_RELEASE", cluster)];
        let text = m.bootstrap_ok(&env);
        assert!(
            text.contains(&format!("REFUSED: this stick carries Kubernetes 1.36.4, {says}")),
            "{text}"
        );
        let refused = fs::read_to_string(m.path("state/bootstrap.refused")).unwrap();
        assert!(refused.contains(says), "{refused}");
        let calls = m.calls();
        assert!(
            !calls.contains("kubeadm join") && !calls.contains("kubeadm reset") && !calls.contains("create -f -"),
            "nothing of kubeadm's ran, no turn taken: {calls}"
        );
        assert!(!m.path("state/bootstrap.done").exists());
        // Started again (a reboot): still refused, still nothing run; the banner says it.
        let before = m.calls();
        let text = m.bootstrap_ok(&env);
        assert!(text.contains("REFUSED"), "{text}");
        assert_eq!(m.calls(), before);
        let status = m.run_script("status", &[("FAKE_ACTIVE_bootstrap", "active")]);
        assert!(status.status.success(), "{}", log(&status));
        let banner = fs::read_to_string(m.path("run/status")).unwrap();
        assert!(
            banner.contains(&format!(
                "bootstrap  REFUSED: this stick carries Kubernetes 1.36.4, {says}"
            )),
            "{banner}"
        );
    }
}

#[test]
fn a_worker_stick_newer_than_the_control_plane_waits_for_it_then_joins() {
    let m = bootstrap_machine("worker-1", "worker");
    let text = m.bootstrap_ok(&[
        ("FAKE_API_AFTER", "0"),
        (
            "FAKE_CP_RELEASES",
            "10.77.0.21=1.36.4 10.77.0.22=1.35.8 10.77.0.23=down",
        ),
        (
            "FAKE_CP_RELEASES_AFTER_SLEEP",
            "10.77.0.21=1.36.4 10.77.0.22=1.36.4 10.77.0.23=1.36.4",
        ),
    ]);
    assert!(
        text.contains("a control-plane API server runs 1.35.8: a kubelet may not be newer than its API server"),
        "{text}"
    );
    let calls = m.calls();
    assert!(
        calls.find("sleep").unwrap() < calls.find("kubeadm join").unwrap(),
        "{calls}"
    );
    assert!(m.path("state/bootstrap.done").exists());

    // After the upgrade, a worker stick of the old release is refused.
    let m = bootstrap_machine("worker-1", "worker");
    let text = m.bootstrap_ok(&[
        ("FAKE_API_AFTER", "0"),
        (
            "FAKE_CP_RELEASES",
            "10.77.0.21=1.37.1 10.77.0.22=1.37.1 10.77.0.23=1.37.1",
        ),
    ]);
    assert!(
        text.contains("REFUSED: this stick carries Kubernetes 1.36.4, older than the cluster's 1.37.1"),
        "{text}"
    );
    assert!(!m.calls().contains("kubeadm join"));
}

#[test]
fn a_reflashed_init_node_joins_instead_of_creating_a_second_cluster() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(
        !m.calls().contains("kubeadm init") && m.calls().contains("kubeadm join"),
        "{}",
        m.calls()
    );
}

#[test]
fn a_reflashed_control_plane_node_replaces_its_stale_etcd_member_and_node() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let members = "8e9e05c52164694d, started, cp-1, https://10.77.0.21:2380, https://10.77.0.21:2379, false\n\
                   3a57933972cb5131, started, cp-2, https://10.77.0.22:2380, https://10.77.0.22:2379, false\n";
    let text = m.bootstrap_ok(&[
        ("FAKE_API_AFTER", "0"),
        ("FAKE_NODE_EXISTS", "1"),
        ("FAKE_ETCD_MEMBERS", members),
    ]);
    assert!(
        text.contains("etcd still lists cp-2 (member 3a57933972cb5131, from an earlier life or attempt of this node)"),
        "{text}"
    );
    let calls = m.calls();
    let delete = calls.find("delete node cp-2").expect("Node object deleted");
    let remove = calls
        .find("member remove 3a57933972cb5131")
        .expect("etcd member removed");
    let join = calls.find("kubeadm join").expect("joined");
    assert!(delete < join && remove < join, "{calls}");
    // It asked a member other than itself.
    assert!(calls.contains("exec etcd-cp-1 -- etcdctl"), "{calls}");
    assert!(
        !m.path("state/bootstrap-admin.conf").exists(),
        "the temporary admin credential is removed"
    );
}

fn utc_now() -> String {
    let out = run_tool("date", &["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn control_plane_nodes_join_one_at_a_time() {
    // cp-3 took the turn a moment ago and is joining: cp-2 waits until it is given back.
    let m = bootstrap_machine("cp-2", "control-plane");
    fs::write(m.path("lease"), format!("cp-3 {} 7\n", utc_now())).unwrap();
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "0"), ("FAKE_TURN_FREED_DURING_SLEEP", "1")]);
    assert!(
        text.contains("waiting for cp-3 to finish joining the control plane"),
        "{text}"
    );
    let calls = m.calls();
    let slept = calls.find("sleep ").expect("waited");
    let etcd = calls.find("get pods").expect("looked at etcd");
    assert!(slept < etcd, "etcd is left alone until the turn is ours: {calls}");
    assert_eq!(calls.matches("kubeadm join --config").count(), 1, "{calls}");
    assert!(!calls.contains("kubeadm reset"), "{calls}");
    assert!(!m.path("lease").exists(), "the turn is given back");
}

#[test]
fn a_turn_left_by_a_node_that_lost_power_is_taken_over() {
    let m = bootstrap_machine("cp-2", "control-plane");
    fs::write(m.path("lease"), "cp-3 2026-01-01T00:00:00.000000Z 7\n").unwrap();
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "0")]);
    assert!(
        text.contains("took over the control-plane join turn from cp-3"),
        "{text}"
    );
    let calls = m.calls();
    assert!(
        calls.find("replace -f -").unwrap() < calls.find("kubeadm join").unwrap(),
        "{calls}"
    );
    assert!(!calls.contains("sleep "), "a lapsed turn is not waited for: {calls}");
    assert!(!m.path("lease").exists(), "the turn is given back");
}

#[test]
fn a_node_keeps_its_turn_across_a_failed_join() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0"), ("FAKE_KUBEADM_FAIL", "1")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(
        fs::read_to_string(m.path("lease")).unwrap().starts_with("cp-2 "),
        "the failed node still holds the turn, so no other node joins into its half-done etcd change"
    );
    assert!(!m.path("state/bootstrap-admin.conf").exists());
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "0")]);
    assert!(
        text.contains("holding the control-plane join turn since an earlier attempt"),
        "{text}"
    );
    assert!(!m.path("lease").exists(), "the turn is given back");
}

#[test]
fn a_failed_worker_join_is_reset_and_retried_without_a_pki_copy() {
    let m = bootstrap_machine("worker-1", "worker");
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0"), ("FAKE_KUBEADM_FAIL", "1")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(!m.path("state/pki").exists(), "a worker has no CAs to keep");
    // What the failed join left: its kubelet.conf and the CA certificate discovery wrote.
    fs::create_dir_all(m.path("k8s/pki")).unwrap();
    fs::write(m.path("k8s/kubelet.conf"), "half\n").unwrap();
    fs::write(m.path("k8s/pki/ca.crt"), "written by kubeadm join\n").unwrap();
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(
        !m.path("k8s/pki").exists(),
        "kubeadm join would refuse a worker whose pki/ca.crt exists"
    );
    let calls = m.calls();
    assert!(
        calls.find("kubeadm reset").unwrap() < calls.rfind("kubeadm join").unwrap(),
        "{calls}"
    );
    assert!(calls.contains(&format!("--cacert {}", m.path("conf/ca.crt").display())));
}

#[test]
fn a_worker_whose_failed_join_left_only_its_ca_certificate_is_reset() {
    // A join that failed in preflight leaves no kubelet.conf, but a CA certificate written
    // by an earlier attempt: every later preflight would refuse it.
    let m = bootstrap_machine("worker-1", "worker");
    fs::create_dir_all(m.path("k8s/pki")).unwrap();
    fs::write(m.path("k8s/pki/ca.crt"), "written by kubeadm join\n").unwrap();
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(log(&out).contains("an earlier attempt left kubeadm state behind"));
    assert!(!m.path("k8s/pki").exists());
}

#[test]
fn workers_join_without_a_turn() {
    let m = bootstrap_machine("worker-1", "worker");
    fs::write(m.path("lease"), format!("cp-3 {} 7\n", utc_now())).unwrap();
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(m.path("lease").exists());
    assert_eq!(commands(&m), ["kubeadm join"]);
}

#[test]
fn a_learner_left_by_an_interrupted_join_is_removed_before_joining_again() {
    // kubeadm added cp-2 as a learner, then gave up (its etcd calls time out after 2 s on
    // a loaded machine): the member has cp-2's peer address but no name yet.
    let m = bootstrap_machine("cp-2", "control-plane");
    let members = "8e9e05c52164694d, started, cp-1, https://10.77.0.21:2380, https://10.77.0.21:2379, false\n\
                   2c8ff7f508e72bb8, unstarted, , https://10.77.0.22:2380, , true\n\
                   5a1c0ffee0000001, unstarted, , https://10.77.0.23:2380, , true\n";
    m.bootstrap_ok(&[("FAKE_API_AFTER", "0"), ("FAKE_ETCD_MEMBERS", members)]);
    let calls = m.calls();
    let remove = calls
        .find("member remove 2c8ff7f508e72bb8")
        .expect("its learner removed");
    assert!(remove < calls.find("kubeadm join").unwrap(), "{calls}");
    assert!(
        !calls.contains("member remove 5a1c0ffee0000001"),
        "another node's learner is not ours: {calls}"
    );
    assert!(!calls.contains("member remove 8e9e05c52164694d"), "{calls}");
}

#[test]
fn a_failed_etcd_join_is_retried_without_a_reset() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let text = m.bootstrap_ok(&[("FAKE_API_AFTER", "0"), ("FAKE_ETCD_JOIN_FAILS", "2")]);
    assert!(
        text.contains("kubeadm join phase etcd-join failed (try 2 of 6); again in 20s"),
        "{text}"
    );
    let calls = m.calls();
    assert_eq!(calls.matches("kubeadm join phase etcd-join").count(), 3, "{calls}");
    assert!(!calls.contains("kubeadm reset"), "{calls}");
    assert!(
        calls.rfind("phase etcd-join").unwrap() < calls.find("phase control-plane-join all").unwrap(),
        "{calls}"
    );
}

#[test]
fn an_etcd_join_failing_every_time_fails_the_attempt() {
    let m = bootstrap_machine("cp-2", "control-plane");
    let out = m.run_script("bootstrap", &[("FAKE_API_AFTER", "0"), ("FAKE_ETCD_JOIN_FAILS", "99")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    let calls = m.calls();
    assert_eq!(calls.matches("kubeadm join phase etcd-join").count(), 6, "{calls}");
    assert!(!calls.contains("phase kubelet-wait-bootstrap"), "{calls}");
    assert!(!m.path("state/bootstrap.done").exists());
}

#[test]
fn pods_and_etcd_data_a_reset_left_behind_are_removed() {
    // kubeadm reset on a busy machine gives up stopping pods; the etcd pod it left keeps
    // writing /var/lib/etcd, which the next join's preflight refuses.
    let m = bootstrap_machine("cp-1", "control-plane");
    fs::create_dir_all(m.path("etcd/member/wal")).unwrap();
    fs::write(m.path("etcd/member/wal/0.wal"), "old").unwrap();
    let text = m.bootstrap_ok(&[("FAKE_PODS_LEFT", "3f1c2e\n")]);
    assert!(text.contains("an earlier attempt left kubeadm state behind"), "{text}");
    assert!(
        text.contains("kubeadm reset left pods running; removing them"),
        "{text}"
    );
    let calls = m.calls();
    let reset = calls.find("kubeadm reset --force").unwrap();
    let rmp = calls.find("rmp --all --force").expect("the pods removed");
    assert!(reset < rmp && rmp < calls.find("kubeadm init").unwrap(), "{calls}");
    assert_eq!(fs::read_dir(m.path("etcd")).unwrap().count(), 0, "etcd's data is gone");
}

#[test]
fn a_failed_attempt_is_reset_with_the_pki_kept() {
    let m = bootstrap_machine("cp-1", "control-plane");
    let out = m.run_script("bootstrap", &[("FAKE_KUBEADM_FAIL", "1")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(!m.path("state/bootstrap.done").exists());
    // What kubeadm init left behind, and what kubeadm reset would remove.
    fs::write(m.path("k8s/kubelet.conf"), "half\n").unwrap();
    fs::remove_dir_all(m.path("k8s/pki")).unwrap();
    fs::create_dir_all(m.path("k8s/pki")).unwrap();
    let out = m.run_script("bootstrap", &[]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(log(&out).contains("an earlier attempt left kubeadm state behind"));
    let calls = m.calls();
    assert!(
        calls.find("kubeadm reset --force").unwrap() < calls.rfind("kubeadm init").unwrap(),
        "{calls}"
    );
    assert_eq!(
        fs::read_to_string(m.path("k8s/pki/etcd/ca.key")).unwrap(),
        "the etcd CA key\n",
        "the PKI is back"
    );
}

#[test]
fn bootstrap_runs_once() {
    let m = bootstrap_machine("cp-1", "control-plane");
    assert!(m.run_script("bootstrap", &[]).status.success());
    let calls = m.calls();
    let out = m.run_script("bootstrap", &[]);
    assert!(out.status.success());
    assert!(log(&out).contains("already done"));
    assert_eq!(m.calls(), calls);
}

// --- status --------------------------------------------------------------------------

#[test]
fn status_shows_each_step_for_the_console_and_ssh() {
    let m = bootstrap_machine("cp-2", "control-plane");
    fs::create_dir_all(m.path("state")).unwrap();
    fs::write(
        m.path("state/storage.done"),
        "2026-11-24T09:00:00Z cleared /dev/disk/by-id/ata-X (/dev/sdb): signatures: gpt\n",
    )
    .unwrap();
    let out = m.run_script(
        "status",
        &[
            ("FAKE_ACTIVE_prepare", "active"),
            ("FAKE_ACTIVE_bootstrap", "activating"),
            ("FAKE_ACTIVE_addons", "failed"),
        ],
    );
    assert!(out.status.success(), "{}", log(&out));
    let status = fs::read_to_string(m.path("run/status")).unwrap();
    let lines: Vec<&str> = status.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "kubestick node cp-2 (control-plane)",
            "prepare    done",
            "images     done: imported 7 images",
            "storage    done: cleared /dev/disk/by-id/ata-X (/dev/sdb): signatures: gpt",
            "bootstrap  running (journalctl -u kubestick-bootstrap.service)",
            "addons     FAILED: see journalctl -u kubestick-addons.service",
        ]
    );
    let issue = fs::read_to_string(m.path("run/issue")).unwrap();
    assert!(
        issue.starts_with("kubestick node cp-2") && !issue.contains('\\'),
        "{issue}"
    );
}

#[test]
fn status_tells_the_console_each_step_that_changed() {
    let m = bootstrap_machine("cp-1", "control-plane");
    fs::write(m.path("console"), "").unwrap();
    let console = || fs::read_to_string(m.path("console")).unwrap();
    assert!(
        m.run_script("status", &[("FAKE_ACTIVE_bootstrap", "activating")])
            .status
            .success()
    );
    assert_eq!(
        console().lines().collect::<Vec<_>>(),
        [
            "kubestick: prepare    waiting",
            "kubestick: images     done: imported 7 images",
            "kubestick: storage    waiting",
            "kubestick: bootstrap  running (journalctl -u kubestick-bootstrap.service)",
            "kubestick: addons     waiting",
        ]
    );
    fs::create_dir_all(m.path("state")).unwrap();
    fs::write(
        m.path("state/bootstrap.done"),
        "2026-11-24T09:00:00Z created the cluster\n",
    )
    .unwrap();
    assert!(m.run_script("status", &[]).status.success());
    assert_eq!(console(), "kubestick: bootstrap  done: created the cluster\n");
    assert!(m.run_script("status", &[]).status.success());
    assert_eq!(console(), "", "nothing changed, nothing said");
}

#[test]
fn status_on_other_nodes_names_the_node_that_applies_the_addons() {
    let m = bootstrap_machine("cp-2", "control-plane");
    fs::remove_file(m.path("conf/kubeadm-init.yaml")).unwrap();
    let out = m.run_script("status", &[]);
    assert!(out.status.success(), "{}", log(&out));
    let status = fs::read_to_string(m.path("run/status")).unwrap();
    assert!(status.contains("addons     applied by cp-1"), "{status}");
}

// --- addons --------------------------------------------------------------------------

fn addons_machine() -> Machine {
    let m = bootstrap_machine("cp-1", "control-plane");
    fs::create_dir_all(m.path("manifests")).unwrap();
    for f in ["traefik-crd-ingressroutes.yaml", "traefik-crd-middlewares.yaml"] {
        fs::write(m.path(&format!("manifests/{f}")), "kind: test\n").unwrap();
    }
    fs::create_dir_all(m.path("state")).unwrap();
    m
}

fn run_addons(m: &Machine, extra_env: &[(&str, &str)]) -> Output {
    let mut env = vec![
        (
            "KUBESTICK_MANIFESTS",
            m.path("manifests").to_string_lossy().into_owned(),
        ),
        ("KUBESTICK_ADDONS", "/addons".to_string()),
        (
            "KUBESTICK_KUBECONFIG",
            m.path("k8s/admin.conf").to_string_lossy().into_owned(),
        ),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    m.run_script("addons", &env)
}

/// What was applied, in order: the file names of `kubectl apply` and the waits.
fn applied(m: &Machine) -> Vec<String> {
    m.calls()
        .lines()
        .filter_map(|l| {
            if l.starts_with("kubectl apply ") {
                assert!(
                    l.contains("--server-side --force-conflicts --field-manager=kubestick"),
                    "not a server-side apply: {l}"
                );
                Some(l.rsplit('/').next().unwrap().to_string())
            } else if l.starts_with("kubectl wait ") || l.starts_with("kubectl -n cert-manager wait") {
                Some(
                    if l.contains("crd") {
                        "(crds established)"
                    } else {
                        "(webhook available)"
                    }
                    .to_string(),
                )
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn addons_wait_for_the_cluster_then_apply_network_storage_and_ingress_in_order() {
    let m = addons_machine();
    let out = run_addons(&m, &[("FAKE_BOOTSTRAP_DURING_SLEEP", "1"), ("FAKE_READY_AFTER", "2")]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("waiting for the cluster to be created (kubestick-bootstrap)"),
        "{text}"
    );
    assert!(text.contains("waiting for the API server to be ready"), "{text}");
    assert_eq!(
        applied(&m),
        [
            "flannel.yaml",
            "rook-crds.yaml",
            "rook-common.yaml",
            "rook-csi-operator.yaml",
            "(crds established)",
            "rook-operator.yaml",
            "rook-csi-images.yaml",
            "rook-cluster.yaml",
            "storageclass.yaml",
            "traefik-crd-ingressroutes.yaml",
            "traefik-crd-middlewares.yaml",
            "traefik.yaml",
            "cert-manager.yaml",
            "(crds established)",
            "(webhook available)",
            "cluster-issuer.yaml",
        ]
    );
    // Every kubectl call used the cluster's admin credential.
    let done = fs::read_to_string(m.path("state/addons.done")).unwrap();
    assert!(
        done.contains("applied flannel, rook-ceph, traefik, cert-manager"),
        "{done}"
    );
}

#[test]
fn a_failed_apply_is_retried_whole_and_a_finished_run_is_not_repeated() {
    let m = addons_machine();
    fs::write(m.path("state/bootstrap.done"), "created\n").unwrap();
    let out = run_addons(&m, &[("FAKE_APPLY_FAIL", "rook-operator.yaml")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(!m.path("state/addons.done").exists());
    assert!(!applied(&m).contains(&"traefik.yaml".to_string()));

    let out = run_addons(&m, &[]);
    assert!(out.status.success(), "{}", log(&out));
    // Server-side apply makes applying flannel and rook's CRDs a second time harmless.
    assert_eq!(applied(&m).iter().filter(|a| *a == "flannel.yaml").count(), 2);
    let calls = m.calls();

    let out = run_addons(&m, &[]);
    assert!(
        out.status.success() && log(&out).contains("already done"),
        "{}",
        log(&out)
    );
    assert_eq!(m.calls(), calls, "a second boot applies nothing");
}

// --- images ------------------------------------------------------------------------

/// A node whose stick carries two images in an OCI layout, as `kubestick build` writes it.
fn images_machine() -> Machine {
    let m = Machine::new("if-not-osd");
    let layout = m.path("images");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}\n").unwrap();
    let names = [
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/pause@sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4",
        "ghcr.io/flannel-io/flannel:v0.28.9",
        "ghcr.io/flannel-io/flannel@sha256:d666a036197fe6c8928f82b670d89f38f5830d25e70bfcc35641da06f03cfcad",
    ];
    let manifests: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"annotations": {"io.containerd.image.name": n}}))
        .collect();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    )
    .unwrap();
    fs::write(m.path("images.list"), names.join("\n") + "\n").unwrap();
    m
}

fn run_images(m: &Machine, extra_env: &[(&str, &str)]) -> Output {
    let images = m.path("images");
    let names = m.path("images.list");
    let mut env = vec![
        ("KUBESTICK_IMAGES", images.to_str().unwrap()),
        ("KUBESTICK_IMAGE_NAMES", names.to_str().unwrap()),
        ("KUBESTICK_CONTAINERD_WAIT", "2"),
    ];
    env.extend_from_slice(extra_env);
    m.run_script("images", &env)
}

#[test]
fn images_are_imported_pinned_under_both_names_once() {
    let m = images_machine();
    let out = run_images(&m, &[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    let imports: Vec<String> = m
        .calls()
        .lines()
        .filter(|l| l.contains(" images import "))
        .map(String::from)
        .collect();
    assert_eq!(
        imports,
        [
            "ctr --address /run/containerd/containerd.sock --namespace k8s.io images import --platform linux/amd64 --label io.cri-containerd.pinned=pinned -"
        ],
    );
    // The whole layout went in as one tar stream.
    let listing = run_tool("tar", &["-tf", m.path("imported.tar").to_str().unwrap()]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("./oci-layout") && listing.contains("./index.json"),
        "{listing}"
    );
    let done = fs::read_to_string(m.path("state/images.done")).unwrap();
    assert!(done.contains("imported 2 images"), "{done}");
    assert!(text.contains("importing 2 images"), "{text}");

    let again = run_images(&m, &[]);
    assert!(again.status.success(), "{}", log(&again));
    assert!(log(&again).contains("already done"), "{}", log(&again));
    assert_eq!(m.calls().matches(" images import ").count(), 1, "imported twice");
}

#[test]
fn an_image_missing_after_the_import_fails_the_step_naming_it() {
    let m = images_machine();
    let lost = "ghcr.io/flannel-io/flannel@sha256:d666a036197fe6c8928f82b670d89f38f5830d25e70bfcc35641da06f03cfcad";
    let out = run_images(&m, &[("FAKE_CTR_LOSES", lost)]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("ERROR: {lost} is not in containerd")), "{text}");
    assert!(!m.path("state/images.done").exists());
    // The retry (systemd's Restart=on-failure) imports again and finishes.
    let out = run_images(&m, &[]);
    assert!(out.status.success(), "{}", log(&out));
    assert_eq!(m.calls().matches(" images import ").count(), 2);
}

#[test]
fn images_wait_for_containerd_and_say_so_when_it_never_answers() {
    let m = images_machine();
    let out = run_images(&m, &[("FAKE_CTR_DOWN", "1")]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("containerd does not answer"), "{text}");
    assert!(!m.calls().contains(" images import "), "imported into nothing");
}

#[test]
fn a_stick_without_images_has_nothing_to_import() {
    let m = images_machine();
    fs::write(m.path("images.list"), "").unwrap();
    let out = run_images(&m, &[]);
    assert!(out.status.success(), "{}", log(&out));
    assert!(!m.calls().contains("ctr "), "{}", m.calls());
    assert!(
        fs::read_to_string(m.path("state/images.done"))
            .unwrap()
            .contains("no container images")
    );
}

#[test]
fn bootstrap_waits_for_the_images_before_kubeadm() {
    let m = bootstrap_machine("cp-1", "control-plane");
    fs::remove_file(m.path("state/images.done")).unwrap();
    let out = m.run_script("bootstrap", &[]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("waiting for kubestick-images"), "{text}");
    assert!(commands(&m).is_empty(), "{:?}", commands(&m));
}

// kubestick-certs: the renewal decision on real certificates made by openssl, with the
// dates each case needs; kubeadm, crictl, kubectl and systemctl are the recording doubles.

/// The tests compare dates the script prints with dates computed here: a test must not
/// straddle midnight UTC, so one started in its last half minute waits for the new day.
fn clear_of_midnight() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 86_400 - now % 86_400;
    if left < 30 {
        std::thread::sleep(std::time::Duration::from_secs(left + 1));
    }
}

/// `date -u` of `offset` (as "+30 days") in openssl's ASN.1 time format.
fn asn1_time(offset: &str) -> String {
    let out = run_tool("date", &["-u", "-d", offset, "+%Y%m%d%H%M%SZ"]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn day_of(offset: &str) -> String {
    let out = run_tool("date", &["-u", "-d", offset, "+%Y-%m-%d"]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn openssl(m: &Machine, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(m.path(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", log(&out));
}

/// A CA (ECDSA P-256, like kubestick's) valid for `days`, as `<stem>.crt` and `<stem>.key`.
fn make_ca(m: &Machine, stem: &str, days: u32) {
    let (crt, key) = (m.path(&format!("{stem}.crt")), m.path(&format!("{stem}.key")));
    openssl(
        m,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=kubernetes",
            "-days",
            &days.to_string(),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
}

/// A certificate signed by k8s/pki/ca valid from `start` to `end` (openssl ca, which
/// takes any dates, past ones too), as `path` (.crt) with its key beside it.
fn issue(m: &Machine, path: &str, start: &str, end: &str) -> PathBuf {
    let db = m.path("ca-db");
    if !db.exists() {
        fs::create_dir_all(&db).unwrap();
        fs::write(db.join("index.txt"), "").unwrap();
        fs::write(db.join("serial"), "01\n").unwrap();
        fs::write(
            db.join("openssl.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nserial = {d}/serial\n\
                 default_md = sha256\npolicy = anything\nunique_subject = no\n[anything]\ncommonName = supplied\n",
                d = db.display()
            ),
        )
        .unwrap();
    }
    let crt = m.path(path);
    fs::create_dir_all(crt.parent().unwrap()).unwrap();
    let (key, csr) = (crt.with_extension("key"), crt.with_extension("csr"));
    openssl(
        m,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=test",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    openssl(
        m,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            db.join("openssl.cnf").to_str().unwrap(),
            "-cert",
            m.path("k8s/pki/ca.crt").to_str().unwrap(),
            "-keyfile",
            m.path("k8s/pki/ca.key").to_str().unwrap(),
            "-startdate",
            &asn1_time(start),
            "-enddate",
            &asn1_time(end),
            "-in",
            csr.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    fs::remove_file(csr).unwrap();
    crt
}

/// A kubeconfig whose client certificate is valid from `start` to `end`.
fn issue_kubeconfig(m: &Machine, path: &str, start: &str, end: &str) {
    use base64::Engine as _;
    let crt = issue(m, &format!("{path}.crt"), start, end);
    let data = base64::engine::general_purpose::STANDARD.encode(fs::read(&crt).unwrap());
    fs::write(
        m.path(path),
        format!("apiVersion: v1\nkind: Config\nusers:\n- name: x\n  user:\n    client-certificate-data: {data}\n    client-key-data: AAAA\n"),
    )
    .unwrap();
}

/// A joined control-plane node whose kubeadm certificates end at `end` (and started
/// `start`), CAs valid for `ca_days`; `kubeadm certs renew` re-issues them for a year.
fn certs_machine(start: &str, end: &str, ca_days: u32) -> Machine {
    clear_of_midnight();
    let m = bootstrap_machine("cp-2", "control-plane");
    fs::write(m.path("state/bootstrap.done"), "2026-11-24T09:10:00Z joined\n").unwrap();
    fs::create_dir_all(m.path("k8s/pki/etcd")).unwrap();
    make_ca(&m, "k8s/pki/ca", ca_days);
    make_ca(&m, "k8s/pki/front-proxy-ca", 3650);
    make_ca(&m, "k8s/pki/etcd/ca", 3650);
    issue(&m, "k8s/pki/apiserver.crt", start, end);
    issue(&m, "k8s/pki/etcd/server.crt", start, end);
    issue_kubeconfig(&m, "k8s/admin.conf", start, end);
    m
}

/// Runs kubestick-certs; after `kubeadm certs renew all` the API server's certificate is
/// valid for a year (issued here beforehand, put in place by the doubled kubeadm).
fn run_certs(m: &Machine, extra_env: &[(&str, &str)]) -> Output {
    let renewed = issue(m, "renewed/apiserver.crt", "-1 minute", "+365 days");
    fs::write(
        m.path("renew"),
        format!(
            "#!/bin/sh\ncp {} {}\n",
            renewed.display(),
            m.path("k8s/pki/apiserver.crt").display()
        ),
    )
    .unwrap();
    fs::set_permissions(m.path("renew"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = vec![
        (
            "KUBESTICK_KUBELET_PKI",
            m.path("kubelet-pki").to_str().unwrap().to_string(),
        ),
        ("KUBESTICK_SETTLE_SECONDS", "10".to_string()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    m.run_script("certs", &env)
}

fn certs_status(m: &Machine) -> String {
    fs::read_to_string(m.path("state/certs.status")).unwrap_or_default()
}

#[test]
fn certificates_far_from_expiry_are_left_alone_and_reported() {
    let m = certs_machine("-1 day", "+200 days", 3650);
    let out = run_certs(&m, &[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    let status = certs_status(&m);
    assert!(
        status.starts_with(&format!(
            "valid until {}, renewed from {}; CAs until {}",
            day_of("+200 days"),
            day_of("+110 days"),
            day_of("+3650 days")
        )),
        "{status}"
    );
    let calls = m.calls();
    assert!(
        !calls.contains("kubeadm certs") && !calls.contains("crictl stop"),
        "{calls}"
    );
    assert!(!calls.contains("kubectl"), "no API needed to decide: {calls}");
}

#[test]
fn certificates_within_the_margin_are_renewed_in_turn_and_the_pods_restarted_one_by_one() {
    let m = certs_machine("-300 days", "+30 days", 3650);
    let out = run_certs(&m, &[("FAKE_API_AFTER", "0")]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("due for renewal (expiring within 90 days): apiserver.crt etcd/server.crt admin.conf"),
        "{text}"
    );
    let calls = m.calls();
    let at = |what: &str| calls.find(what).unwrap_or_else(|| panic!("no {what} in:\n{calls}"));
    let order = [
        "kubectl --kubeconfig",
        "kubeadm certs renew all --config",
        "crictl stop old-etcd",
        "crictl stop old-kube-apiserver",
        "crictl stop old-kube-controller-manager",
        "crictl stop old-kube-scheduler",
        "delete lease kubestick-certificate-renewal",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{} before {}:\n{calls}", pair[0], pair[1]);
    }
    assert!(text.contains("took the certificate renewal turn"), "{text}");
    assert!(!m.path("lease").exists(), "the turn is given back");
    assert_eq!(
        certs_status(&m).lines().next().unwrap(),
        format!(
            "renewed {}: valid until {}; CAs until {}",
            day_of("now"),
            day_of("+365 days"),
            day_of("+3650 days")
        )
    );
    // What was in place is kept for a person to go back to.
    assert!(m.path("state/certs-backup/pki/apiserver.crt").exists());
    assert!(m.path("state/certs-backup/admin.conf").exists());
}

#[test]
fn a_node_waits_while_another_renews() {
    let m = certs_machine("-300 days", "+30 days", 3650);
    fs::write(m.path("lease"), format!("cp-3 {} 7\n", utc_now())).unwrap();
    let out = run_certs(&m, &[("FAKE_API_AFTER", "0")]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(
        text.contains("waiting for cp-3 to finish renewing its certificates"),
        "{text}"
    );
    assert!(!m.calls().contains("kubeadm certs"), "{}", m.calls());
    assert!(certs_status(&m).contains("waiting for a turn"), "{}", certs_status(&m));
}

#[test]
fn expired_certificates_are_renewed_at_once_without_the_api() {
    // Off for more than a year: nothing answers, and nothing can until this is renewed.
    let m = certs_machine("-400 days", "-35 days", 3650);
    let out = run_certs(&m, &[("FAKE_API_AFTER", "1")]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "EXPIRED: apiserver.crt etcd/server.crt admin.conf (the first on {})",
            day_of("-35 days")
        )),
        "{text}"
    );
    assert!(text.contains("renewing without a turn"), "{text}");
    let calls = m.calls();
    assert!(
        calls.contains("kubeadm certs renew all") && calls.contains("crictl stop old-kube-apiserver"),
        "{calls}"
    );
    assert!(!calls.contains("lease"), "{calls}");
    assert!(certs_status(&m).starts_with("renewed "), "{}", certs_status(&m));
}

#[test]
fn renewal_due_while_the_api_is_still_starting_is_tried_again() {
    let m = certs_machine("-300 days", "+30 days", 3650);
    let out = run_certs(&m, &[]);
    let text = log(&out);
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(!m.calls().contains("kubeadm certs"), "{}", m.calls());
    assert!(certs_status(&m).contains("waiting for the API"), "{}", certs_status(&m));
}

#[test]
fn a_ca_near_its_end_is_reported_because_it_cannot_be_renewed() {
    let m = certs_machine("-1 day", "+150 days", 200);
    let out = run_certs(&m, &[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("WARNING: the cluster CA ca.crt expires on"), "{text}");
    let status = certs_status(&m);
    assert!(
        status.contains(&format!(
            "CA ca.crt EXPIRES {} (cannot be renewed in place)",
            day_of("+200 days")
        )),
        "{status}"
    );
}

#[test]
fn an_expired_kubelet_client_certificate_is_issued_anew() {
    let m = certs_machine("-1 day", "+200 days", 3650);
    fs::create_dir_all(m.path("kubelet-pki")).unwrap();
    let old = issue(&m, "kubelet-pki/kubelet-client-2025.pem", "-400 days", "-35 days");
    std::os::unix::fs::symlink(&old, m.path("kubelet-pki/kubelet-client-current.pem")).unwrap();
    let out = run_certs(&m, &[]);
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    let calls = m.calls();
    assert!(
        calls.contains("kubeadm kubeconfig user --config")
            && calls.contains("--org system:nodes --client-name system:node:cp-2"),
        "{calls}"
    );
    assert!(calls.contains("systemctl restart kubelet"), "{calls}");
    assert_eq!(
        fs::read_to_string(m.path("k8s/kubelet.conf")).unwrap(),
        "apiVersion: v1\n"
    );
    assert!(!m.path("kubelet-pki/kubelet-client-current.pem").exists());
}

#[test]
fn certs_leave_nodes_alone_that_have_not_joined() {
    let m = certs_machine("-300 days", "-1 day", 3650);
    fs::remove_file(m.path("state/bootstrap.done")).unwrap();
    let out = run_certs(&m, &[("FAKE_API_AFTER", "0")]);
    assert!(
        out.status.success() && log(&out).contains("not part of the cluster yet"),
        "{}",
        log(&out)
    );
    assert!(
        !m.calls().contains("kubeadm") && !m.calls().contains("systemctl"),
        "{}",
        m.calls()
    );
}

/// A joined worker: no CA, its kubelet's client certificate valid from `start` to `end`.
fn worker_certs_machine(start: &str, end: &str) -> Machine {
    let m = certs_machine("-1 day", "+200 days", 3650);
    fs::create_dir_all(m.path("kubelet-pki")).unwrap();
    let cert = issue(&m, "kubelet-pki/kubelet-client-2026.pem", start, end);
    std::os::unix::fs::symlink(&cert, m.path("kubelet-pki/kubelet-client-current.pem")).unwrap();
    fs::rename(m.path("k8s/pki"), m.path("pki-elsewhere")).unwrap();
    fs::write(m.path("k8s/kubelet.conf"), "the expired one\n").unwrap();
    fs::write(
        m.path("conf/kubeadm-join.yaml"),
        "discovery:\n  bootstrapToken:\n    apiServerEndpoint: \"10.77.0.10:6443\"\n    token: \"abcdef.0123456789abcdef\"\n",
    )
    .unwrap();
    m
}

#[test]
fn a_worker_only_reports_a_kubelet_certificate_that_is_still_valid() {
    let m = worker_certs_machine("-100 days", "+265 days");
    let out = m.run_script(
        "certs",
        &[("KUBESTICK_KUBELET_PKI", m.path("kubelet-pki").to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", log(&out));
    assert!(
        !m.calls().contains("kubeadm") && !m.calls().contains("systemctl"),
        "{}",
        m.calls()
    );
    assert_eq!(
        certs_status(&m).trim(),
        format!(
            "kubelet client certificate until {} (the kubelet rotates it)",
            day_of("+265 days")
        )
    );
}

#[test]
fn a_worker_off_past_its_kubelet_certificate_bootstraps_a_new_one_with_the_token() {
    let m = worker_certs_machine("-400 days", "-35 days");
    let out = m.run_script(
        "certs",
        &[("KUBESTICK_KUBELET_PKI", m.path("kubelet-pki").to_str().unwrap())],
    );
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("bootstrapping a new one with the bootstrap token"),
        "{text}"
    );
    let bootstrap = fs::read_to_string(m.path("k8s/bootstrap-kubelet.conf")).unwrap();
    assert!(bootstrap.contains("server: https://10.77.0.10:6443"), "{bootstrap}");
    assert!(bootstrap.contains("token: abcdef.0123456789abcdef"), "{bootstrap}");
    assert!(bootstrap.contains(&format!("certificate-authority: {}", m.path("conf/ca.crt").display())));
    assert_eq!(mode(&m.path("k8s/bootstrap-kubelet.conf")), 0o600);
    // The kubelet finds no kubeconfig and bootstraps; the expired one is kept aside.
    assert!(!m.path("k8s/kubelet.conf").exists());
    assert!(m.path("state/kubelet.conf.expired").exists());
    assert!(!m.path("kubelet-pki/kubelet-client-current.pem").exists());
    assert!(m.calls().contains("systemctl restart kubelet"), "{}", m.calls());
    assert!(!m.calls().contains("kubeadm"), "{}", m.calls());
}

#[test]
fn status_shows_when_the_certificates_expire_and_were_renewed() {
    let m = certs_machine("-300 days", "+30 days", 3650);
    let out = run_certs(&m, &[("FAKE_API_AFTER", "0")]);
    assert!(out.status.success(), "{}", log(&out));
    let out = m.run_script("status", &[]);
    assert!(out.status.success(), "{}", log(&out));
    let status = fs::read_to_string(m.path("run/status")).unwrap();
    assert!(
        status.lines().last().unwrap().trim()
            == format!(
                "certs      renewed {}: valid until {}; CAs until {}",
                day_of("now"),
                day_of("+365 days"),
                day_of("+3650 days")
            ),
        "{status}"
    );
}

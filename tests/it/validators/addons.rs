//! The add-on manifests kubestick renders (templates/addons), checked offline: built-in
//! kinds against Kubernetes' strict schemas (kubernetes-validate), CephCluster and
//! CephBlockPool against rook's own CRD schema (shared/upstream), and what each says
//! against the cluster file it came from.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use super::{EXAMPLES, TreeTmp, output, tree};
use crate::common::*;

const ADDONS: &str = "common/files/usr/local/share/kubestick/addons";

/// rook's CRDs at the pinned version, for offline schema checks: kept outside the repository
/// (in the shared upstream folder beside it on the development machines, or where
/// KUBESTICK_UPSTREAM_DIR points), and only used when its bytes match the lock's digest.
fn rook_crds() -> PathBuf {
    const NAME: &str = "rook-v1.20.6-crds.yaml";
    let mut candidates: Vec<PathBuf> = std::env::var_os("KUBESTICK_UPSTREAM_DIR")
        .map(|d| PathBuf::from(d).join(NAME))
        .into_iter()
        .collect();
    candidates.push(repo().join("../shared/upstream").join(NAME));
    candidates.push(PathBuf::from("/work/shared/upstream").join(NAME));
    let p = candidates
        .iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("rook's CRDs ({NAME}) are in none of {candidates:?}; set KUBESTICK_UPSTREAM_DIR"))
        .clone();
    let lock = fs::read_to_string(repo().join("artifacts.lock")).unwrap();
    let lock: toml::Value = toml::from_str(&lock).unwrap();
    let pinned = lock["artifact"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str() == Some("rook-crds.yaml"))
        .and_then(|a| a["digest"].as_str())
        .unwrap()
        .to_string();
    assert_eq!(
        sha256(&fs::read(&p).unwrap()),
        pinned,
        "{} is not the pinned rook crds.yaml",
        p.display()
    );
    p
}

/// scripts/validate-manifests.py with the test venv's Python (kubernetes-validate, jsonschema).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let python = repo().join("target/test-tools/venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make test-deps`", python.display());
    output(
        Command::new(python)
            .arg(repo().join("scripts/validate-manifests.py"))
            .args(["--kubernetes-version", "1.36.4", "--crd"])
            .arg(rook_crds())
            // cert-manager's CRDs are inside its unpinned release manifest, not available here.
            .args(["--unchecked", "ClusterIssuer"])
            .args(files),
    )
}

fn docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn every_addon_manifest_passes_the_strict_schemas() {
    for example in EXAMPLES {
        let (_s, out) = render_example(example);
        let files: Vec<PathBuf> = files_below(&out.join(ADDONS))
            .into_iter()
            .map(|f| out.join(ADDONS).join(f))
            .collect();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "cluster-issuer.yaml",
                "flannel.yaml",
                "rook-cluster.yaml",
                "rook-csi-images.yaml",
                "storageclass.yaml",
                "traefik.yaml"
            ],
            "{example}"
        );
        let (ok, report) = validate(&files);
        assert!(ok, "{example}:\n{report}");
        let checked = report.lines().filter(|l| l.starts_with("ok ")).count();
        // flannel 6, CephCluster + pool 2, CSI image set 1, StorageClass 1, traefik 6 objects.
        assert_eq!(checked, 16, "{example}:\n{report}");
        assert!(report.contains("CephCluster rook-ceph (CRD schema)"), "{report}");
        assert!(report.contains("CephBlockPool replicapool (CRD schema)"), "{report}");
        assert_eq!(report.lines().filter(|l| l.starts_with("SKIP")).count(), 1, "{report}");
    }
}

#[test]
fn the_schema_checks_catch_a_misspelt_field_in_each_kind_of_manifest() {
    let (s, out) = render_example("homelab");
    let addons = out.join(ADDONS);
    for (file, from, to) in [
        ("rook-cluster.yaml", "useAllDevices", "useAllDevice"),
        ("rook-cluster.yaml", "failureDomain", "failureDomian"),
        ("storageclass.yaml", "reclaimPolicy", "reclaimpolicy"),
        ("flannel.yaml", "hostNetwork", "hostnetwork"),
        ("traefik.yaml", "hostPort: 443", "hostport: 443"),
    ] {
        let text = fs::read_to_string(addons.join(file)).unwrap();
        assert!(text.contains(from), "{file} has no {from}");
        let broken = s.write(file, &text.replacen(from, to, 1));
        let (ok, report) = validate(&[broken]);
        assert!(!ok && report.contains("ERROR"), "{file} with {to} passed:\n{report}");
    }
}

#[test]
fn the_manifests_say_what_the_cluster_file_says() {
    for example in EXAMPLES {
        let (_s, out) = render_example(example);
        let cluster: toml::Value = toml::from_str(&crate::common::example(example)).unwrap();
        let addons = out.join(ADDONS);
        let lock: toml::Value = toml::from_str(&fs::read_to_string(repo().join("artifacts.lock")).unwrap()).unwrap();
        // Every image a rendered manifest names is the lock's, by tag and digest.
        let pinned = |name: &str| -> String {
            let entry = lock["image"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"].as_str() == Some(name) && i.get("kubernetes").is_none())
                .unwrap_or_else(|| panic!("the lock has no image {name}"));
            let reference = entry["reference"].as_str().unwrap();
            match entry.get("digest") {
                Some(d) => format!("{reference}@{}", d.as_str().unwrap()),
                None => reference.to_string(),
            }
        };

        // ceph: exactly the configured by-id disk on each node that has one, nothing else.
        let rook = docs(&addons.join("rook-cluster.yaml"));
        let ceph = kind(&rook, "CephCluster");
        let storage = &ceph["spec"]["storage"];
        assert_eq!(storage["useAllDevices"], Value::Bool(false));
        assert_eq!(storage["useAllNodes"], Value::Bool(false));
        let rendered: Vec<(String, Vec<String>)> = storage["nodes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|n| {
                let devices = n["devices"].as_sequence().unwrap();
                (
                    str_of(&n["name"]).to_string(),
                    devices.iter().map(|d| str_of(&d["name"]).to_string()).collect(),
                )
            })
            .collect();
        let wanted: Vec<(String, Vec<String>)> = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| {
                Some((
                    n["name"].as_str()?.to_string(),
                    vec![n.get("disk")?.as_str()?.to_string()],
                ))
            })
            .collect();
        assert_eq!(rendered, wanted, "{example}");
        assert_eq!(ceph["spec"]["mon"]["count"], Value::from(3));
        assert_eq!(str_of(&ceph["spec"]["cephVersion"]["image"]), pinned("ceph"));
        let pool = &kind(&rook, "CephBlockPool")["spec"];
        assert_eq!(str_of(&pool["failureDomain"]), "host");
        assert_eq!(
            pool["replicated"]["size"],
            Value::from(cluster["storage"]["replicas"].as_integer().unwrap())
        );
        assert_eq!(pool["replicated"]["requireSafeReplicaSize"], Value::Bool(true));
        let sc = docs(&addons.join("storageclass.yaml"));
        let sc = kind(&sc, "StorageClass");
        assert_eq!(
            str_of(&sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]),
            "true"
        );
        assert_eq!(str_of(&sc["parameters"]["pool"]), "replicapool");

        // rook's CSI drivers run exactly the lock's images, not rook's defaults.
        let csi = docs(&addons.join("rook-csi-images.yaml"));
        let data = &kind(&csi, "ConfigMap")["data"];
        for (key, name) in [
            ("provisioner", "csi-provisioner"),
            ("attacher", "csi-attacher"),
            ("resizer", "csi-resizer"),
            ("snapshotter", "csi-snapshotter"),
            ("registrar", "csi-node-driver-registrar"),
            ("plugin", "cephcsi"),
            ("addons", "csi-addons-sidecar"),
        ] {
            assert_eq!(str_of(&data[key]), pinned(name), "{example} {key}");
        }

        // flannel: the cluster's pod network, vxlan, on the LAN port.
        let flannel = docs(&addons.join("flannel.yaml"));
        let net: serde_json::Value =
            serde_json::from_str(str_of(&kind(&flannel, "ConfigMap")["data"]["net-conf.json"])).unwrap();
        assert_eq!(net["Network"], cluster["network"]["pod_cidr"].as_str().unwrap());
        assert_eq!(net["Backend"]["Type"], "vxlan");
        let ds = &kind(&flannel, "DaemonSet")["spec"]["template"]["spec"];
        let args: Vec<&str> = ds["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(str_of)
            .collect();
        assert!(args.contains(&"--iface=lan0"), "{args:?}");
        assert_eq!(str_of(&ds["containers"][0]["image"]), pinned("flannel"));

        // traefik: on every node's ports 80 and 443, which keepalived's ingress check probes.
        let traefik = docs(&addons.join("traefik.yaml"));
        let ds = kind(&traefik, "DaemonSet");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        let host_ports: Vec<i64> = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|p| p["hostPort"].as_i64())
            .collect();
        assert_eq!(host_ports, [80, 443]);
        assert_eq!(str_of(&c["image"]), pinned("traefik"));
        let vip = cluster["network"]["ingress_vip"].as_str().unwrap();
        assert!(
            c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|a| str_of(a).ends_with(&format!("ingressendpoint.ip={vip}")))
        );
        let node = cluster["nodes"][0]["name"].as_str().unwrap();
        let check = fs::read_to_string(out.join(node).join("files/usr/local/lib/kubestick/check-ingress")).unwrap();
        assert!(check.contains("/443\""), "{check}");

        // Let's Encrypt with the cluster's e-mail, answered through traefik.
        let issuer = docs(&addons.join("cluster-issuer.yaml"));
        let acme = &kind(&issuer, "ClusterIssuer")["spec"]["acme"];
        assert_eq!(
            str_of(&acme["email"]),
            cluster["ingress"]["acme_email"].as_str().unwrap()
        );
        assert_eq!(
            str_of(&acme["server"]),
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(
            str_of(&acme["solvers"][0]["http01"]["ingress"]["ingressClassName"]),
            "traefik"
        );
    }
}

#[test]
fn a_cluster_without_ingress_or_storage_gets_only_flannel() {
    let s = Scratch::new();
    let mut text = example("homelab");
    for section in ["[ingress]", "[storage]"] {
        let start = text.find(section).unwrap();
        let end = text[start + 1..].find("\n[").map_or(text.len(), |i| start + 1 + i);
        text.replace_range(start..end, "");
    }
    text = text
        .lines()
        .filter(|l| !l.starts_with("ingress_vip") && !l.starts_with("disk ="))
        .collect::<Vec<_>>()
        .join("\n");
    let toml = s.write("bare.toml", &text);
    let out = s.path("out");
    render(&toml, &out).success();
    let names: Vec<PathBuf> = files_below(&out.join(ADDONS));
    assert_eq!(names, [PathBuf::from("flannel.yaml")]);
    let script = fs::read_to_string(out.join("common/files/usr/local/lib/kubestick/addons")).unwrap();
    assert!(script.contains("flannel.yaml"));
    assert!(
        !script.contains("rook") && !script.contains("traefik") && !script.contains("cert-manager"),
        "{script}"
    );
}

#[test]
fn udevadm_accepts_the_flannel_offload_rule() {
    let (_s, out) = render_example("homelab");
    let rule = fs::read(out.join("common/files/etc/udev/rules.d/90-kubestick-flannel.rules")).unwrap();
    let t = TreeTmp::new();
    let inside = t.put("90-kubestick-flannel.rules", &rule, 0o644);
    let (ok, report) = output(Command::new("chroot").arg(tree()).args(["udevadm", "verify", &inside]));
    assert!(ok, "{report}");
    let broken = t.put(
        "91-broken.rules",
        b"ACTION==\"add\", KERNEL=flannel.1, RUN+=\"x\"\n",
        0o644,
    );
    let (ok, report) = output(Command::new("chroot").arg(tree()).args(["udevadm", "verify", &broken]));
    assert!(!ok, "udevadm verify accepted a broken rule:\n{report}");
}

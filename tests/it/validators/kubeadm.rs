//! An offline schema check for the kubeadm configuration, since kubeadm itself cannot be
//! downloaded here: the v1beta4, kubelet v1beta1 and kube-proxy v1alpha1 types, reduced to
//! the fields kubestick uses, with every struct rejecting unknown fields. Field names and
//! shapes follow the upstream Go types (`json:"..."` tags); a misspelt or misplaced key
//! fails to deserialize, as `kubeadm config validate` would reject it.

use serde::Deserialize;
use serde_json::Value;

/// The documents of the init node's config, in the order kubeadm expects them.
pub const INIT_KINDS: [&str; 4] = [
    "InitConfiguration",
    "ClusterConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
];

pub fn parse_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct InitConfiguration {
    api_version: String,
    kind: String,
    bootstrap_tokens: Vec<BootstrapToken>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    node_registration: NodeRegistration,
    timeouts: Option<Timeouts>,
    patches: Option<Patches>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct BootstrapToken {
    token: String,
    description: String,
    ttl: String,
    usages: Vec<String>,
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ApiEndpoint {
    advertise_address: String,
    bind_port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct NodeRegistration {
    name: String,
    #[serde(rename = "criSocket")]
    cri_socket: String,
    taints: Option<Vec<Value>>,
    kubelet_extra_args: Vec<Arg>,
    image_pull_policy: PullPolicy,
}

/// corev1.PullPolicy, as kubeadm's NodeRegistrationOptions.imagePullPolicy takes it.
#[derive(Deserialize, Debug, PartialEq)]
enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Arg {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ClusterConfiguration {
    api_version: String,
    kind: String,
    cluster_name: String,
    kubernetes_version: String,
    control_plane_endpoint: String,
    certificates_dir: String,
    encryption_algorithm: EncryptionAlgorithm,
    networking: Networking,
    #[serde(rename = "apiServer")]
    api_server: ApiServer,
    etcd: Etcd,
    controller_manager: Option<ControlPlaneComponent>,
    scheduler: Option<ControlPlaneComponent>,
}

/// v1beta4's ControlPlaneComponent, as far as kubestick sets it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ControlPlaneComponent {
    extra_args: Vec<Arg>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum EncryptionAlgorithm {
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    #[serde(rename = "RSA-3072")]
    Rsa3072,
    #[serde(rename = "RSA-4096")]
    Rsa4096,
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Networking {
    dns_domain: String,
    pod_subnet: String,
    service_subnet: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ApiServer {
    #[serde(rename = "certSANs")]
    cert_sans: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Etcd {
    local: LocalEtcd,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct LocalEtcd {
    data_dir: String,
    extra_args: Option<Vec<Arg>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KubeletConfiguration {
    api_version: String,
    kind: String,
    cgroup_driver: CgroupDriver,
    container_runtime_endpoint: String,
    rotate_certificates: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KubeProxyConfiguration {
    api_version: String,
    kind: String,
    mode: ProxyMode,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ProxyMode {
    Iptables,
    Ipvs,
    Nftables,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct JoinConfiguration {
    api_version: String,
    kind: String,
    discovery: Discovery,
    node_registration: NodeRegistration,
    control_plane: Option<JoinControlPlane>,
    timeouts: Option<Timeouts>,
    patches: Option<Patches>,
}

/// v1beta4's `patches`: a directory of `<component>[suffix][+patchtype].<ext>` files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Patches {
    directory: String,
}

/// v1beta4's `timeouts` (metav1.Duration strings such as "15m0s").
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Timeouts {
    control_plane_component_health_check: Option<Duration>,
    kubelet_health_check: Option<Duration>,
    // Upstream's json tags spell the acronym in capitals, which camelCase would not.
    #[serde(rename = "kubernetesAPICall")]
    kubernetes_api_call: Option<Duration>,
    #[serde(rename = "etcdAPICall")]
    etcd_api_call: Option<Duration>,
    tls_bootstrap: Option<Duration>,
    discovery: Option<Duration>,
    upgrade_manifests: Option<Duration>,
}

/// A Go duration: digits with h/m/s units, e.g. "15m0s".
struct Duration;

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            let unit = rest[digits..]
                .find(|c: char| c.is_ascii_digit())
                .map_or(rest.len(), |u| digits + u);
            if digits == 0 || !matches!(&rest[digits..unit], "h" | "m" | "s" | "ms") {
                return Err(serde::de::Error::custom(format!("not a duration: {text:?}")));
            }
            rest = &rest[unit..];
        }
        if text.is_empty() {
            return Err(serde::de::Error::custom("empty duration"));
        }
        Ok(Duration)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Discovery {
    bootstrap_token: BootstrapTokenDiscovery,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct BootstrapTokenDiscovery {
    api_server_endpoint: String,
    token: String,
    ca_cert_hashes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
}

/// Checks every document of a kubeadm config file; returns the kinds in order.
pub fn check(text: &str) -> Result<Vec<String>, String> {
    let mut kinds = Vec::new();
    for doc in parse_documents(text) {
        let kind = doc["kind"].as_str().ok_or("a document has no kind")?.to_string();
        let want = match kind.as_str() {
            "KubeletConfiguration" => "kubelet.config.k8s.io/v1beta1",
            "KubeProxyConfiguration" => "kubeproxy.config.k8s.io/v1alpha1",
            _ => "kubeadm.k8s.io/v1beta4",
        };
        if doc["apiVersion"] != want {
            return Err(format!("{kind}: apiVersion {}, expected {want}", doc["apiVersion"]));
        }
        let result = match kind.as_str() {
            "InitConfiguration" => serde_json::from_value::<InitConfiguration>(doc).map(drop),
            "ClusterConfiguration" => serde_json::from_value::<ClusterConfiguration>(doc).map(drop),
            "JoinConfiguration" => serde_json::from_value::<JoinConfiguration>(doc).map(drop),
            "KubeletConfiguration" => serde_json::from_value::<KubeletConfiguration>(doc).map(drop),
            "KubeProxyConfiguration" => serde_json::from_value::<KubeProxyConfiguration>(doc).map(drop),
            other => return Err(format!("unexpected kind {other}")),
        };
        result.map_err(|e| format!("{kind}: {e}"))?;
        kinds.push(kind);
    }
    Ok(kinds)
}

#[test]
fn the_check_rejects_a_misplaced_field() {
    let bad = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: a\n    token: b\n    caCertHashes: []\n  timeout: 5m\nnodeRegistration:\n  name: n\n  criSocket: c\n  kubeletExtraArgs: []\n";
    let err = check(bad).unwrap_err();
    assert!(err.contains("unknown field `timeout`"), "{err}");
    let old_style = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: JoinConfiguration\n";
    assert!(check(old_style).is_err());
}

//! The templates, compiled into the binary so an installed kubestick needs no data files.
//! A test checks this list against the templates/ folder.

pub const ALL: &[(&str, &str)] = &[
    (
        "cloud-init/meta-data",
        include_str!("../../templates/cloud-init/meta-data"),
    ),
    (
        "cloud-init/network-config",
        include_str!("../../templates/cloud-init/network-config"),
    ),
    (
        "cloud-init/user-data",
        include_str!("../../templates/cloud-init/user-data"),
    ),
    (
        "firstboot/bootstrap",
        include_str!("../../templates/firstboot/bootstrap"),
    ),
    (
        "firstboot/kubestick-bootstrap.service",
        include_str!("../../templates/firstboot/kubestick-bootstrap.service"),
    ),
    (
        "firstboot/kubestick-status.service",
        include_str!("../../templates/firstboot/kubestick-status.service"),
    ),
    (
        "firstboot/kubestick-status.timer",
        include_str!("../../templates/firstboot/kubestick-status.timer"),
    ),
    (
        "firstboot/kubestick-storage.service",
        include_str!("../../templates/firstboot/kubestick-storage.service"),
    ),
    ("firstboot/status", include_str!("../../templates/firstboot/status")),
    ("firstboot/storage", include_str!("../../templates/firstboot/storage")),
    (
        "ignition/config.ign",
        include_str!("../../templates/ignition/config.ign"),
    ),
    ("ignition/lan.link", include_str!("../../templates/ignition/lan.link")),
    (
        "ignition/lan.network",
        include_str!("../../templates/ignition/lan.network"),
    ),
    (
        "keepalived/check-apiserver",
        include_str!("../../templates/keepalived/check-apiserver"),
    ),
    (
        "keepalived/check-ingress",
        include_str!("../../templates/keepalived/check-ingress"),
    ),
    (
        "keepalived/keepalived.conf",
        include_str!("../../templates/keepalived/keepalived.conf"),
    ),
    (
        "kubeadm/cluster.yaml",
        include_str!("../../templates/kubeadm/cluster.yaml"),
    ),
    (
        "kubeadm/components.yaml",
        include_str!("../../templates/kubeadm/components.yaml"),
    ),
    ("kubeadm/init.yaml", include_str!("../../templates/kubeadm/init.yaml")),
    ("kubeadm/join.yaml", include_str!("../../templates/kubeadm/join.yaml")),
    (
        "kubeadm/node-registration.yaml",
        include_str!("../../templates/kubeadm/node-registration.yaml"),
    ),
    ("node/node.env", include_str!("../../templates/node/node.env")),
    (
        "system/containerd.toml",
        include_str!("../../templates/system/containerd.toml"),
    ),
    (
        "system/kubestick-prepare.service",
        include_str!("../../templates/system/kubestick-prepare.service"),
    ),
    (
        "system/modules-load.conf",
        include_str!("../../templates/system/modules-load.conf"),
    ),
    ("system/prepare", include_str!("../../templates/system/prepare")),
    ("system/sysctl.conf", include_str!("../../templates/system/sysctl.conf")),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_in_templates_is_compiled_in() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let compiled: Vec<String> = super::ALL.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, compiled, "add new templates to src/render/templates.rs");
    }
}

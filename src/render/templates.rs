//! The templates, compiled into the binary so an installed kubestick needs no data files.
//! A test checks this list against the templates/ folder.

pub const ALL: &[(&str, &str)] = &[
    (
        "addons/rook-csi-images.yaml",
        include_str!("../../templates/addons/rook-csi-images.yaml"),
    ),
    ("firstboot/images", include_str!("../../templates/firstboot/images")),
    (
        "firstboot/kubestick-images.service",
        include_str!("../../templates/firstboot/kubestick-images.service"),
    ),
    (
        "addons/cluster-issuer.yaml",
        include_str!("../../templates/addons/cluster-issuer.yaml"),
    ),
    (
        "addons/flannel.yaml",
        include_str!("../../templates/addons/flannel.yaml"),
    ),
    (
        "addons/rook-cluster.yaml",
        include_str!("../../templates/addons/rook-cluster.yaml"),
    ),
    (
        "addons/storageclass.yaml",
        include_str!("../../templates/addons/storageclass.yaml"),
    ),
    (
        "addons/traefik.yaml",
        include_str!("../../templates/addons/traefik.yaml"),
    ),
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
    ("firstboot/addons", include_str!("../../templates/firstboot/addons")),
    (
        "firstboot/bootstrap",
        include_str!("../../templates/firstboot/bootstrap"),
    ),
    (
        "firstboot/kubestick-addons.service",
        include_str!("../../templates/firstboot/kubestick-addons.service"),
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
        "firstboot/kubestick-status.path",
        include_str!("../../templates/firstboot/kubestick-status.path"),
    ),
    (
        "firstboot/kubestick-storage.service",
        include_str!("../../templates/firstboot/kubestick-storage.service"),
    ),
    ("firstboot/status", include_str!("../../templates/firstboot/status")),
    ("firstboot/certs", include_str!("../../templates/firstboot/certs")),
    ("firstboot/turn", include_str!("../../templates/firstboot/turn")),
    (
        "firstboot/kubestick-certs.service",
        include_str!("../../templates/firstboot/kubestick-certs.service"),
    ),
    (
        "firstboot/kubestick-certs.timer",
        include_str!("../../templates/firstboot/kubestick-certs.timer"),
    ),
    ("firstboot/storage", include_str!("../../templates/firstboot/storage")),
    ("firstboot/upgrade", include_str!("../../templates/firstboot/upgrade")),
    (
        "firstboot/kubestick-upgrade.service",
        include_str!("../../templates/firstboot/kubestick-upgrade.service"),
    ),
    (
        "firstboot/kubestick-upgrade.timer",
        include_str!("../../templates/firstboot/kubestick-upgrade.timer"),
    ),
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
    ("kubeadm/waits.yaml", include_str!("../../templates/kubeadm/waits.yaml")),
    (
        "kubeadm/patches/etcd+strategic.yaml",
        include_str!("../../templates/kubeadm/patches/etcd+strategic.yaml"),
    ),
    (
        "kubeadm/patches/kube-apiserver+strategic.yaml",
        include_str!("../../templates/kubeadm/patches/kube-apiserver+strategic.yaml"),
    ),
    (
        "kubeadm/patches/kube-controller-manager+strategic.yaml",
        include_str!("../../templates/kubeadm/patches/kube-controller-manager+strategic.yaml"),
    ),
    (
        "kubeadm/patches/kube-scheduler+strategic.yaml",
        include_str!("../../templates/kubeadm/patches/kube-scheduler+strategic.yaml"),
    ),
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
        "system/flannel-offload.rules",
        include_str!("../../templates/system/flannel-offload.rules"),
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

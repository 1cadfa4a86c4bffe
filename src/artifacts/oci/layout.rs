//! The images a node carries, as an OCI image layout: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`, the blobs being the registry's bytes unchanged so every digest
//! stays the registry's. Each image is listed twice in index.json, under its tag and its
//! digest name, because a pod asking for `repo@sha256:...` resolves only an image of that
//! exact name; containerd's importer takes `io.containerd.image.name` as the name.

use super::pull::Pulled;

/// Where the layout lands in the root filesystem.
pub const DIR: &str = "/usr/local/share/kubestick/images";
/// Every name the first-boot import must leave in containerd, one per line.
pub const NAMES: &str = "/usr/local/share/kubestick/images.list";

pub const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}\n";

/// `index.json` for `images`, in the order given (callers sort), deterministic bytes.
pub fn index_json(images: &[&Pulled]) -> Vec<u8> {
    let mut manifests = Vec::new();
    for p in images {
        let (digest, media_type, size) = &p.top;
        manifests.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": {
                "io.containerd.image.name": p.reference.to_string(),
                "org.opencontainers.image.ref.name": p.reference.tag,
            },
        }));
        manifests.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": { "io.containerd.image.name": p.reference.by_digest(digest) },
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut bytes = serde_json::to_vec_pretty(&index).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes
}

/// The names [`index_json`] gives, one per line.
pub fn names(images: &[&Pulled]) -> String {
    images
        .iter()
        .flat_map(|p| [p.reference.to_string(), p.reference.by_digest(&p.top.0)])
        .map(|n| n + "\n")
        .collect()
}

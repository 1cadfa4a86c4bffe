//! Stage between rootfs and image: each node image's bill of materials, in CycloneDX 1.6
//! JSON. It lists every Debian package of the base (as a purl), every artifact from the
//! lock (version, URL, digest), every container image carried (reference and digest) and
//! every rendered file (path and SHA-256), with kubestick's version, the lock's digest and
//! the apt sources the base came from. The same bytes are `out/<node>.cdx.json` and
//! [`BOM_PATH`](crate::rootfs::compose::BOM_PATH) inside the image, and `kubestick diff`
//! compares two of them.
//!
//! Written with serde_json rather than a CycloneDX crate: the Rust ones model 1.5 at most,
//! the document is a few plain objects, and the tests validate it against the published
//! 1.6 schema with CycloneDX's own Python library.

use anyhow::{Context as _, Result};
use packageurl::PackageUrl;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::artifacts::digest::{Algorithm, Digest};
use crate::artifacts::lock::{Artifact, Kind};
use crate::artifacts::oci::pull::Pulled;
use crate::rootfs::base::{Package, Source};

pub const SPEC_VERSION: &str = "1.6";

/// What kind of thing a component is, as `kubestick diff` groups them. Kept in each
/// component's `bom-ref` prefix so a BOM alone says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Package,
    Artifact,
    Image,
    File,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::Package, Category::Artifact, Category::Image, Category::File];

    pub fn prefix(self) -> &'static str {
        match self {
            Category::Package => "package:",
            Category::Artifact => "artifact:",
            Category::Image => "image:",
            Category::File => "file:",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Package => "package",
            Category::Artifact => "artifact",
            Category::Image => "image",
            Category::File => "file",
        }
    }

    pub fn of_ref(bom_ref: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| bom_ref.starts_with(c.prefix()))
    }
}

/// One file the image carries because kubestick rendered it (or placed it from overlays/).
pub struct FileEntry {
    pub path: String,
    pub content_sha256: String,
}

impl FileEntry {
    pub fn new(path: impl Into<String>, content: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            content_sha256: hex::encode(Sha256::digest(content)),
        }
    }
}

/// Everything one node image's BOM says.
pub struct Inputs<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub role: &'a str,
    pub kubernetes_version: &'a str,
    /// SHA-256 of the lock file's bytes.
    pub lock_sha256: &'a str,
    pub suite: &'a str,
    pub sources: &'a [Source],
    pub packages: &'a [Package],
    pub artifacts: &'a [&'a Artifact],
    pub images: &'a [&'a Pulled],
    pub files: &'a [FileEntry],
    /// The images' SOURCE_DATE_EPOCH: the BOM's timestamp too, so it is as reproducible.
    pub epoch: u64,
}

fn property(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn hash(d: &Digest) -> Value {
    let alg = match d.algorithm {
        Algorithm::Sha256 => "SHA-256",
        Algorithm::Sha512 => "SHA-512",
    };
    json!({ "alg": alg, "content": d.hex })
}

fn purl(ty: &str, namespace: Option<&str>, name: &str, version: &str, qualifiers: &[(&str, &str)]) -> Result<String> {
    let mut p = PackageUrl::new(ty.to_string(), name.to_string()).with_context(|| format!("a purl for {name}"))?;
    if let Some(ns) = namespace {
        p.with_namespace(ns.to_string())?;
    }
    p.with_version(version.to_string())?;
    for (k, v) in qualifiers {
        p.add_qualifier(k.to_string(), v.to_string())?;
    }
    Ok(p.to_string())
}

fn package(p: &Package, suite: &str) -> Result<Value> {
    let purl = purl(
        "deb",
        Some("debian"),
        &p.name,
        &p.version,
        &[("arch", &p.architecture), ("distro", suite)],
    )?;
    Ok(json!({
        "type": "library",
        "bom-ref": format!("{}{}:{}", Category::Package.prefix(), p.name, p.architecture),
        "name": p.name,
        "version": p.version,
        "purl": purl,
        "properties": [property("kubestick:architecture", p.architecture.clone())],
    }))
}

fn artifact(a: &Artifact) -> Result<Value> {
    let mut c = json!({
        "type": if a.kind == Kind::Manifest { "data" } else { "application" },
        "bom-ref": format!("{}{}", Category::Artifact.prefix(), a.name),
        "name": a.name,
        "version": a.version,
        "purl": purl("generic", None, &a.name, &a.version, &[("download_url", &a.url)])?,
        "externalReferences": [{ "type": "distribution", "url": a.url }],
        "properties": [property("kubestick:install", a.install.clone())],
    });
    if let Some(d) = &a.digest {
        c["hashes"] = json!([hash(d)]);
    }
    Ok(c)
}

/// `image:<name>`, or `image:<name>@<release>` for an image of another Kubernetes release
/// than the stick's (the previous release's add-ons it carries), so every bom-ref is unique.
fn image_ref(p: &Pulled, release: &str) -> String {
    match p.image.kubernetes.as_deref() {
        Some(k) if k != release => format!("{}{}@{k}", Category::Image.prefix(), p.image.name),
        _ => format!("{}{}", Category::Image.prefix(), p.image.name),
    }
}

fn image(p: &Pulled, release: &str) -> Result<Value> {
    let r = &p.reference;
    let repository = format!("{}/{}", r.registry, r.repository);
    let last = r.repository.rsplit('/').next().unwrap_or(&r.repository);
    let digest = &p.top.0;
    Ok(json!({
        "type": "container",
        "bom-ref": image_ref(p, release),
        "name": repository,
        "version": r.tag,
        "purl": purl(
            "oci",
            None,
            last,
            &digest.to_string(),
            &[("repository_url", &repository), ("tag", &r.tag)],
        )?,
        "hashes": [hash(digest)],
        "properties": [property("kubestick:reference", format!("{repository}:{}@{digest}", r.tag))],
    }))
}

fn file(f: &FileEntry) -> Value {
    json!({
        "type": "file",
        "bom-ref": format!("{}{}", Category::File.prefix(), f.path),
        "name": f.path,
        "hashes": [{ "alg": "SHA-256", "content": f.content_sha256 }],
    })
}

/// The BOM as CycloneDX 1.6 JSON. The same inputs give the same bytes: components are in
/// a fixed order and the serial number is derived from the content.
pub fn document(i: &Inputs<'_>) -> Result<Vec<u8>> {
    let mut components = Vec::new();
    for p in i.packages {
        components.push(package(p, i.suite)?);
    }
    for a in i.artifacts {
        components.push(artifact(a)?);
    }
    for p in i.images {
        components.push(image(p, i.kubernetes_version)?);
    }
    components.extend(i.files.iter().map(file));
    components.sort_by(|a, b| a["bom-ref"].as_str().cmp(&b["bom-ref"].as_str()));

    let timestamp = time::OffsetDateTime::from_unix_timestamp(i.epoch as i64)
        .context("the build's epoch is out of range")?
        .format(&time::format_description::well_known::Rfc3339)?;
    let mut properties = vec![
        property("kubestick:cluster", i.cluster),
        property("kubestick:node", i.node),
        property("kubestick:role", i.role),
        property("kubestick:kubernetes", i.kubernetes_version),
        property("kubestick:lock-sha256", i.lock_sha256),
        property("kubestick:source-date-epoch", i.epoch.to_string()),
    ];
    for s in i.sources {
        properties.push(property("kubestick:base-source", format!("{} {}", s.mirror, s.suite)));
    }
    let mut bom = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": "",
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "kubestick",
                    "version": env!("CARGO_PKG_VERSION"),
                }],
            },
            "component": {
                "type": "operating-system",
                "bom-ref": format!("node:{}", i.node),
                "name": i.node,
                "version": i.kubernetes_version,
                "description": format!("kubestick {} node image of cluster {}", i.role, i.cluster),
            },
            "properties": properties,
        },
        "components": components,
    });
    let digest = Sha256::digest(serde_json::to_vec(&bom)?);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bom["serialNumber"] = json!(format!(
        "urn:uuid:{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    ));
    let mut out = serde_json::to_vec_pretty(&bom)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages() -> Vec<Package> {
        vec![Package {
            name: "libkrb5-3".into(),
            version: "1:1.21.3-5+deb13u2".into(),
            architecture: "amd64".into(),
        }]
    }

    fn inputs<'a>(packages: &'a [Package], files: &'a [FileEntry], sources: &'a [Source]) -> Inputs<'a> {
        Inputs {
            cluster: "homelab",
            node: "n1",
            role: "control-plane",
            kubernetes_version: "1.36.4",
            lock_sha256: "00",
            suite: "trixie",
            sources,
            packages,
            artifacts: &[],
            images: &[],
            files,
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn same_inputs_same_bytes_and_the_serial_follows_the_content() {
        let (p, s) = (packages(), vec![]);
        let files = [FileEntry::new("/etc/a", b"a")];
        let a = document(&inputs(&p, &files, &s)).unwrap();
        assert_eq!(a, document(&inputs(&p, &files, &s)).unwrap());
        let other = [FileEntry::new("/etc/a", b"b")];
        let b = document(&inputs(&p, &other, &s)).unwrap();
        let serial = |d: &[u8]| serde_json::from_slice::<Value>(d).unwrap()["serialNumber"].clone();
        assert_ne!(serial(&a), serial(&b));
        assert!(serial(&a).as_str().unwrap().starts_with("urn:uuid:"));
    }

    #[test]
    fn packages_are_debian_purls_with_escaped_versions() {
        let (p, s) = (packages(), vec![]);
        let doc: Value = serde_json::from_slice(&document(&inputs(&p, &[], &s)).unwrap()).unwrap();
        let c = &doc["components"][0];
        assert_eq!(
            c["purl"],
            "pkg:deb/debian/libkrb5-3@1:1.21.3-5%2Bdeb13u2?arch=amd64&distro=trixie"
        );
        assert_eq!(c["bom-ref"], "package:libkrb5-3:amd64");
        assert_eq!(doc["metadata"]["timestamp"], "2023-11-14T22:13:20Z");
    }
}

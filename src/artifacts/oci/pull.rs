//! Pulling one pinned image into the cache: its top-level manifest or index by digest, the
//! linux/amd64 manifest an index lists, the config and every layer, each verified against
//! the digest that names it before it enters the cache. A layer two images share is stored
//! (and downloaded) once, because the cache is addressed by digest.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use indicatif::ProgressBar;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, Os};
use reqwest::StatusCode;

use super::reference::ImageRef;
use super::registry::{MANIFEST_TYPES, MAX_MANIFEST, Registry, read_limited};
use crate::artifacts::cache::Entry;
use crate::artifacts::digest::{self, Algorithm, Digest};
use crate::artifacts::download::{Attempt, FetchError, Fetcher, Mirror, Outcome, Source, Target};
use crate::artifacts::lock::Image;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "{url}: the registry has no manifest {digest} for {image} (404); the pin is wrong or the image was deleted upstream"
    )]
    ManifestUnknown { url: String, image: String, digest: String },
    #[error("{url}: the registry has no tag {image} (404)")]
    TagUnknown { url: String, image: String },
    #[error("{url}: the registry answered {status} for the manifest of {image}")]
    Http {
        url: String,
        image: String,
        status: StatusCode,
    },
    #[error(
        "{image}: the index {digest} lists no linux/amd64 image (it has: {platforms}); \
         kubestick's nodes are linux/amd64"
    )]
    NoAmd64 {
        image: String,
        digest: String,
        platforms: String,
    },
    #[error("{image}: {digest} is not an image manifest or index ({why})")]
    NotAnImage { image: String, digest: String, why: String },
    #[error("the mirror {mirror} has no {what} {digest} of {image} (looked for {path})")]
    MirrorMissing {
        mirror: String,
        what: &'static str,
        image: String,
        digest: String,
        path: PathBuf,
    },
    #[error("the mirror {mirror} has no image tagged {image} in its index.json")]
    MirrorMissingTag { mirror: String, image: String },
}

/// An image whose every blob is in the cache, verified.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    pub reference: ImageRef,
    /// The registry's top-level digest (an index, or a manifest), media type and size.
    pub top: (Digest, String, u64),
    /// Everything a node needs, top first, each once: (digest, size).
    pub blobs: Vec<(Digest, u64)>,
    /// Bytes downloaded or copied by this pull (0 when all were cached).
    pub transferred: u64,
    /// The top digest was observed (tag resolved), not pinned.
    pub unpinned: bool,
}

impl Pulled {
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// Where an observed digest of an unpinned image is recorded in the cache.
pub fn observed_key(reference: &str) -> String {
    format!("oci://{reference}")
}

pub struct Puller<'f, 'c> {
    fetcher: &'f Fetcher<'c>,
    registry: Registry,
}

impl<'f, 'c> Puller<'f, 'c> {
    pub fn new(fetcher: &'f Fetcher<'c>) -> Result<Self> {
        let client = super::registry::no_redirect_client(fetcher.options().timeout)?;
        Ok(Puller {
            fetcher,
            registry: Registry::new(client, fetcher.options().registry_mirror.clone()),
        })
    }

    fn mirror_dir(&self) -> Option<&Path> {
        match &self.fetcher.options().mirror {
            Some(Mirror::Dir(dir)) => Some(dir),
            _ => None,
        }
    }

    pub fn pull(&self, image: &Image, bar: &ProgressBar) -> Result<Pulled> {
        let reference = ImageRef::parse(&image.reference).map_err(|e| anyhow::anyhow!("{}: {e}", image.reference))?;
        let cache = self.fetcher.cache();
        let (top, unpinned) = match &image.digest {
            Some(d) => (d.clone(), false),
            None => {
                let key = observed_key(&image.reference);
                match cache.observed(&key) {
                    Some(d) if matches!(cache.check(&d)?, Entry::Verified { .. }) => (d, true),
                    _ => {
                        let options = self.fetcher.options();
                        if !options.allow_unpinned {
                            return Err(FetchError::Unpinned {
                                name: image.name.clone(),
                                url: image.reference.clone(),
                                why: image.unpinned.clone().unwrap_or_default(),
                            }
                            .into());
                        }
                        if options.offline {
                            return Err(FetchError::Offline {
                                name: image.name.clone(),
                                url: image.reference.clone(),
                            }
                            .into());
                        }
                        let d = self.resolve_tag(&reference, bar)?;
                        (d, true)
                    }
                }
            }
        };
        let mut pulled = Pulled {
            image: image.clone(),
            reference: reference.clone(),
            top: (top.clone(), String::new(), 0),
            blobs: Vec::new(),
            transferred: 0,
            unpinned,
        };
        let (bytes, media_type) = self.manifest(&reference, &top, &mut pulled, bar)?;
        pulled.top = (top.clone(), media_type.clone(), bytes.len() as u64);
        let manifest_bytes = if is_index(&media_type) {
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| PullError::NotAnImage {
                image: image.reference.clone(),
                digest: top.to_string(),
                why: e.to_string(),
            })?;
            let child = amd64(&index).ok_or_else(|| PullError::NoAmd64 {
                image: image.reference.clone(),
                digest: top.to_string(),
                platforms: platforms(&index),
            })?;
            let child_digest = oci_digest(child.digest())?;
            let (child_bytes, _) = self.manifest(&reference, &child_digest, &mut pulled, bar)?;
            child_bytes
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| PullError::NotAnImage {
            image: image.reference.clone(),
            digest: top.to_string(),
            why: e.to_string(),
        })?;
        let total: u64 =
            pulled.size() + manifest.config().size() + manifest.layers().iter().map(Descriptor::size).sum::<u64>();
        bar.set_length(total);
        bar.set_position(pulled.size());
        for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
            self.blob(&reference, descriptor, &mut pulled, bar)?;
        }
        if unpinned {
            cache.record_observed(&observed_key(&image.reference), &top)?;
        }
        Ok(pulled)
    }

    /// A manifest or index by digest, from the cache or fetched (at most [`MAX_MANIFEST`]
    /// bytes, verified). Returns its bytes and media type.
    fn manifest(
        &self,
        reference: &ImageRef,
        digest: &Digest,
        pulled: &mut Pulled,
        bar: &ProgressBar,
    ) -> Result<(Vec<u8>, String)> {
        let cache = self.fetcher.cache();
        let path = match self.fetcher.cached(digest)? {
            Some(f) => f.path,
            None => {
                if self.fetcher.options().offline {
                    return Err(FetchError::Offline {
                        name: pulled.image.name.clone(),
                        url: self.registry.manifest_url(reference, &digest.to_string()),
                    }
                    .into());
                }
                let _lock = cache.lock(digest)?;
                let bytes = match self.mirror_dir() {
                    Some(dir) => read_mirror(dir, reference, digest, "manifest")?,
                    None => self.fetch_manifest(reference, &digest.to_string(), Some(digest), bar)?,
                };
                pulled.transferred += bytes.len() as u64;
                store(cache, digest, &bytes)?
            }
        };
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let media_type = media_type(&bytes).ok_or_else(|| PullError::NotAnImage {
            image: reference.to_string(),
            digest: digest.to_string(),
            why: "no mediaType, no manifests and no config".into(),
        })?;
        pulled.blobs.push((digest.clone(), bytes.len() as u64));
        bar.inc(bytes.len() as u64);
        Ok((bytes, media_type))
    }

    /// GETs a manifest by digest or tag from the registry; with `expected`, the bytes must
    /// hash to it.
    fn fetch_manifest(
        &self,
        reference: &ImageRef,
        at: &str,
        expected: Option<&Digest>,
        bar: &ProgressBar,
    ) -> Result<Vec<u8>> {
        let url = self.registry.manifest_url(reference, at);
        let accept = MANIFEST_TYPES.join(", ");
        let bytes = self.fetcher.retrying(&reference.to_string(), &url, bar, || {
            let response = self.registry.get(reference, &url, Some(&accept), 0)?;
            let status = response.status();
            if status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
            {
                return Err(Attempt::Retry(format!("the registry answered {status}")));
            }
            if status == StatusCode::NOT_FOUND {
                return Err(Attempt::Fatal(match expected {
                    Some(d) => PullError::ManifestUnknown {
                        url: url.clone(),
                        image: reference.to_string(),
                        digest: d.to_string(),
                    }
                    .into(),
                    None => PullError::TagUnknown {
                        url: url.clone(),
                        image: reference.to_string(),
                    }
                    .into(),
                }));
            }
            if !status.is_success() {
                return Err(Attempt::Fatal(
                    PullError::Http {
                        url: url.clone(),
                        image: reference.to_string(),
                        status,
                    }
                    .into(),
                ));
            }
            let announced = response.content_length();
            match read_limited(response, MAX_MANIFEST) {
                Ok(Some(body)) if announced.is_some_and(|n| (body.len() as u64) < n) => Err(Attempt::Retry(format!(
                    "the manifest ended after {} of {} bytes",
                    body.len(),
                    announced.unwrap_or(0)
                ))),
                Ok(Some(body)) => Ok(body),
                Ok(None) => Err(Attempt::Fatal(
                    super::registry::RegistryError::ManifestTooLarge {
                        url: url.clone(),
                        image: reference.to_string(),
                    }
                    .into(),
                )),
                Err(e) => Err(Attempt::Retry(format!("the connection failed mid-manifest: {e}"))),
            }
        })?;
        if let Some(expected) = expected {
            let (actual, _) = digest::of_reader(expected.algorithm, &bytes[..])?;
            if &actual != expected {
                return Err(FetchError::Mismatch {
                    name: reference.to_string(),
                    url,
                    expected: expected.clone(),
                    actual,
                }
                .into());
            }
        }
        Ok(bytes)
    }

    /// The digest the source serves for `image`'s tag now (for `kubestick lock refresh`);
    /// nothing is stored.
    pub fn resolve(&self, image: &Image) -> Result<Digest> {
        let reference = ImageRef::parse(&image.reference).map_err(|e| anyhow::anyhow!("{}: {e}", image.reference))?;
        if let Some(dir) = self.mirror_dir() {
            return tagged_in_layout(dir, &reference);
        }
        let bytes = self.fetch_manifest(&reference, &reference.tag, None, &ProgressBar::hidden())?;
        Ok(digest::of_reader(Algorithm::Sha256, &bytes[..])?.0)
    }

    /// Resolves an unpinned image's tag to the digest of what the source serves for it now,
    /// keeping those bytes (they are that digest's content).
    fn resolve_tag(&self, reference: &ImageRef, bar: &ProgressBar) -> Result<Digest> {
        let cache = self.fetcher.cache();
        if let Some(dir) = self.mirror_dir() {
            return tagged_in_layout(dir, reference);
        }
        let bytes = self.fetch_manifest(reference, &reference.tag, None, bar)?;
        let (d, _) = digest::of_reader(Algorithm::Sha256, &bytes[..])?;
        let _lock = cache.lock(&d)?;
        if self.fetcher.cached(&d)?.is_none() {
            store(cache, &d, &bytes)?;
        }
        Ok(d)
    }

    fn blob(
        &self,
        reference: &ImageRef,
        descriptor: &Descriptor,
        pulled: &mut Pulled,
        bar: &ProgressBar,
    ) -> Result<()> {
        let digest = oci_digest(descriptor.digest())?;
        let size = descriptor.size();
        let name = format!("{} {}", reference, &digest.hex[..12]);
        let target = Target {
            name: &name,
            size: Some(size),
        };
        let url = self.registry.blob_url(reference, &digest.to_string());
        let send = |offset: u64| self.registry.get(reference, &url, None, offset);
        let source = match self.mirror_dir() {
            Some(dir) => Source::File(dir.join("blobs").join(digest.algorithm.as_str()).join(&digest.hex)),
            None => Source::Http {
                url: url.clone(),
                send: &send,
            },
        };
        let bar_before = bar.position();
        let fetched = self
            .fetcher
            .fetch_content(&target, &digest, &source, bar)
            .map_err(|e| match e.downcast::<FetchError>() {
                Ok(FetchError::MirrorMissing { path, .. }) => PullError::MirrorMissing {
                    mirror: self.mirror_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                    what: "blob",
                    image: reference.to_string(),
                    digest: digest.to_string(),
                    path,
                }
                .into(),
                Ok(other) => other.into(),
                Err(e) => e,
            })?;
        match fetched.outcome {
            Outcome::Cached => bar.set_position(bar_before + size),
            Outcome::Downloaded { bytes, .. } | Outcome::Copied { bytes } => pulled.transferred += bytes,
        }
        if !pulled.blobs.iter().any(|(d, _)| d == &digest) {
            pulled.blobs.push((digest, size));
        }
        Ok(())
    }
}

/// Writes verified bytes into the cache under their digest.
fn store(cache: &crate::artifacts::cache::Cache, digest: &Digest, bytes: &[u8]) -> Result<PathBuf> {
    let partial = cache.partial_path(digest);
    fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    cache.commit(&partial, digest)
}

fn read_mirror(dir: &Path, reference: &ImageRef, digest: &Digest, what: &'static str) -> Result<Vec<u8>> {
    let path = dir.join("blobs").join(digest.algorithm.as_str()).join(&digest.hex);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PullError::MirrorMissing {
                mirror: dir.display().to_string(),
                what,
                image: reference.to_string(),
                digest: digest.to_string(),
                path,
            }
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_MANIFEST + 1), &mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        anyhow::bail!(
            "{}: the manifest of {reference} is larger than {MAX_MANIFEST} bytes",
            path.display()
        );
    }
    let (actual, _) = digest::of_reader(digest.algorithm, &bytes[..])?;
    if &actual != digest {
        return Err(FetchError::Mismatch {
            name: reference.to_string(),
            url: path.display().to_string(),
            expected: digest.clone(),
            actual,
        }
        .into());
    }
    Ok(bytes)
}

/// The digest an OCI layout's index.json gives the image tagged `reference`.
fn tagged_in_layout(dir: &Path, reference: &ImageRef) -> Result<Digest> {
    let path = dir.join("index.json");
    let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let index: ImageIndex = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let wanted = reference.to_string();
    let found = index.manifests().iter().find(|m| {
        m.annotations().as_ref().is_some_and(|a| {
            ["io.containerd.image.name", "org.opencontainers.image.ref.name"]
                .iter()
                .any(|k| {
                    a.get(*k)
                        .is_some_and(|v| ImageRef::parse(v).is_ok_and(|r| r == *reference) || *v == wanted)
                })
        })
    });
    match found {
        Some(m) => oci_digest(m.digest()),
        None => Err(PullError::MirrorMissingTag {
            mirror: dir.display().to_string(),
            image: wanted,
        }
        .into()),
    }
}

fn oci_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("unsupported digest in a manifest: {e}"))
}

pub fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The media type a manifest declares, or that its shape implies (`mediaType` is optional
/// in OCI manifests and indexes).
pub fn media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(bytes).ok()?;
    match (shape.media_type, shape.manifests, shape.config) {
        (Some(m), _, _) => Some(m),
        (None, Some(_), _) => Some("application/vnd.oci.image.index.v1+json".into()),
        (None, None, Some(_)) => Some("application/vnd.oci.image.manifest.v1+json".into()),
        _ => None,
    }
}

fn amd64(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    })
}

fn platforms(index: &ImageIndex) -> String {
    let list: Vec<String> = index
        .manifests()
        .iter()
        .map(|m| match m.platform() {
            Some(p) => match p.variant() {
                Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                None => format!("{}/{}", p.os(), p.architecture()),
            },
            None => "unknown".into(),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_from_declaration_or_shape() {
        assert_eq!(
            media_type(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#).as_deref(),
            Some("application/vnd.docker.distribution.manifest.v2+json")
        );
        assert!(is_index(&media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap()));
        assert!(!is_index(
            &media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap()
        ));
        assert_eq!(media_type(br#"{"schemaVersion":2}"#), None);
        assert_eq!(media_type(b"not json"), None);
    }
}

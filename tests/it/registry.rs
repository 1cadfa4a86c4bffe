//! A fake OCI distribution registry for the image fetcher's tests and benchmark.
//!
//! The server is std only, in the style of `http_server.rs`: it listens on 127.0.0.1 with a
//! port chosen by the system, serves each connection on its own thread and answers exactly one
//! request per connection, always with `Connection: close`. Test images are built with the
//! crate's own dependencies (`sha2`, `hex`, `flate2`, `tar`, `serde_json`), deterministically:
//! the same contents always give the same bytes, so the same digests.
//!
//! Routes (GET and HEAD; any other method gets 405, HEAD gets the headers GET would get):
//!
//! * `/v2/`: 200 `{}` with [`Auth::None`] or a valid token; otherwise 401 with
//!   `WWW-Authenticate: Bearer realm="http://127.0.0.1:PORT/token",service="kubestick-test-registry"`.
//! * `/token?service=..&scope=repository:<repo>:pull` (only with [`Auth::Token`], 404
//!   otherwise): 200 with a new opaque token, bound to every repository named by a `scope`
//!   whose actions include `pull` (or `*`). Percent-encoded queries are decoded; several
//!   `scope` parameters, or several space-separated scopes in one, are all granted.
//! * `/v2/<repo>/manifests/<tag-or-digest>` and `/v2/<repo>/blobs/<digest>`, where `<repo>` may
//!   have several segments. With [`Auth::Token`], a request without `Authorization: Bearer
//!   <token granted for this repo>` gets 401 with the challenge above plus
//!   `scope="repository:<repo>:pull"` and an `UNAUTHORIZED` JSON error. Content is scoped per
//!   repository: a digest only exists under the repositories of the images it belongs to.
//!   Manifests (media types containing `manifest` or `index`) are served only under
//!   `/manifests/`, configs and layers only under `/blobs/`; anything else is 404 with
//!   `MANIFEST_UNKNOWN` or `BLOB_UNKNOWN`. A tag resolves to its image's top-level digest.
//!   Manifests answer 200 with `Content-Type: <mediaType>`, `Docker-Content-Digest` and
//!   `Content-Length`, ignoring `Range`; blobs answer with `application/octet-stream` and
//!   understand `Range: bytes=N-` (206 with `Content-Range: bytes N-END/TOTAL`, or 416 if N is
//!   not below the length; any other range form is ignored: 200 with the whole body).
//! * With [`Auth::NoTokenEndpoint`], every `/v2` request gets 401 without any
//!   `WWW-Authenticate` header, so a client can never authenticate.
//! * Anything else: 404 with a JSON error.
//!
//! The query string is ignored for routing but recorded in [`RegRequest::query`].
//!
//! Faults ([`Registry::fault`]) apply to the digest a request resolves to (by digest or by
//! tag), in every repository holding it, and only to requests that passed authentication and
//! name content that exists; see [`Fault`] for what each does. Dropping the [`Registry`] shuts
//! down every open connection (the client reads end of file, or a write fails) and returns
//! within a few tens of milliseconds, whatever is in flight.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest as _;

// The HTTP plumbing (request heads, ranges, status lines) is the file server's.
use crate::http_server::{lock, parse_range, read_head, reason};

/// The `service` of the registry's token challenge.
pub const SERVICE: &str = "kubestick-test-registry";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The annotation `layout` puts on each image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// Size of the pieces bodies are written in (the stop flag is looked at between them).
const CHUNK: usize = 64 * 1024;
/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Every token is said to be issued at this time.
const ISSUED_AT: &str = "2026-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Test images

/// One piece of content: a manifest, an index, a config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: digest_of(&bytes),
            bytes,
        }
    }

    /// The digest without its `sha256:` prefix.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// `{"mediaType":..,"digest":..,"size":..}`.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }

    /// Served under `/manifests/` (true) or `/blobs/` (false).
    fn is_manifest(&self) -> bool {
        self.media_type.contains("manifest") || self.media_type.contains("index")
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An image as a registry holds it. Every JSON document is serialised compactly with a fixed
/// field order, so equal inputs give equal bytes and digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// e.g. `pause`, `library/traefik`, `coredns/coredns`.
    pub repository: String,
    pub tag: String,
    /// An OCI image index when multi-platform.
    pub index: Option<Blob>,
    /// The linux/amd64 image manifest (for [`TestImage::without_amd64`], linux/arm64's).
    pub manifest: Blob,
    /// The manifest's config: `"architecture"`, `"os":"linux"`, and `rootfs.diff_ids` (the
    /// sha256 of each uncompressed layer tar).
    pub config: Blob,
    /// Gzip'd tars, one per entry given to the constructor.
    pub layers: Vec<Blob>,
    /// Other platforms' manifests, configs and layers listed in the index, served too.
    pub others: Vec<Blob>,
}

/// Media types of one manifest flavour.
struct Flavour {
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI: Flavour = Flavour {
    manifest: OCI_MANIFEST,
    config: OCI_CONFIG,
    layer: OCI_LAYER,
};

const DOCKER: Flavour = Flavour {
    manifest: DOCKER_MANIFEST,
    config: DOCKER_CONFIG,
    layer: DOCKER_LAYER,
};

/// One platform's image: manifest, config, layers.
struct Platform {
    architecture: &'static str,
    variant: Option<&'static str>,
    manifest: Blob,
    config: Blob,
    layers: Vec<Blob>,
}

impl Platform {
    fn build(
        flavour: &Flavour,
        architecture: &'static str,
        variant: Option<&'static str>,
        layers: &[&[(&str, &[u8])]],
    ) -> Platform {
        let mut blobs = Vec::with_capacity(layers.len());
        let mut diff_ids = Vec::with_capacity(layers.len());
        for files in layers {
            let tar = layer_tar(files);
            diff_ids.push(digest_of(&tar));
            blobs.push(Blob::new(flavour.layer, gzip(&tar)));
        }
        let mut config = json!({ "architecture": architecture, "os": "linux" });
        if let Some(variant) = variant {
            config["variant"] = json!(variant);
        }
        config["config"] = json!({});
        config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
        let config = Blob::new(flavour.config, to_bytes(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": flavour.manifest,
            "config": config.descriptor(),
            "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        Platform {
            architecture,
            variant,
            manifest: Blob::new(flavour.manifest, to_bytes(&manifest)),
            config,
            layers: blobs,
        }
    }

    /// A small OCI image for a platform nobody is expected to pull: one layer holding
    /// `etc/platform` with the platform's name.
    fn small(architecture: &'static str, variant: Option<&'static str>) -> Platform {
        let name = match variant {
            Some(variant) => format!("linux/{architecture}/{variant}\n"),
            None => format!("linux/{architecture}\n"),
        };
        Platform::build(&OCI, architecture, variant, &[&[("etc/platform", name.as_bytes())]])
    }

    fn entry(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture, "os": "linux" });
        if let Some(variant) = self.variant {
            platform["variant"] = json!(variant);
        }
        let mut entry = self.manifest.descriptor();
        entry["platform"] = platform;
        entry
    }

    /// Manifest, config, layers.
    fn into_blobs(self) -> Vec<Blob> {
        let mut blobs = vec![self.manifest, self.config];
        blobs.extend(self.layers);
        blobs
    }
}

fn index_of(platforms: &[&Platform]) -> Blob {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": platforms.iter().map(|p| p.entry()).collect::<Vec<_>>(),
    });
    Blob::new(OCI_INDEX, to_bytes(&index))
}

impl TestImage {
    /// A single-platform linux/amd64 OCI image: the manifest is the top level. One layer per
    /// entry of `layers`, each holding those (path, contents) files.
    pub fn single(repository: &str, tag: &str, layers: &[&[(&str, &[u8])]]) -> TestImage {
        TestImage::flat(&OCI, repository, tag, layers)
    }

    /// Like [`TestImage::single`], with Docker's media types (manifest
    /// `application/vnd.docker.distribution.manifest.v2+json`, config
    /// `application/vnd.docker.container.image.v1+json`, layers
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`): what docker.io serves for older
    /// images. Config and layer bytes equal `single`'s for the same contents.
    pub fn docker_v2(repository: &str, tag: &str, layers: &[&[(&str, &[u8])]]) -> TestImage {
        TestImage::flat(&DOCKER, repository, tag, layers)
    }

    fn flat(flavour: &Flavour, repository: &str, tag: &str, layers: &[&[(&str, &[u8])]]) -> TestImage {
        let amd64 = Platform::build(flavour, "amd64", None, layers);
        TestImage {
            repository: repository.to_string(),
            tag: tag.to_string(),
            index: None,
            manifest: amd64.manifest,
            config: amd64.config,
            layers: amd64.layers,
            others: Vec::new(),
        }
    }

    /// [`TestImage::single`] wrapped in an OCI index listing linux/amd64 (this manifest) then
    /// linux/arm64/v8 (a small manifest, config and layer, in `others`).
    pub fn multi(repository: &str, tag: &str, layers: &[&[(&str, &[u8])]]) -> TestImage {
        let amd64 = Platform::build(&OCI, "amd64", None, layers);
        let arm64 = Platform::small("arm64", Some("v8"));
        let index = index_of(&[&amd64, &arm64]);
        TestImage {
            repository: repository.to_string(),
            tag: tag.to_string(),
            index: Some(index),
            manifest: amd64.manifest,
            config: amd64.config,
            layers: amd64.layers,
            others: arm64.into_blobs(),
        }
    }

    /// An OCI index listing only linux/arm64/v8 and linux/arm/v7. There is no amd64 manifest:
    /// `manifest`, `config` and `layers` are linux/arm64's, `others` holds linux/arm/v7's.
    pub fn without_amd64(repository: &str, tag: &str) -> TestImage {
        let arm64 = Platform::small("arm64", Some("v8"));
        let arm = Platform::small("arm", Some("v7"));
        let index = index_of(&[&arm64, &arm]);
        TestImage {
            repository: repository.to_string(),
            tag: tag.to_string(),
            index: Some(index),
            manifest: arm64.manifest,
            config: arm64.config,
            layers: arm64.layers,
            others: arm.into_blobs(),
        }
    }

    /// The index if there is one, else the manifest: what the tag points at.
    pub fn top(&self) -> &Blob {
        self.index.as_ref().unwrap_or(&self.manifest)
    }

    /// `top().digest`.
    pub fn digest(&self) -> &str {
        &self.top().digest
    }

    /// Every blob served for this image, each digest once: the index (if any), the manifest,
    /// the config, the layers, then `others`.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = HashSet::new();
        self.index
            .iter()
            .chain([&self.manifest, &self.config])
            .chain(&self.layers)
            .chain(&self.others)
            .filter(|blob| seen.insert(blob.digest.as_str()))
            .collect()
    }
}

/// Writes an OCI image layout into `dir` (created if missing): `oci-layout`, every blob of
/// every image as `blobs/sha256/<hex>`, and `index.json` listing each image's top descriptor,
/// in the order given, annotated with `org.opencontainers.image.ref.name` =
/// `<repository>:<tag>`. Panics on I/O errors.
pub fn layout(images: &[&TestImage], dir: &Path) {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("registry: create {}: {e}", blobs.display()));
    let write = |path: &Path, bytes: &[u8]| {
        fs::write(path, bytes).unwrap_or_else(|e| panic!("registry: write {}: {e}", path.display()));
    };
    write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut manifests = Vec::with_capacity(images.len());
    for image in images {
        for blob in image.blobs() {
            write(&blobs.join(blob.hex()), &blob.bytes);
        }
        let mut descriptor = image.top().descriptor();
        descriptor["annotations"] = json!({ REF_NAME: format!("{}:{}", image.repository, image.tag) });
        manifests.push(descriptor);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    write(&dir.join("index.json"), &to_bytes(&index));
}

/// An uncompressed tar of `files`, deterministic: GNU headers, regular files, mode 0644,
/// uid/gid 0, no user or group names, mtime 0, in the order given.
pub fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, *contents)
            .unwrap_or_else(|e| panic!("registry: tar entry {path}: {e}"));
    }
    builder.into_inner().expect("registry: finish tar")
}

/// Gzip with fixed settings (level 6, mtime 0, OS "unknown", no file name).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).expect("registry: gzip");
    encoder.finish().expect("registry: gzip")
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry: serialise JSON")
}

// ---------------------------------------------------------------------------------------------
// The registry

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// docker.io-style anonymous bearer tokens from `/token`.
    Token,
    /// Everything open; `/token` is 404.
    None,
    /// Every `/v2` request gets 401 without `WWW-Authenticate`; `/token` is 404.
    NoTokenEndpoint,
}

/// A misbehaviour for one digest (manifest or blob), set with [`Registry::fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 404 with the registry's JSON error (`MANIFEST_UNKNOWN` / `BLOB_UNKNOWN`), every request.
    NotFound,
    /// The normal headers (right length, right `Docker-Content-Digest`, ranges honoured) but
    /// every byte of the body flipped (`!b`).
    WrongBytes,
    /// Every GET: 200 with the whole length announced (`Range` ignored), then
    /// `min(after, length - 1)` bytes, then the connection is shut down: it never completes
    /// (unless the content is empty). HEAD is answered normally.
    CutShort { after: usize },
    /// Like `CutShort` for the first GET only; later GETs are normal (ranges honoured), so a
    /// resuming client completes. HEAD is answered normally and does not use it up.
    CutShortOnce { after: usize },
    /// The first `times` requests (GET or HEAD) get this status with a JSON error (and
    /// `Retry-After: 0` for 429 and 503), later ones are normal.
    Status { code: u16, times: u32 },
    /// 200 with the normal `Content-Type` and `Docker-Content-Digest` but `Content-Length` =
    /// `bytes`, and a body of exactly `bytes` bytes of `{"padding":"aaaa…"}`, streamed in
    /// pieces (never held in memory); the handler stops quietly when the client hangs up.
    /// `Range` is ignored.
    Huge { bytes: u64 },
}

/// One request, as recorded on arrival (once its head was read whole and parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegRequest {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// What followed `?` (not decoded), or empty.
    pub query: String,
    pub authorization: Option<String>,
    /// The raw `Range` header.
    pub range: Option<String>,
    /// The raw `Accept` header.
    pub accept: Option<String>,
    /// For `/manifests/` and `/blobs/` routes: the digest named, or the one the tag resolved to
    /// in that repository (`None` for an unknown tag).
    pub digest: Option<String>,
    /// The status sent back; 0 until the response head is written (it is set before the
    /// client can see the response).
    pub status: u16,
}

/// A running registry. Dropping it stops the accept loop, shuts down open connections and
/// joins every thread; that takes a few tens of milliseconds at most.
pub struct Registry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    auth: Auth,
    /// `http://127.0.0.1:PORT/token`.
    realm: String,
    repos: HashMap<String, Repo>,
    stop: AtomicBool,
    log: Mutex<Vec<RegRequest>>,
    /// The fault in force per digest (a used-up `CutShortOnce` is removed, `Status` counts down).
    faults: Mutex<HashMap<String, Fault>>,
    /// Token -> repositories it may pull.
    tokens: Mutex<HashMap<String, HashSet<String>>>,
    next_token: AtomicU64,
    /// A clone of every open connection, so that stopping can shut them all down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

#[derive(Default)]
struct Repo {
    manifests: HashMap<String, Blob>,
    blobs: HashMap<String, Blob>,
    /// Tag -> top-level digest.
    tags: HashMap<String, String>,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 with a free port, serving every blob of `images` under
    /// its image's repository, and each image's tag. Panics if a repository:tag is given twice
    /// with different content, or the socket cannot be set up.
    pub fn start(images: &[&TestImage], auth: Auth) -> Registry {
        let mut repos: HashMap<String, Repo> = HashMap::new();
        for image in images {
            let repo = repos.entry(image.repository.clone()).or_default();
            for blob in image.blobs() {
                let table = if blob.is_manifest() {
                    &mut repo.manifests
                } else {
                    &mut repo.blobs
                };
                table.entry(blob.digest.clone()).or_insert_with(|| blob.clone());
            }
            if let Some(previous) = repo.tags.insert(image.tag.clone(), image.digest().to_string()) {
                assert!(
                    previous == image.digest(),
                    "registry: {}:{} given twice with different content",
                    image.repository,
                    image.tag
                );
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("registry: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("registry: nonblocking listener");
        let addr = listener.local_addr().expect("registry: local address");
        let shared = Arc::new(Shared {
            auth,
            realm: format!("http://{addr}/token"),
            repos,
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("registry-accept".to_string())
                .spawn(move || accept_loop(listener, shared))
                .expect("registry: spawn accept thread")
        };
        Registry {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Sets (or replaces) the fault for `digest` (`sha256:<hex>`), from the next request on.
    pub fn fault(&self, digest: &str, fault: Fault) {
        lock(&self.shared.faults).insert(digest.to_string(), fault);
    }

    /// Removes the fault for `digest`, if any.
    pub fn clear_fault(&self, digest: &str) {
        lock(&self.shared.faults).remove(digest);
    }

    /// `http://127.0.0.1:PORT` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RegRequest> {
        lock(&self.shared.log).clone()
    }

    /// How many GET requests (any status) asked for this digest's blob or manifest, by digest
    /// or by a tag resolving to it, in any repository. HEAD requests are not counted.
    pub fn gets(&self, digest: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.method == "GET" && r.digest.as_deref() == Some(digest))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// What a fault makes the current request do.
enum Action {
    NotFound,
    WrongBytes,
    Cut(usize),
    Status(u16),
    Huge(u64),
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records a connection so that stopping can shut it down; false if the server is stopping
    /// (checked under the lock that `Drop` takes after raising the flag, so none slips through).
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let mut conns = lock(&self.conns);
        if self.stopped() {
            return false;
        }
        match stream.try_clone() {
            Ok(clone) => {
                conns.insert(id, clone);
                true
            }
            Err(_) => false,
        }
    }

    /// The digest a manifest reference names: itself if it is a digest, else the tag's.
    fn resolve(&self, repo: &str, reference: &str) -> Option<String> {
        if reference.starts_with("sha256:") {
            return Some(reference.to_string());
        }
        self.repos.get(repo)?.tags.get(reference).cloned()
    }

    /// Whether `authorization` lets the request in: for `repo` if given, else for any route.
    fn authorized(&self, authorization: Option<&str>, repo: Option<&str>) -> bool {
        match self.auth {
            Auth::None => true,
            Auth::NoTokenEndpoint => false,
            Auth::Token => {
                let Some(token) = authorization.and_then(bearer) else {
                    return false;
                };
                match (lock(&self.tokens).get(token), repo) {
                    (Some(repos), Some(repo)) => repos.contains(repo),
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            }
        }
    }

    /// The `WWW-Authenticate` header for a refused request, if the mode sends one.
    fn challenge(&self, repo: Option<&str>) -> Vec<(&'static str, String)> {
        if self.auth != Auth::Token {
            return Vec::new();
        }
        let mut value = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", self.realm);
        if let Some(repo) = repo {
            value.push_str(&format!(",scope=\"repository:{repo}:pull\""));
        }
        vec![("WWW-Authenticate", value)]
    }

    /// Issues a token for the `scope` parameters of `query`.
    fn issue(&self, query: &str) -> String {
        let mut repos = HashSet::new();
        for value in query_values(query, "scope") {
            for scope in value.split_whitespace() {
                let Some((resource, actions)) = scope.rsplit_once(':') else {
                    continue;
                };
                let Some(repo) = resource.strip_prefix("repository:") else {
                    continue;
                };
                if actions.split(',').any(|a| a == "pull" || a == "*") {
                    repos.insert(repo.to_string());
                }
            }
        }
        let n = self.next_token.fetch_add(1, Ordering::SeqCst);
        let mut granted: Vec<&String> = repos.iter().collect();
        granted.sort();
        let token = hex::encode(sha2::Sha256::digest(format!("{n}:{granted:?}").as_bytes()));
        lock(&self.tokens).insert(token.clone(), repos);
        token
    }

    /// Decides, and uses up, what the fault for `digest` does to this request.
    fn take_fault(&self, digest: &str, get: bool) -> Option<Action> {
        let mut faults = lock(&self.faults);
        let fault = faults.get_mut(digest)?;
        match fault {
            Fault::NotFound => Some(Action::NotFound),
            Fault::WrongBytes => Some(Action::WrongBytes),
            Fault::CutShort { after } => get.then_some(Action::Cut(*after)),
            Fault::CutShortOnce { after } => {
                if !get {
                    return None;
                }
                let after = *after;
                faults.remove(digest);
                Some(Action::Cut(after))
            }
            Fault::Status { code, times } => {
                if *times == 0 {
                    return None;
                }
                *times -= 1;
                Some(Action::Status(*code))
            }
            Fault::Huge { bytes } => Some(Action::Huge(*bytes)),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The percent-decoded values of every `name=value` pair of `query` (`+` is a space).
fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(value), _) => {
                out.push(value);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a connection from the registry when its handler ends, even by panic.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                workers.retain(|w| !w.is_finished());
                let id = next_id;
                next_id += 1;
                if !shared.register(id, &stream) {
                    continue;
                }
                let worker_shared = Arc::clone(&shared);
                let spawned = thread::Builder::new().name("registry-conn".to_string()).spawn(move || {
                    let _registered = Registered {
                        shared: &worker_shared,
                        id,
                    };
                    handle(stream, &worker_shared);
                });
                match spawned {
                    Ok(worker) => workers.push(worker),
                    Err(_) => {
                        lock(&shared.conns).remove(&id);
                    }
                }
            }
            // WouldBlock is the normal "nobody waiting"; anything else (out of descriptors,
            // aborted handshake) is retried after the same pause.
            Err(_) => thread::sleep(POLL),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// A request as parsed from the wire.
struct Incoming {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    range: Option<String>,
    accept: Option<String>,
}

fn handle(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let incoming = match read_head(&mut stream) {
        // The client left (or the server stopped) before sending a whole request.
        Ok(None) => return,
        Ok(Some(head)) => parse_head(&head),
        Err(_) => None,
    };
    let Some(incoming) = incoming else {
        let mut reply = Reply::new(&mut stream, shared, None, false);
        let _ = reply.error(400, "UNSUPPORTED", "malformed request", &[]);
        return;
    };
    // Errors here mean the client went away or the server is stopping: nothing to do.
    let _ = respond(&mut stream, shared, &incoming);
    let _ = stream.flush();
    // Dropping the stream closes it: the end of every response (`Connection: close`).
}

fn parse_head(head: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?;
    let target = request_line.next()?;
    let version = request_line.next()?;
    if !version.starts_with("HTTP/") || request_line.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut incoming = Incoming {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        authorization: None,
        range: None,
        accept: None,
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = Some(value.trim().to_string());
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => incoming.authorization = value,
            "range" => incoming.range = value,
            "accept" => incoming.accept = value,
            _ => {}
        }
    }
    Some(incoming)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

enum Route<'a> {
    Token,
    /// `/v2/`.
    Base,
    Content {
        kind: Kind,
        repo: &'a str,
        reference: &'a str,
    },
    /// Another path under `/v2/`.
    OtherV2,
    Other,
}

fn route(path: &str) -> Route<'_> {
    if path == "/token" {
        return Route::Token;
    }
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    let mut parts = rest.rsplitn(3, '/');
    let (Some(reference), Some(kind), Some(repo)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::OtherV2;
    };
    if reference.is_empty() || repo.split('/').any(str::is_empty) {
        return Route::OtherV2;
    }
    let kind = match kind {
        "manifests" => Kind::Manifest,
        "blobs" => Kind::Blob,
        _ => return Route::OtherV2,
    };
    Route::Content { kind, repo, reference }
}

fn respond(stream: &mut TcpStream, shared: &Shared, incoming: &Incoming) -> io::Result<()> {
    let route = route(&incoming.path);
    let digest = match route {
        Route::Content {
            kind: Kind::Manifest,
            repo,
            reference,
        } => shared.resolve(repo, reference),
        Route::Content { reference, .. } => Some(reference.to_string()),
        _ => None,
    };
    let index = {
        let mut log = lock(&shared.log);
        log.push(RegRequest {
            method: incoming.method.clone(),
            path: incoming.path.clone(),
            query: incoming.query.clone(),
            authorization: incoming.authorization.clone(),
            range: incoming.range.clone(),
            accept: incoming.accept.clone(),
            digest: digest.clone(),
            status: 0,
        });
        log.len() - 1
    };
    let head_only = incoming.method == "HEAD";
    let mut reply = Reply::new(stream, shared, Some(index), head_only);
    if incoming.method != "GET" && !head_only {
        let allow = [("Allow", "GET, HEAD".to_string())];
        return reply.error(405, "UNSUPPORTED", "only GET and HEAD are served", &allow);
    }
    let authorization = incoming.authorization.as_deref();
    match route {
        Route::Token if shared.auth == Auth::Token => {
            let token = shared.issue(&incoming.query);
            let body =
                format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300,"issued_at":"{ISSUED_AT}"}}"#);
            reply.json(200, &body, &[])
        }
        Route::Token | Route::Other => reply.error(404, "NOT_FOUND", "no such route", &[]),
        Route::Base | Route::OtherV2 if !shared.authorized(authorization, None) => {
            reply.error(401, "UNAUTHORIZED", "authentication required", &shared.challenge(None))
        }
        Route::Base => reply.json(200, "{}", &[]),
        Route::OtherV2 => reply.error(404, "NOT_FOUND", "no such route", &[]),
        Route::Content { repo, .. } if !shared.authorized(authorization, Some(repo)) => reply.error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            &shared.challenge(Some(repo)),
        ),
        Route::Content { kind, repo, .. } => {
            let range = incoming.range.as_deref().and_then(parse_range);
            content(&mut reply, shared, kind, repo, digest.as_deref(), range)
        }
    }
}

fn unknown(reply: &mut Reply<'_>, kind: Kind) -> io::Result<()> {
    match kind {
        Kind::Manifest => reply.error(404, "MANIFEST_UNKNOWN", "manifest unknown", &[]),
        Kind::Blob => reply.error(404, "BLOB_UNKNOWN", "blob unknown to registry", &[]),
    }
}

fn content(
    reply: &mut Reply<'_>,
    shared: &Shared,
    kind: Kind,
    repo: &str,
    digest: Option<&str>,
    range: Option<u64>,
) -> io::Result<()> {
    let found = digest.and_then(|digest| {
        let repo = shared.repos.get(repo)?;
        match kind {
            Kind::Manifest => repo.manifests.get(digest),
            Kind::Blob => repo.blobs.get(digest),
        }
    });
    let Some(blob) = found else {
        return unknown(reply, kind);
    };
    let content_type = match kind {
        Kind::Manifest => blob.media_type.clone(),
        Kind::Blob => "application/octet-stream".to_string(),
    };
    let mut headers = vec![
        ("Content-Type", content_type),
        ("Docker-Content-Digest", blob.digest.clone()),
    ];
    let total = blob.bytes.len() as u64;
    match shared.take_fault(&blob.digest, !reply.head_only) {
        Some(Action::NotFound) => unknown(reply, kind),
        Some(Action::Status(code)) => {
            let error = match code {
                401 => "UNAUTHORIZED",
                403 => "DENIED",
                404 if kind == Kind::Manifest => "MANIFEST_UNKNOWN",
                404 => "BLOB_UNKNOWN",
                429 => "TOOMANYREQUESTS",
                503 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            let mut retry = Vec::new();
            if matches!(code, 429 | 503) {
                retry.push(("Retry-After", "0".to_string()));
            }
            reply.error(code, error, reason(code), &retry)
        }
        Some(Action::Huge(bytes)) => {
            reply.head(200, bytes, &headers)?;
            reply.padding(bytes)
        }
        Some(Action::Cut(after)) => {
            reply.head(200, total, &headers)?;
            let send = after.min(blob.bytes.len().saturating_sub(1));
            let sent = reply.body(&blob.bytes[..send]);
            let _ = reply.stream.flush();
            let _ = reply.stream.shutdown(Shutdown::Both);
            sent
        }
        action => {
            let flipped;
            let bytes = if matches!(action, Some(Action::WrongBytes)) {
                flipped = blob.bytes.iter().map(|b| !b).collect::<Vec<u8>>();
                &flipped
            } else {
                &blob.bytes
            };
            if kind == Kind::Manifest {
                reply.head(200, total, &headers)?;
                return reply.body(bytes);
            }
            headers.push(("Accept-Ranges", "bytes".to_string()));
            match range {
                None => {
                    reply.head(200, total, &headers)?;
                    reply.body(bytes)
                }
                Some(start) if start < total => {
                    headers.push(("Content-Range", format!("bytes {start}-{}/{total}", total - 1)));
                    reply.head(206, total - start, &headers)?;
                    reply.body(&bytes[start as usize..])
                }
                Some(_) => {
                    let unsatisfiable = [("Content-Range", format!("bytes */{total}"))];
                    reply.error(416, "RANGE_INVALID", "range not satisfiable", &unsatisfiable)
                }
            }
        }
    }
}

/// The response being written for one request.
struct Reply<'a> {
    stream: &'a mut TcpStream,
    shared: &'a Shared,
    /// The request's entry in the log.
    index: Option<usize>,
    head_only: bool,
}

impl<'a> Reply<'a> {
    fn new(stream: &'a mut TcpStream, shared: &'a Shared, index: Option<usize>, head_only: bool) -> Self {
        Reply {
            stream,
            shared,
            index,
            head_only,
        }
    }

    /// Records the status, then writes the status line and headers.
    fn head(&mut self, status: u16, length: u64, headers: &[(&str, String)]) -> io::Result<()> {
        if let Some(index) = self.index
            && let Some(entry) = lock(&self.shared.log).get_mut(index)
        {
            entry.status = status;
        }
        let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Length: {length}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n");
        self.stream.write_all(head.as_bytes())
    }

    /// Writes `bytes` (nothing for HEAD) in pieces, giving up quietly once the server stops.
    fn body(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.head_only {
            return Ok(());
        }
        for piece in bytes.chunks(CHUNK) {
            if self.shared.stopped() {
                return Ok(());
            }
            self.stream.write_all(piece)?;
        }
        Ok(())
    }

    fn json(&mut self, status: u16, body: &str, headers: &[(&str, String)]) -> io::Result<()> {
        let mut all = vec![("Content-Type", "application/json".to_string())];
        all.extend(headers.iter().cloned());
        self.head(status, body.len() as u64, &all)?;
        self.body(body.as_bytes())
    }

    /// `status` with the registry's JSON error body `{"errors":[{"code":..,"message":..}]}`.
    fn error(&mut self, status: u16, code: &str, message: &str, headers: &[(&str, String)]) -> io::Result<()> {
        let body = json!({ "errors": [{ "code": code, "message": message }] });
        self.json(status, &body.to_string(), headers)
    }

    /// Exactly `total` bytes of `{"padding":"aaaa…"}` (the first `total` bytes of
    /// `{"padding":""}` if `total` is below its 14), streamed without holding them; ends
    /// quietly when the client hangs up or the server stops.
    fn padding(&mut self, total: u64) -> io::Result<()> {
        const OPEN: &[u8] = br#"{"padding":""#;
        const CLOSE: &[u8] = br#""}"#;
        const EMPTY: &[u8] = br#"{"padding":""}"#;
        if self.head_only {
            return Ok(());
        }
        let frame = EMPTY.len() as u64;
        if total < frame {
            return self.body(&EMPTY[..total as usize]);
        }
        self.stream.write_all(OPEN)?;
        let filler = vec![b'a'; CHUNK];
        let mut left = total - frame;
        while left > 0 {
            if self.shared.stopped() {
                return Ok(());
            }
            let n = left.min(CHUNK as u64) as usize;
            self.stream.write_all(&filler[..n])?;
            left -= n as u64;
        }
        self.stream.write_all(CLOSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_server::client::*;

    /// Safety net for every client read: far above anything a passing test waits.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

    const SMALL: &[(&str, &[u8])] = &[("etc/hello", b"hello\n"), ("usr/bin/tool", b"#!/bin/sh\necho tool\n")];
    const OTHER: &[(&str, &[u8])] = &[("etc/other", b"other\n")];

    /// Incompressible bytes (xorshift), so a layer holding them is as large as they are.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// What a registry's answers carry beyond plain HTTP.
    trait RegistryResponse {
        fn json(&self) -> Value;
        /// The code of a registry JSON error.
        fn code(&self) -> String;
    }

    impl RegistryResponse for Response {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
        }

        fn code(&self) -> String {
            self.json()["errors"][0]["code"].as_str().unwrap().to_string()
        }
    }

    fn connect(reg: &Registry, method: &str, target: &str, headers: &[(&str, &str)]) -> TcpStream {
        send(reg.addr, method, target, headers, CLIENT_TIMEOUT)
    }

    /// Reads until the blank line after the headers; returns the parsed head (with an empty
    /// body) and any body bytes read with it.
    fn read_head_only(stream: &mut TcpStream) -> (Response, Vec<u8>) {
        let (head, body) = read_until_body(stream);
        (parse(head, End::Eof), body)
    }

    fn call(reg: &Registry, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        let mut stream = connect(reg, method, target, headers);
        let mut data = Vec::new();
        let end = read_all(&mut stream, &mut data);
        parse(data, end)
    }

    /// GET, with `Authorization: Bearer <token>` if a token is given, and `extra` headers.
    fn get_with(reg: &Registry, target: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        headers.extend_from_slice(extra);
        call(reg, "GET", target, &headers)
    }

    fn get(reg: &Registry, target: &str, token: Option<&str>) -> Response {
        get_with(reg, target, token, &[])
    }

    fn get_from(reg: &Registry, target: &str, token: Option<&str>, start: u64) -> Response {
        get_with(reg, target, token, &[("Range", &format!("bytes={start}-"))])
    }

    fn head(reg: &Registry, target: &str, token: Option<&str>) -> Response {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        call(reg, "HEAD", target, &headers)
    }

    /// A pull token for `repo`, the way a client gets one.
    fn token(reg: &Registry, repo: &str) -> String {
        let r = get(
            reg,
            &format!("/token?service={SERVICE}&scope=repository:{repo}:pull"),
            None,
        );
        assert_eq!(r.status, 200);
        r.json()["token"].as_str().unwrap().to_string()
    }

    fn manifest(repo: &str, reference: &str) -> String {
        format!("/v2/{repo}/manifests/{reference}")
    }

    fn blob(repo: &str, digest: &str) -> String {
        format!("/v2/{repo}/blobs/{digest}")
    }

    /// The (path, contents) of every entry of a gzip'd tar layer, with their headers checked.
    fn unpack(layer: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header();
                assert_eq!(header.entry_type(), tar::EntryType::Regular);
                assert_eq!(header.mode().unwrap(), 0o644);
                assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
                assert_eq!(header.mtime().unwrap(), 0);
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents).unwrap();
                (path, contents)
            })
            .collect()
    }

    fn files(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(p, c)| (p.to_string(), c.to_vec())).collect()
    }

    /// The `key="value"` parameters of a `Bearer` challenge.
    fn challenge(header: &str) -> HashMap<String, String> {
        let params = header.strip_prefix("Bearer ").expect("a Bearer challenge");
        params
            .split(',')
            .map(|param| {
                let (key, value) = param.split_once('=').unwrap();
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn token_flow_works_end_to_end_with_reqwest() {
        let image = TestImage::multi("library/traefik", "v3.1", &[SMALL, OTHER]);
        let reg = Registry::start(&[&image], Auth::Token);
        let client = reqwest::blocking::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let base = reg.base();

        let ping = client.get(format!("{base}/v2/")).send().unwrap();
        assert_eq!(ping.status(), 401);
        assert_eq!(
            ping.headers()["www-authenticate"],
            format!("Bearer realm=\"{base}/token\",service=\"kubestick-test-registry\"").as_str()
        );

        let url = |path: String| format!("{base}{path}");
        let refused = client.get(url(manifest("library/traefik", "v3.1"))).send().unwrap();
        assert_eq!(refused.status(), 401);
        let header = refused.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert_eq!(
            header,
            format!(
                "Bearer realm=\"{base}/token\",service=\"kubestick-test-registry\",scope=\"repository:library/traefik:pull\""
            )
        );
        let error: Value = serde_json::from_slice(&refused.bytes().unwrap()).unwrap();
        assert_eq!(error["errors"][0]["code"], "UNAUTHORIZED");

        // reqwest percent-encodes the scope (`repository%3Alibrary%2Ftraefik%3Apull`).
        let params = challenge(&header);
        let issued = client
            .get(&params["realm"])
            .query(&[("service", &params["service"]), ("scope", &params["scope"])])
            .send()
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .unwrap();
        let issued: Value = serde_json::from_slice(&issued).unwrap();
        let token = issued["token"].as_str().unwrap();
        assert!(!token.is_empty());
        assert_eq!(issued["access_token"], token);
        assert_eq!(issued["expires_in"], 300);
        assert_eq!(issued["issued_at"], "2026-01-01T00:00:00Z");

        let fetch = |path: String| {
            let response = client
                .get(url(path))
                .bearer_auth(token)
                .header("Accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
            let (content_type, digest) = (header("content-type"), header("docker-content-digest"));
            let bytes = response.bytes().unwrap().to_vec();
            assert_eq!(digest_of(&bytes), digest, "bytes match Docker-Content-Digest");
            (content_type, digest, bytes)
        };

        let (content_type, digest, bytes) = fetch(manifest("library/traefik", "v3.1"));
        assert_eq!(content_type, OCI_INDEX);
        assert_eq!(digest, image.digest());
        let index: Value = serde_json::from_slice(&bytes).unwrap();
        let amd64 = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64" && m["platform"]["os"] == "linux")
            .unwrap();
        let amd64 = amd64["digest"].as_str().unwrap();
        assert_eq!(amd64, image.manifest.digest);

        let (content_type, digest, bytes) = fetch(manifest("library/traefik", amd64));
        assert_eq!((content_type.as_str(), digest.as_str()), (OCI_MANIFEST, amd64));
        let parsed: Value = serde_json::from_slice(&bytes).unwrap();

        let config = parsed["config"]["digest"].as_str().unwrap();
        let (content_type, _, bytes) = fetch(blob("library/traefik", config));
        assert_eq!(content_type, "application/octet-stream");
        let config: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (config["architecture"].as_str(), config["os"].as_str()),
            (Some("amd64"), Some("linux"))
        );

        let layers: Vec<Vec<(String, Vec<u8>)>> = parsed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| {
                assert_eq!(layer["mediaType"], OCI_LAYER);
                let (_, _, bytes) = fetch(blob("library/traefik", layer["digest"].as_str().unwrap()));
                assert_eq!(layer["size"], bytes.len());
                unpack(&bytes)
            })
            .collect();
        assert_eq!(layers, vec![files(SMALL), files(OTHER)]);

        let ping = client.get(format!("{base}/v2/")).bearer_auth(token).send().unwrap();
        assert_eq!(ping.status(), 200);
        assert_eq!(ping.text().unwrap(), "{}");
    }

    #[test]
    fn a_token_for_another_repo_or_an_unknown_one_is_refused() {
        let pause = TestImage::single("pause", "3.10", &[SMALL]);
        let coredns = TestImage::single("coredns/coredns", "v1.12.0", &[OTHER]);
        let reg = Registry::start(&[&pause, &coredns], Auth::Token);
        let for_pause = token(&reg, "pause");
        assert_eq!(get(&reg, &manifest("pause", "3.10"), Some(&for_pause)).status, 200);

        for path in [
            manifest("coredns/coredns", "v1.12.0"),
            manifest("coredns/coredns", coredns.digest()),
            blob("coredns/coredns", &coredns.layers[0].digest),
        ] {
            let r = get(&reg, &path, Some(&for_pause));
            assert_eq!(r.status, 401, "{path}");
            assert_eq!(r.code(), "UNAUTHORIZED");
            assert_eq!(
                r.header("www-authenticate"),
                Some(
                    format!(
                        "Bearer realm=\"{}/token\",service=\"{SERVICE}\",scope=\"repository:coredns/coredns:pull\"",
                        reg.base()
                    )
                    .as_str()
                )
            );
        }

        let path = manifest("pause", "3.10");
        assert_eq!(get(&reg, &path, Some("not-a-token")).status, 401);
        let basic = get_with(&reg, &path, None, &[("Authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(basic.status, 401);
        let push_only = get(&reg, "/token?service=x&scope=repository:pause:push", None).json();
        assert_eq!(get(&reg, &path, push_only["token"].as_str()).status, 401);

        // One token for two repositories (two scope parameters), and `bearer` in any case.
        let both = get(
            &reg,
            "/token?scope=repository:pause:pull&scope=repository%3Acoredns%2Fcoredns%3Apull",
            None,
        )
        .json();
        let both = format!("bearer {}", both["token"].as_str().unwrap());
        for path in [manifest("pause", "3.10"), manifest("coredns/coredns", "v1.12.0")] {
            let r = get_with(&reg, &path, None, &[("Authorization", &both)]);
            assert_eq!(r.status, 200, "{path}");
        }
    }

    #[test]
    fn content_is_scoped_per_repository_and_per_kind() {
        let pause = TestImage::single("pause", "3.10", &[SMALL]);
        let coredns = TestImage::docker_v2("coredns/coredns", "v1.12.0", &[OTHER]);
        let reg = Registry::start(&[&pause, &coredns], Auth::None);

        let ok = get(&reg, &manifest("pause", "3.10"), None);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(ok.header("docker-content-digest"), Some(pause.digest()));
        assert_eq!(ok.content_length(), Some(pause.manifest.bytes.len() as u64));
        assert_eq!(ok.body, pause.manifest.bytes);
        let docker = get(&reg, &manifest("coredns/coredns", "v1.12.0"), None);
        assert_eq!(docker.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(docker.body, coredns.manifest.bytes);

        let missing = [
            // Another repository's content.
            (manifest("coredns/coredns", pause.digest()), "MANIFEST_UNKNOWN"),
            (manifest("coredns/coredns", "3.10"), "MANIFEST_UNKNOWN"),
            (blob("coredns/coredns", &pause.layers[0].digest), "BLOB_UNKNOWN"),
            (blob("coredns/coredns", &pause.config.digest), "BLOB_UNKNOWN"),
            (blob("nobody/here", &pause.layers[0].digest), "BLOB_UNKNOWN"),
            // The wrong kind of route for the digest, or a tag where a digest belongs.
            (blob("pause", pause.digest()), "BLOB_UNKNOWN"),
            (manifest("pause", &pause.layers[0].digest), "MANIFEST_UNKNOWN"),
            (blob("pause", "3.10"), "BLOB_UNKNOWN"),
            (manifest("pause", "latest"), "MANIFEST_UNKNOWN"),
        ];
        for (path, code) in missing {
            let r = get(&reg, &path, None);
            assert_eq!((r.status, r.code().as_str()), (404, code), "{path}");
        }

        let r = head(&reg, &manifest("pause", pause.digest()), None);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(pause.manifest.bytes.len() as u64));
        assert_eq!(r.header("docker-content-digest"), Some(pause.digest()));
        assert!(r.body.is_empty());
        let r = head(&reg, &blob("coredns/coredns", &pause.layers[0].digest), None);
        assert_eq!((r.status, r.body.len()), (404, 0));

        let r = call(&reg, "POST", &blob("pause", &pause.layers[0].digest), &[]);
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        let ping = get(&reg, "/v2/", None);
        assert_eq!((ping.status, ping.body.as_slice()), (200, b"{}".as_slice()));
        assert_eq!(get(&reg, "/token?scope=repository:pause:pull", None).status, 404);
        assert_eq!(get(&reg, "/v2/pause/tags/list", None).status, 404);
        assert_eq!(get(&reg, "/elsewhere", None).status, 404);
    }

    #[test]
    fn blobs_honour_range_and_manifests_ignore_it() {
        let data = noise(200_000, 7);
        let image = TestImage::single("pause", "3.10", &[&[("big", &data)]]);
        let reg = Registry::start(&[&image], Auth::None);
        let layer = &image.layers[0];
        let total = layer.bytes.len() as u64;
        assert!(total > 200_000, "noise does not compress");
        let path = blob("pause", &layer.digest);

        let whole = get(&reg, &path, None);
        assert_eq!(whole.status, 200);
        assert_eq!(whole.header("accept-ranges"), Some("bytes"));
        assert!(whole.body == layer.bytes);
        assert_eq!(unpack(&whole.body), vec![("big".to_string(), data.clone())]);

        for start in [0, 1, 100_000, total - 1] {
            let r = get_from(&reg, &path, None, start);
            assert_eq!(r.status, 206, "{start}");
            let expected = format!("bytes {start}-{}/{total}", total - 1);
            assert_eq!(r.header("content-range"), Some(expected.as_str()));
            assert_eq!(r.content_length(), Some(total - start));
            assert!(r.body == layer.bytes[start as usize..], "{start}");
        }
        for start in [total, total + 10] {
            let r = get_from(&reg, &path, None, start);
            assert_eq!(r.status, 416);
            let expected = format!("bytes */{total}");
            assert_eq!(r.header("content-range"), Some(expected.as_str()));
        }
        let other_form = get_with(&reg, &path, None, &[("Range", "bytes=0-10")]);
        assert_eq!((other_form.status, other_form.body.len() as u64), (200, total));

        let r = get_from(&reg, &manifest("pause", "3.10"), None, 10);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, image.manifest.bytes);

        // The query string does not change the route.
        let mirrored = get(&reg, &format!("{path}?ns=registry.k8s.io"), None);
        assert!(mirrored.status == 200 && mirrored.body == layer.bytes);
    }

    #[test]
    fn no_token_endpoint_never_lets_a_client_in() {
        let image = TestImage::single("pause", "3.10", &[SMALL]);
        let reg = Registry::start(&[&image], Auth::NoTokenEndpoint);
        for path in [
            "/v2/".to_string(),
            manifest("pause", "3.10"),
            blob("pause", &image.layers[0].digest),
        ] {
            for token in [None, Some("anything")] {
                let r = get(&reg, &path, token);
                assert_eq!(r.status, 401, "{path}");
                assert_eq!(r.header("www-authenticate"), None);
                assert_eq!(r.code(), "UNAUTHORIZED");
            }
        }
        assert_eq!(get(&reg, "/token?scope=repository:pause:pull", None).status, 404);
    }

    #[test]
    fn status_fault_answers_its_status_the_given_times_then_normal() {
        let image = TestImage::single("pause", "3.10", &[SMALL]);
        let reg = Registry::start(&[&image], Auth::Token);
        let t = token(&reg, "pause");
        let top = manifest("pause", image.digest());
        reg.fault(image.digest(), Fault::Status { code: 429, times: 2 });

        // Refused requests do not use the fault up.
        assert_eq!(get(&reg, &top, None).status, 401);
        let r = head(&reg, &top, Some(&t));
        assert_eq!((r.status, r.header("retry-after")), (429, Some("0")));
        // By tag: the tag resolves to the faulty digest.
        let r = get(&reg, &manifest("pause", "3.10"), Some(&t));
        assert_eq!((r.status, r.header("retry-after")), (429, Some("0")));
        assert_eq!(r.code(), "TOOMANYREQUESTS");
        let r = get(&reg, &top, Some(&t));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, image.manifest.bytes);

        let layer = blob("pause", &image.layers[0].digest);
        reg.fault(&image.layers[0].digest, Fault::Status { code: 500, times: 1 });
        let r = get(&reg, &layer, Some(&t));
        assert_eq!((r.status, r.header("retry-after")), (500, None));
        assert_eq!(get(&reg, &layer, Some(&t)).body, image.layers[0].bytes);

        reg.fault(&image.config.digest, Fault::Status { code: 503, times: 1 });
        let r = get(&reg, &blob("pause", &image.config.digest), Some(&t));
        assert_eq!((r.status, r.header("retry-after")), (503, Some("0")));
        assert_eq!(get(&reg, &blob("pause", &image.config.digest), Some(&t)).status, 200);
    }

    #[test]
    fn not_found_and_wrong_bytes_faults() {
        let image = TestImage::single("pause", "3.10", &[&[("big", &noise(50_000, 3))]]);
        let reg = Registry::start(&[&image], Auth::None);
        let layer = &image.layers[0];
        let path = blob("pause", &layer.digest);

        reg.fault(image.digest(), Fault::NotFound);
        for _ in 0..2 {
            let r = get(&reg, &manifest("pause", "3.10"), None);
            assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"));
        }
        reg.fault(&layer.digest, Fault::NotFound);
        let r = get(&reg, &path, None);
        assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UNKNOWN"));

        let flipped: Vec<u8> = layer.bytes.iter().map(|b| !b).collect();
        reg.fault(&layer.digest, Fault::WrongBytes);
        let r = get(&reg, &path, None);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(layer.bytes.len() as u64));
        assert_eq!(r.header("docker-content-digest"), Some(layer.digest.as_str()));
        assert!(r.body == flipped);
        assert_ne!(digest_of(&r.body), layer.digest);
        let r = get_from(&reg, &path, None, 1000);
        assert_eq!(r.status, 206);
        assert!(r.body == flipped[1000..]);
        reg.fault(image.digest(), Fault::WrongBytes);
        let r = get(&reg, &manifest("pause", "3.10"), None);
        assert_eq!(r.body.len(), image.manifest.bytes.len());
        assert_ne!(r.body, image.manifest.bytes);

        reg.clear_fault(&layer.digest);
        assert!(get(&reg, &path, None).body == layer.bytes);
    }

    #[test]
    fn cut_short_never_completes() {
        let image = TestImage::single("pause", "3.10", &[&[("big", &noise(100_000, 5))]]);
        let reg = Registry::start(&[&image], Auth::None);
        let layer = &image.layers[0];
        let total = layer.bytes.len() as u64;
        let path = blob("pause", &layer.digest);
        reg.fault(&layer.digest, Fault::CutShort { after: 3000 });

        for r in [
            get(&reg, &path, None),
            get(&reg, &path, None),
            get_from(&reg, &path, None, 3000),
        ] {
            assert_eq!(r.status, 200);
            assert_eq!(r.content_length(), Some(total));
            assert_eq!(r.header("content-range"), None);
            assert!(r.body == layer.bytes[..3000]);
            assert_eq!(r.end, End::Eof, "a shut-down socket reads as end of file");
        }
        let r = head(&reg, &path, None);
        assert_eq!((r.status, r.content_length()), (200, Some(total)));

        // An `after` past the end still leaves the body one byte short.
        reg.fault(image.digest(), Fault::CutShort { after: 1 << 20 });
        let r = get(&reg, &manifest("pause", "3.10"), None);
        assert_eq!(r.content_length(), Some(image.manifest.bytes.len() as u64));
        assert_eq!(r.body, image.manifest.bytes[..image.manifest.bytes.len() - 1]);
        assert_eq!(reg.gets(&layer.digest), 3);
    }

    #[test]
    fn cut_short_once_then_a_resuming_client_completes() {
        let image = TestImage::single("pause", "3.10", &[&[("big", &noise(100_000, 9))]]);
        let reg = Registry::start(&[&image], Auth::Token);
        let t = token(&reg, "pause");
        let layer = &image.layers[0];
        let total = layer.bytes.len() as u64;
        let path = blob("pause", &layer.digest);
        reg.fault(&layer.digest, Fault::CutShortOnce { after: 4096 });

        // Neither a refused request nor a HEAD uses the fault up.
        assert_eq!(get(&reg, &path, None).status, 401);
        assert_eq!(head(&reg, &path, Some(&t)).content_length(), Some(total));
        // The first GET ignores its range, like `CutShort`.
        let first = get_from(&reg, &path, Some(&t), 10);
        assert_eq!((first.status, first.content_length()), (200, Some(total)));
        assert!(first.body == layer.bytes[..4096]);
        assert_eq!(first.end, End::Eof);

        let rest = get_from(&reg, &path, Some(&t), first.body.len() as u64);
        assert_eq!(rest.status, 206);
        let mut whole = first.body;
        whole.extend_from_slice(&rest.body);
        assert_eq!(digest_of(&whole), layer.digest);
        assert!(get(&reg, &path, Some(&t)).body == layer.bytes);
    }

    #[test]
    fn huge_announces_its_length_and_streams_without_end() {
        let image = TestImage::single("pause", "3.10", &[SMALL]);
        let reg = Registry::start(&[&image], Auth::None);
        let huge: u64 = 1 << 40;
        reg.fault(image.digest(), Fault::Huge { bytes: huge });

        let mut stream = connect(&reg, "GET", &manifest("pause", "3.10"), &[]);
        let (r, mut body) = read_head_only(&mut stream);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(huge));
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(image.digest()));
        let mut buf = [0u8; 4096];
        while body.len() < 16 * 1024 {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the body ended early");
            body.extend_from_slice(&buf[..n]);
        }
        assert!(body.starts_with(br#"{"padding":"aaaa"#));
        assert!(body[12..].iter().all(|&b| b == b'a'));
        // Hang up mid-stream: the handler ends quietly and the registry goes on serving.
        drop(stream);
        let r = head(&reg, &manifest("pause", "3.10"), None);
        assert_eq!((r.status, r.content_length(), r.body.len()), (200, Some(huge), 0));

        // A huge body that does fit is exactly `bytes` of valid JSON.
        reg.fault(image.digest(), Fault::Huge { bytes: 300_000 });
        let r = get(&reg, &manifest("pause", image.digest()), None);
        assert_eq!((r.body.len(), &r.end), (300_000, &End::Eof));
        let padding = r.json()["padding"].as_str().unwrap().to_string();
        assert!(padding.len() == 300_000 - 14 && padding.bytes().all(|b| b == b'a'));
        for (bytes, body) in [
            (0, ""),
            (5, r#"{"pad"#),
            (13, "{\"padding\":\"\""),
            (14, r#"{"padding":""}"#),
        ] {
            reg.fault(image.digest(), Fault::Huge { bytes });
            assert_eq!(get(&reg, &manifest("pause", "3.10"), None).body, body.as_bytes());
        }
    }

    #[test]
    fn requests_and_gets_record_every_request() {
        let image = TestImage::single("pause", "3.10", &[SMALL]);
        let reg = Registry::start(&[&image], Auth::Token);
        assert!(reg.requests().is_empty());
        let t = token(&reg, "pause");
        let bearer = format!("Bearer {t}");
        let top = manifest("pause", "3.10");
        let layer = &image.layers[0].digest;
        get_with(
            &reg,
            &format!("{top}?ns=registry.k8s.io"),
            Some(&t),
            &[("Accept", OCI_MANIFEST)],
        );
        head(&reg, &manifest("pause", image.digest()), Some(&t));
        get(&reg, &manifest("pause", image.digest()), None);
        get_from(&reg, &blob("pause", layer), Some(&t), 5);
        get(&reg, &manifest("pause", "nope"), Some(&t));

        let entry =
            |method: &str, path: &str, query: &str, auth: Option<&str>, digest: Option<&str>, status| RegRequest {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                authorization: auth.map(str::to_string),
                range: None,
                accept: None,
                digest: digest.map(str::to_string),
                status,
            };
        let scope = format!("service={SERVICE}&scope=repository:pause:pull");
        let by_digest = manifest("pause", image.digest());
        assert_eq!(
            reg.requests(),
            vec![
                entry("GET", "/token", &scope, None, None, 200),
                RegRequest {
                    accept: Some(OCI_MANIFEST.to_string()),
                    ..entry(
                        "GET",
                        &top,
                        "ns=registry.k8s.io",
                        Some(&bearer),
                        Some(image.digest()),
                        200
                    )
                },
                entry("HEAD", &by_digest, "", Some(&bearer), Some(image.digest()), 200),
                entry("GET", &by_digest, "", None, Some(image.digest()), 401),
                RegRequest {
                    range: Some("bytes=5-".to_string()),
                    ..entry("GET", &blob("pause", layer), "", Some(&bearer), Some(layer), 206)
                },
                entry("GET", &manifest("pause", "nope"), "", Some(&bearer), None, 404),
            ]
        );
        // GETs by tag and by digest, whatever their status; HEAD is not a GET.
        assert_eq!(reg.gets(image.digest()), 2);
        assert_eq!(reg.gets(layer), 1);
        assert_eq!(reg.gets(&image.config.digest), 0);
    }

    #[test]
    fn layout_names_every_blob_by_its_digest() {
        let traefik = TestImage::multi("library/traefik", "v3.1", &[SMALL, OTHER]);
        let pause = TestImage::docker_v2("pause", "3.10", &[SMALL]);
        let dir = tempfile::tempdir().unwrap();
        layout(&[&traefik, &pause], dir.path());

        assert_eq!(
            fs::read(dir.path().join("oci-layout")).unwrap(),
            br#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let mut names = Vec::new();
        for entry in fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let bytes = fs::read(entry.path()).unwrap();
            assert_eq!(digest_of(&bytes), format!("sha256:{name}"));
            names.push(format!("sha256:{name}"));
        }
        names.sort();
        let mut expected: Vec<String> = traefik
            .blobs()
            .into_iter()
            .chain(pause.blobs())
            .map(|b| b.digest.clone())
            .collect();
        expected.sort();
        expected.dedup();
        assert_eq!(names, expected);
        // The shared layer is one file.
        assert!(expected.len() < traefik.blobs().len() + pause.blobs().len());

        let index: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        for (entry, image) in manifests.iter().zip([&traefik, &pause]) {
            assert_eq!(entry["digest"], image.digest());
            assert_eq!(entry["mediaType"], image.top().media_type.as_str());
            assert_eq!(entry["size"], image.top().bytes.len());
            let name = format!("{}:{}", image.repository, image.tag);
            assert_eq!(entry["annotations"][REF_NAME], name.as_str());
        }
    }

    #[test]
    fn identical_layers_share_one_digest_and_builds_are_deterministic() {
        let a = TestImage::single("pause", "3.10", &[SMALL]);
        let b = TestImage::multi("library/traefik", "v3.1", &[OTHER, SMALL]);
        let c = TestImage::docker_v2("coredns/coredns", "v1.12.0", &[SMALL]);
        assert_eq!(a.layers[0].digest, b.layers[1].digest);
        assert_eq!(a.layers[0].digest, c.layers[0].digest);
        assert_ne!(a.layers[0].digest, b.layers[0].digest);
        assert_eq!(
            a.config.bytes, c.config.bytes,
            "Docker and OCI configs are the same document"
        );
        assert_eq!(TestImage::multi("library/traefik", "v3.1", &[OTHER, SMALL]), b);
        assert_eq!(TestImage::without_amd64("x", "1"), TestImage::without_amd64("x", "1"));
        assert_eq!(
            &a.layers[0].bytes[4..10],
            &[0, 0, 0, 0, 0, 255],
            "gzip mtime 0, OS unknown"
        );
        assert_eq!(unpack(&a.layers[0].bytes), files(SMALL));

        // A client pulling both images gets the shared layer once per repository it asks in.
        let reg = Registry::start(&[&a, &b], Auth::None);
        let shared = &a.layers[0].digest;
        assert_eq!(get(&reg, &blob("pause", shared), None).status, 200);
        assert_eq!(reg.gets(shared), 1);
        assert_eq!(get(&reg, &blob("library/traefik", shared), None).status, 200);
        assert_eq!(reg.gets(shared), 2);
    }

    #[test]
    fn image_shapes() {
        let manifest_of = |blob: &Blob| -> Value { serde_json::from_slice(&blob.bytes).unwrap() };
        let check_platform = |manifest: &Blob, config: &Blob, layers: &[Blob], arch: &str| {
            let parsed = manifest_of(manifest);
            assert_eq!(parsed["schemaVersion"], 2);
            assert_eq!(parsed["mediaType"], manifest.media_type.as_str());
            assert_eq!(parsed["config"], config.descriptor());
            let listed: Vec<Value> = layers.iter().map(Blob::descriptor).collect();
            assert_eq!(parsed["layers"], Value::Array(listed));
            let config: Value = serde_json::from_slice(&config.bytes).unwrap();
            assert_eq!(
                (config["architecture"].as_str(), config["os"].as_str()),
                (Some(arch), Some("linux"))
            );
            let diff_ids: Vec<Value> = layers
                .iter()
                .map(|layer| {
                    let mut tar = Vec::new();
                    flate2::read::GzDecoder::new(layer.bytes.as_slice())
                        .read_to_end(&mut tar)
                        .unwrap();
                    Value::String(digest_of(&tar))
                })
                .collect();
            assert_eq!(config["rootfs"]["diff_ids"], Value::Array(diff_ids));
        };
        let platforms = |index: &Blob| -> Vec<(String, Option<String>, String)> {
            manifest_of(index)["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    assert_eq!(m["platform"]["os"], "linux");
                    (
                        m["platform"]["architecture"].as_str().unwrap().to_string(),
                        m["platform"]["variant"].as_str().map(str::to_string),
                        m["digest"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };

        let single = TestImage::single("pause", "3.10", &[SMALL, OTHER]);
        assert!(single.index.is_none() && single.others.is_empty());
        assert_eq!(single.top(), &single.manifest);
        assert_eq!(single.digest(), single.manifest.digest);
        assert_eq!(single.manifest.media_type, OCI_MANIFEST);
        assert_eq!(single.config.media_type, OCI_CONFIG);
        assert!(single.layers.iter().all(|l| l.media_type == OCI_LAYER));
        check_platform(&single.manifest, &single.config, &single.layers, "amd64");
        assert_eq!(single.blobs().len(), 4);

        let multi = TestImage::multi("library/traefik", "v3.1", &[SMALL]);
        let index = multi.index.as_ref().unwrap();
        assert_eq!(multi.top(), index);
        assert_eq!(index.media_type, OCI_INDEX);
        assert_eq!(manifest_of(index)["mediaType"], OCI_INDEX);
        let listed = platforms(index);
        assert_eq!(
            listed,
            vec![
                ("amd64".to_string(), None, multi.manifest.digest.clone()),
                (
                    "arm64".to_string(),
                    Some("v8".to_string()),
                    multi.others[0].digest.clone()
                ),
            ]
        );
        check_platform(&multi.others[0], &multi.others[1], &multi.others[2..], "arm64");
        check_platform(&multi.manifest, &multi.config, &multi.layers, "amd64");
        assert_eq!(multi.blobs().len(), 1 + 3 + 3);

        let arm_only = TestImage::without_amd64("library/traefik", "arm");
        let listed = platforms(arm_only.index.as_ref().unwrap());
        assert_eq!(
            listed,
            vec![
                (
                    "arm64".to_string(),
                    Some("v8".to_string()),
                    arm_only.manifest.digest.clone()
                ),
                (
                    "arm".to_string(),
                    Some("v7".to_string()),
                    arm_only.others[0].digest.clone()
                ),
            ]
        );
        check_platform(&arm_only.manifest, &arm_only.config, &arm_only.layers, "arm64");
        check_platform(&arm_only.others[0], &arm_only.others[1], &arm_only.others[2..], "arm");

        let docker = TestImage::docker_v2("library/traefik", "v1", &[SMALL]);
        assert_eq!(docker.manifest.media_type, DOCKER_MANIFEST);
        assert_eq!(docker.config.media_type, DOCKER_CONFIG);
        assert_eq!(docker.layers[0].media_type, DOCKER_LAYER);
        check_platform(&docker.manifest, &docker.config, &docker.layers, "amd64");
    }

    #[test]
    fn parallel_clients_are_served_while_a_download_stalls() {
        let data = noise(100_000, 11);
        let image = TestImage::single("pause", "3.10", &[&[("big", &data)]]);
        let reg = Arc::new(Registry::start(&[&image], Auth::None));
        reg.fault(image.digest(), Fault::Huge { bytes: 1 << 40 });
        // Never read past the head: the server blocks writing to it.
        let mut stalled = connect(&reg, "GET", &manifest("pause", "3.10"), &[]);
        let _ = read_head_only(&mut stalled);
        let layer = image.layers[0].clone();
        let clients: Vec<_> = (0..8u64)
            .map(|i| {
                let reg = Arc::clone(&reg);
                let path = blob("pause", &layer.digest);
                thread::spawn(move || get_from(&reg, &path, None, i * 1000))
            })
            .collect();
        for (i, client) in clients.into_iter().enumerate() {
            let r = client.join().unwrap();
            assert!(r.body == layer.bytes[i * 1000..], "client {i}");
        }
        assert_eq!(reg.gets(&layer.digest), 8);
    }

    #[test]
    fn drop_returns_promptly_with_an_idle_connection_and_a_stalled_download() {
        let image = TestImage::single("pause", "3.10", &[SMALL]);
        let reg = Registry::start(&[&image], Auth::None);
        reg.fault(image.digest(), Fault::Huge { bytes: 1 << 40 });
        // Connected but never sends a request.
        let mut idle = TcpStream::connect(reg.addr).unwrap();
        idle.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        // Asks for a 1 TiB manifest and reads none of it.
        let mut stalled = connect(&reg, "GET", &manifest("pause", "3.10"), &[]);
        let _ = read_head_only(&mut stalled);
        let started = std::time::Instant::now();
        drop(reg);
        let took = started.elapsed();
        // A drop that waited for the idle client would take REQUEST_TIMEOUT (10 s) at least,
        // one that waited for the download forever; the bound leaves a loaded machine room.
        assert!(took < Duration::from_secs(10), "drop took {took:?}");
        let mut nothing = Vec::new();
        assert_eq!(read_all(&mut idle, &mut nothing), End::Eof);
        assert!(nothing.is_empty());
    }

    #[test]
    fn query_values_decode_percent_escapes_and_plus() {
        assert_eq!(
            query_values(
                "scope=repository%3Alibrary%2Ftraefik%3Apull&x=1&scope=a+b&scope",
                "scope"
            ),
            vec!["repository:library/traefik:pull", "a b", ""]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}

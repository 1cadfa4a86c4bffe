//! Getting one pinned file into the cache: from the cache itself, a mirror directory, or
//! over HTTP(S) with retries, resumption and verification. Nothing reaches the cache
//! before its digest matched the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};

use super::cache::{Cache, Entry};
use super::digest::{self, Algorithm, Digest, Hasher};
use super::lock::Artifact;

/// Where files come from instead of their upstream hosts: a URL or a directory laid out
/// as `<mirror>/<upstream host>/<upstream path>` (what `wget -x` produces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Url(String),
    Dir(PathBuf),
}

impl Mirror {
    pub fn parse(s: &str) -> Mirror {
        if s.starts_with("http://") || s.starts_with("https://") {
            Mirror::Url(s.trim_end_matches('/').to_string())
        } else {
            Mirror::Dir(PathBuf::from(s))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait for a connection, for response headers, or between two reads.
    pub timeout: Duration,
    /// Attempts per file after the first.
    pub retries: u32,
    /// First pause between attempts; doubled each time, at most [`MAX_BACKOFF`].
    pub retry_delay: Duration,
    pub mirror: Option<Mirror>,
    /// A registry that mirrors every upstream registry (containerd-style, `?ns=<registry>`).
    pub registry_mirror: Option<String>,
    pub offline: bool,
    pub allow_unpinned: bool,
}

pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 4,
            retry_delay: Duration::from_secs(1),
            mirror: None,
            registry_mirror: None,
            offline: false,
            allow_unpinned: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the server answered {status}; expected the file {name}")]
    Http {
        name: String,
        url: String,
        status: StatusCode,
    },
    #[error(
        "{url}: digest mismatch for {name}: the lock expects {expected}, the download is {actual}; \
         the file was discarded (a changed upstream file or a bad mirror; never used)"
    )]
    Mismatch {
        name: String,
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url}: {name} is larger than the {expected} bytes the lock records; the download was discarded")]
    TooLarge { name: String, url: String, expected: u64 },
    #[error("{url}: gave up on {name} after {attempts} attempts; last error: {last}")]
    GaveUp {
        name: String,
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{name} is not in the cache and --offline forbids downloading it ({url})")]
    Offline { name: String, url: String },
    #[error(
        "{name} is not pinned: {why}\n  pass --allow-unpinned to download {url} anyway; \
         its digest will be recorded and shown, not verified"
    )]
    Unpinned { name: String, url: String, why: String },
    #[error("the mirror has no {name}: {path} does not exist")]
    MirrorMissing { name: String, path: PathBuf },
}

impl FetchError {
    fn offline(artifact: &Artifact) -> Self {
        FetchError::Offline {
            name: artifact.name.clone(),
            url: artifact.url.clone(),
        }
    }
}

/// How a file got into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Downloaded { bytes: u64, resumed_from: u64 },
    Copied { bytes: u64 },
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub digest: Digest,
    pub outcome: Outcome,
    /// True when the digest was observed, not checked against a pin.
    pub unpinned: bool,
}

pub struct Fetcher<'a> {
    cache: &'a Cache,
    pub(crate) client: Client,
    options: Options,
}

/// One failed attempt: worth retrying or not.
pub(crate) enum Attempt {
    Retry(String),
    Fatal(anyhow::Error),
}

/// What one transfer is about, for limits and messages.
pub(crate) struct Target<'t> {
    pub name: &'t str,
    /// At most this many bytes are accepted, when known.
    pub size: Option<u64>,
}

/// Sends one request for the bytes from `offset` on; the caller decides URL and headers.
pub(crate) type Send<'s> = &'s dyn Fn(u64) -> Result<reqwest::blocking::Response, Attempt>;

/// Where content comes from.
pub(crate) enum Source<'s> {
    File(PathBuf),
    Http { url: String, send: Send<'s> },
}

impl<'a> Fetcher<'a> {
    pub fn new(cache: &'a Cache, options: Options) -> Result<Self> {
        let client = http_client(options.timeout)?;
        Ok(Fetcher { cache, client, options })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn cache(&self) -> &Cache {
        self.cache
    }

    /// Makes sure the content with digest `expected` is in the cache, taking it from
    /// `source` if not; a mismatch, a cut body or too many bytes never reach the cache.
    pub(crate) fn fetch_content(
        &self,
        target: &Target<'_>,
        expected: &Digest,
        source: &Source<'_>,
        bar: &ProgressBar,
    ) -> Result<Fetched> {
        if let Some(f) = self.cached(expected)? {
            return Ok(f);
        }
        let _lock = self.cache.lock(expected)?;
        if let Some(f) = self.cached(expected)? {
            return Ok(f);
        }
        let partial = self.cache.partial_path(expected);
        if self.options.offline {
            return Err(FetchError::Offline {
                name: target.name.to_string(),
                url: match source {
                    Source::File(path) => path.display().to_string(),
                    Source::Http { url, .. } => url.clone(),
                },
            }
            .into());
        }
        let outcome = self.fill_from(target, source, &partial, expected.algorithm, bar, Some(expected))?;
        let path = self.cache.commit(&partial, expected)?;
        Ok(Fetched {
            path,
            digest: expected.clone(),
            outcome,
            unpinned: false,
        })
    }

    /// Makes sure `artifact` is in the cache, verified; `bar` shows the bytes.
    pub fn fetch(&self, artifact: &Artifact, bar: &ProgressBar) -> Result<Fetched> {
        let Some(expected) = &artifact.digest else {
            return self.fetch_unpinned(artifact, bar);
        };
        if let Some(f) = self.cached(expected)? {
            return Ok(f);
        }
        let _lock = self.cache.lock(expected)?;
        // Another process may have finished it while this one waited for the lock.
        if let Some(f) = self.cached(expected)? {
            return Ok(f);
        }
        if self.options.offline {
            return Err(FetchError::offline(artifact).into());
        }
        let partial = self.cache.partial_path(expected);
        let outcome = self.fill(artifact, &partial, expected.algorithm, bar, Some(expected))?;
        let path = self.cache.commit(&partial, expected)?;
        Ok(Fetched {
            path,
            digest: expected.clone(),
            outcome,
            unpinned: false,
        })
    }

    pub(crate) fn cached(&self, d: &Digest) -> Result<Option<Fetched>> {
        match self.cache.check(d)? {
            Entry::Verified { path, .. } => Ok(Some(Fetched {
                path,
                digest: d.clone(),
                outcome: Outcome::Cached,
                unpinned: false,
            })),
            Entry::Corrupt { .. } => {
                self.cache.evict(d)?;
                Ok(None)
            }
            Entry::Missing => Ok(None),
        }
    }

    fn fetch_unpinned(&self, artifact: &Artifact, bar: &ProgressBar) -> Result<Fetched> {
        // Bytes the user accepted once (trust on first use, like SSH host keys) are used
        // again without asking; only a new download needs the opt-in.
        if let Some(d) = self.cache.observed(&artifact.url)
            && let Some(mut f) = self.cached(&d)?
        {
            f.unpinned = true;
            return Ok(f);
        }
        let why = artifact.unpinned.clone().unwrap_or_default();
        if !self.options.allow_unpinned {
            return Err(FetchError::Unpinned {
                name: artifact.name.clone(),
                url: artifact.url.clone(),
                why,
            }
            .into());
        }
        if self.options.offline {
            return Err(FetchError::offline(artifact).into());
        }
        let staging = tempfile::Builder::new()
            .prefix("unpinned-")
            .tempfile_in(self.cache.root().join("partial"))
            .context("creating a temporary download file")?;
        let outcome = self.fill(artifact, staging.path(), Algorithm::Sha256, bar, None)?;
        let (observed, _) = digest::of_reader(Algorithm::Sha256, File::open(staging.path())?)?;
        let partial = self.cache.partial_path(&observed);
        staging.persist(&partial).context("keeping the download")?;
        let path = self.cache.commit(&partial, &observed)?;
        self.cache.record_observed(&artifact.url, &observed)?;
        Ok(Fetched {
            path,
            digest: observed,
            outcome,
            unpinned: true,
        })
    }

    /// Fills `partial` with the artifact's bytes and checks them against `expected`.
    fn fill(
        &self,
        artifact: &Artifact,
        partial: &Path,
        alg: Algorithm,
        bar: &ProgressBar,
        expected: Option<&Digest>,
    ) -> Result<Outcome> {
        let target = Target {
            name: &artifact.name,
            size: artifact.size,
        };
        let client = &self.client;
        let source = match locate(&artifact.url, self.options.mirror.as_ref()) {
            Location::File(path) => Source::File(path),
            Location::Url(url) => {
                let send_url = url.clone();
                let send = move |offset: u64| plain_get(client, &send_url, offset);
                return self.fill_from(&target, &Source::Http { url, send: &send }, partial, alg, bar, expected);
            }
        };
        self.fill_from(&target, &source, partial, alg, bar, expected)
    }

    fn fill_from(
        &self,
        target: &Target<'_>,
        source: &Source<'_>,
        partial: &Path,
        alg: Algorithm,
        bar: &ProgressBar,
        expected: Option<&Digest>,
    ) -> Result<Outcome> {
        let (outcome, actual, url) = match source {
            Source::File(path) => {
                let (d, bytes) = self.copy_from_mirror(target, path, partial, alg, bar)?;
                (Outcome::Copied { bytes }, d, path.display().to_string())
            }
            Source::Http { url, send } => {
                let (d, bytes, resumed_from) = self.download(target, url, *send, partial, alg, bar)?;
                (Outcome::Downloaded { bytes, resumed_from }, d, url.clone())
            }
        };
        if let Some(expected) = expected
            && &actual != expected
        {
            let _ = fs::remove_file(partial);
            return Err(FetchError::Mismatch {
                name: target.name.to_string(),
                url,
                expected: expected.clone(),
                actual,
            }
            .into());
        }
        Ok(outcome)
    }

    fn copy_from_mirror(
        &self,
        artifact: &Target<'_>,
        source: &Path,
        partial: &Path,
        alg: Algorithm,
        bar: &ProgressBar,
    ) -> Result<(Digest, u64)> {
        let input = match File::open(source) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FetchError::MirrorMissing {
                    name: artifact.name.to_string(),
                    path: source.to_path_buf(),
                }
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", source.display())),
        };
        bar.set_length(input.metadata()?.len());
        let mut out = File::create(partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut hasher = Hasher::new(alg);
        let bytes = copy_hashing(
            &mut bar.wrap_read(input),
            &mut out,
            &mut hasher,
            artifact.size.map(|s| (s, artifact.name, source.display().to_string())),
        )
        .map_err(|e| match e {
            CopyError::Read(e) | CopyError::Write(e) => {
                anyhow::Error::new(e).context(format!("copying {}", source.display()))
            }
            CopyError::TooLarge(e) => e.into(),
        })?;
        Ok((hasher.finish(), bytes))
    }

    /// Downloads `url` into `partial`, resuming what an earlier attempt (or run) left.
    fn download(
        &self,
        artifact: &Target<'_>,
        url: &str,
        send: Send<'_>,
        partial: &Path,
        alg: Algorithm,
        bar: &ProgressBar,
    ) -> Result<(Digest, u64, u64)> {
        self.retrying(artifact.name, url, bar, || {
            self.attempt(artifact, url, send, partial, alg, bar)
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent, pausing
    /// with capped exponential backoff between attempts.
    pub(crate) fn retrying<T>(
        &self,
        name: &str,
        url: &str,
        bar: &ProgressBar,
        mut attempt: impl FnMut() -> Result<T, Attempt>,
    ) -> Result<T> {
        let attempts = self.options.retries + 1;
        let mut last = String::new();
        for n in 1..=attempts {
            if n > 1 {
                let pause = self
                    .options
                    .retry_delay
                    .saturating_mul(1 << (n - 2).min(16))
                    .min(MAX_BACKOFF);
                bar.set_message(format!("retrying in {:.1}s: {last}", pause.as_secs_f64()));
                std::thread::sleep(pause);
                bar.set_message(String::new());
            }
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            }
        }
        Err(FetchError::GaveUp {
            name: name.to_string(),
            url: url.to_string(),
            attempts,
            last,
        }
        .into())
    }

    /// One request; returns the digest, the total size and the offset it resumed from.
    fn attempt(
        &self,
        artifact: &Target<'_>,
        url: &str,
        send: Send<'_>,
        partial: &Path,
        alg: Algorithm,
        bar: &ProgressBar,
    ) -> Result<(Digest, u64, u64), Attempt> {
        let fatal = |e: anyhow::Error| Attempt::Fatal(e);
        let mut offset = fs::metadata(partial).map_or(0, |m| m.len());
        let response = send(offset)?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 && range_start(&response) == Some(offset) => {}
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => offset = 0,
            // The partial file is no use to this server (changed, or already whole): start over.
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let _ = fs::remove_file(partial);
                return Err(Attempt::Retry(
                    "the server refused to resume; starting over".to_string(),
                ));
            }
            s if s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                return Err(Attempt::Retry(format!("the server answered {s}")));
            }
            s => {
                return Err(fatal(
                    FetchError::Http {
                        name: artifact.name.to_string(),
                        url: url.to_string(),
                        status: s,
                    }
                    .into(),
                ));
            }
        }
        let remaining = response.content_length();
        let mut hasher = Hasher::new(alg);
        let mut out = if offset > 0 {
            // The hash must cover what earlier attempts wrote.
            let mut existing = File::open(partial).map_err(|e| fatal(e.into()))?;
            let mut buf = vec![0u8; digest::BUFFER];
            loop {
                let n = existing.read(&mut buf).map_err(|e| fatal(e.into()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            OpenOptions::new().append(true).open(partial)
        } else {
            File::create(partial)
        }
        .map_err(|e| fatal(anyhow::Error::new(e).context(format!("writing {}", partial.display()))))?;
        bar.set_length(remaining.map_or(artifact.size.unwrap_or(0), |r| r + offset));
        bar.set_position(offset);
        let limit = artifact
            .size
            .map(|s| (s.saturating_sub(offset), artifact.name, url.to_string()));
        let received = match copy_hashing(&mut bar.wrap_read(response), &mut out, &mut hasher, limit) {
            Ok(n) => n,
            Err(CopyError::Read(e)) => return Err(Attempt::Retry(format!("the connection failed mid-file: {e}"))),
            Err(CopyError::Write(e)) => {
                return Err(fatal(
                    anyhow::Error::new(e).context(format!("writing {}", partial.display())),
                ));
            }
            Err(CopyError::TooLarge(e)) => {
                let _ = fs::remove_file(partial);
                return Err(fatal(e.into()));
            }
        };
        if let Some(expected) = remaining
            && received < expected
        {
            return Err(Attempt::Retry(format!(
                "the body ended after {received} of {expected} bytes"
            )));
        }
        out.flush().map_err(|e| fatal(e.into()))?;
        Ok((hasher.finish(), offset + received, offset))
    }
}

/// A GET of `url` from byte `offset` on (a `Range` request when resuming).
fn plain_get(client: &Client, url: &str, offset: u64) -> Result<reqwest::blocking::Response, Attempt> {
    let mut request = client.get(url);
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    request.send().map_err(|e| Attempt::Retry(describe(&e)))
}

/// The HTTP client every download uses; `timeout` bounds connecting, waiting for the
/// response and (in the blocking client) every single read, not the whole body.
pub fn http_client(timeout: Duration) -> Result<Client> {
    Client::builder()
        .user_agent(concat!("kubestick/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .context("setting up the HTTP client")
}

/// The URL or mirror path `url` is read from.
pub fn locate(url: &str, mirror: Option<&Mirror>) -> Location {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match mirror {
        None => Location::Url(url.to_string()),
        Some(Mirror::Url(base)) => Location::Url(format!("{base}/{rest}")),
        Some(Mirror::Dir(dir)) => Location::File(dir.join(rest)),
    }
}

/// Where a file is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Url(String),
    File(PathBuf),
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge(FetchError),
}

/// Copies while hashing; stops with `TooLarge` once more than `limit.0` bytes arrive, so a
/// wrong or hostile source cannot fill the disk.
fn copy_hashing(
    input: &mut impl Read,
    out: &mut File,
    hasher: &mut Hasher,
    limit: Option<(u64, &str, String)>,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; digest::BUFFER];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if let Some((max, name, url)) = &limit
            && total > *max
        {
            return Err(CopyError::TooLarge(FetchError::TooLarge {
                name: name.to_string(),
                url: url.clone(),
                expected: *max,
            }));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

fn range_start(response: &reqwest::blocking::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

/// reqwest's own messages hide the cause (timeout, refused) in the source chain.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The bar style for one file.
pub fn file_bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>20} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

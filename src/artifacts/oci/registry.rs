//! The distribution API, the parts a puller needs: manifests and blobs by digest (and a
//! tag resolved to its digest), with the anonymous bearer-token flow registry.k8s.io,
//! docker.io, quay.io and ghcr.io use. Redirects are followed here, not by reqwest, so
//! that every host a request lands on (a CDN, a regional registry) is asked for its own
//! token when it challenges, and no token is sent to a host it was not issued by.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE};

use super::reference::ImageRef;
use crate::artifacts::download::{Attempt, describe};

/// The largest manifest or index accepted. containerd refuses more than 4 MiB too; real
/// ones are a few KiB.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// How many redirects one request may follow.
const MAX_HOPS: usize = 10;

/// The manifest media types a puller accepts, in the `Accept` header.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{url}: the registry answered 401 Unauthorized without a bearer-token challenge \
         (no WWW-Authenticate: Bearer realm=...), so no anonymous token can be asked for; \
         use a mirror that serves {image} (--registry-mirror URL, or --mirror DIR in OCI layout)"
    )]
    NoTokenService { url: String, image: String },
    #[error("{url}: the registry refused the token it issued for {image} (401 twice)")]
    TokenRefused { url: String, image: String },
    #[error("{url}: the token service answered {status} for {image}")]
    TokenDenied {
        url: String,
        image: String,
        status: StatusCode,
    },
    #[error("{url}: the token service sent no token: {why}")]
    BadToken { url: String, why: String },
    #[error("{url}: more than {MAX_HOPS} redirects")]
    TooManyRedirects { url: String },
    #[error(
        "{url}: the manifest of {image} is larger than {MAX_MANIFEST} bytes (no real one is); \
         refused without reading it"
    )]
    ManifestTooLarge { url: String, image: String },
}

/// Talks to registries on behalf of one run; tokens are kept per host and repository.
pub struct Registry {
    client: Client,
    /// `scheme://host[:port]` of a registry mirroring every upstream one.
    mirror: Option<String>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Registry {
    /// `client` must not follow redirects (see [`no_redirect_client`]).
    pub fn new(client: Client, mirror: Option<String>) -> Registry {
        Registry {
            client,
            mirror: mirror.map(|m| m.trim_end_matches('/').to_string()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn url(&self, image: &ImageRef, kind: &str, reference: &str) -> String {
        match &self.mirror {
            Some(base) => format!(
                "{base}/v2/{}/{kind}/{reference}?ns={}",
                image.repository, image.registry
            ),
            None => format!(
                "{}://{}/v2/{}/{kind}/{reference}",
                image.scheme(),
                image.api_host(),
                image.repository
            ),
        }
    }

    pub fn manifest_url(&self, image: &ImageRef, reference: &str) -> String {
        self.url(image, "manifests", reference)
    }

    pub fn blob_url(&self, image: &ImageRef, digest: &str) -> String {
        self.url(image, "blobs", digest)
    }

    /// GET `url` from byte `offset` on, answering token challenges and following
    /// redirects. Statuses other than 401 and redirects are the caller's to judge.
    pub(crate) fn get(
        &self,
        image: &ImageRef,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<Response, Attempt> {
        let mut url = url.to_string();
        let mut fresh_token_for: Option<String> = None;
        for _ in 0..MAX_HOPS {
            let host = host_of(&url);
            let key = (host.clone(), image.repository.clone());
            let mut request = self.client.get(&url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if offset > 0 {
                request = request.header(RANGE, format!("bytes={offset}-"));
            }
            if let Some(token) = self.tokens.lock().expect("token map").get(&key) {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = request.send().map_err(|e| Attempt::Retry(describe(&e)))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(LOCATION).and_then(|l| l.to_str().ok())
            {
                url = response
                    .url()
                    .join(location)
                    .map_err(|e| Attempt::Fatal(anyhow::anyhow!("{url}: bad redirect to `{location}`: {e}")))?
                    .to_string();
                continue;
            }
            if status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if fresh_token_for.as_deref() == Some(host.as_str()) {
                return Err(Attempt::Fatal(
                    RegistryError::TokenRefused {
                        url,
                        image: image.to_string(),
                    }
                    .into(),
                ));
            }
            let challenge = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(bearer_challenge);
            let Some(challenge) = challenge else {
                return Err(Attempt::Fatal(
                    RegistryError::NoTokenService {
                        url,
                        image: image.to_string(),
                    }
                    .into(),
                ));
            };
            let token = self.token(image, &challenge)?;
            self.tokens.lock().expect("token map").insert(key, token);
            fresh_token_for = Some(host);
        }
        Err(Attempt::Fatal(RegistryError::TooManyRedirects { url }.into()))
    }

    /// Asks the token service named in a challenge for an anonymous pull token.
    fn token(&self, image: &ImageRef, challenge: &Challenge) -> Result<String, Attempt> {
        let scope = challenge
            .scope
            .clone()
            .unwrap_or_else(|| format!("repository:{}:pull", image.repository));
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = &challenge.service {
            query.push(("service", service));
        }
        let response = self
            .client
            .get(&challenge.realm)
            .query(&query)
            .send()
            .map_err(|e| Attempt::Retry(format!("asking {} for a token: {}", challenge.realm, describe(&e))))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Attempt::Retry(format!("the token service answered {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(
                RegistryError::TokenDenied {
                    url: challenge.realm.clone(),
                    image: image.to_string(),
                    status,
                }
                .into(),
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_limited(response, 1 << 20)
            .map_err(|e| Attempt::Retry(format!("reading the token: {e}")))?
            .ok_or_else(|| {
                Attempt::Fatal(
                    RegistryError::BadToken {
                        url: challenge.realm.clone(),
                        why: "the answer is larger than 1 MiB".into(),
                    }
                    .into(),
                )
            })?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Attempt::Fatal(
                RegistryError::BadToken {
                    url: challenge.realm.clone(),
                    why: e.to_string(),
                }
                .into(),
            )
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Attempt::Fatal(
                    RegistryError::BadToken {
                        url: challenge.realm.clone(),
                        why: "neither `token` nor `access_token` is set".into(),
                    }
                    .into(),
                )
            })
    }
}

/// A client for registry requests: redirects are followed by [`Registry::get`].
pub fn no_redirect_client(timeout: std::time::Duration) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    Client::builder()
        .user_agent(concat!("kubestick/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("setting up the HTTP client")
}

/// Reads at most `limit` bytes; `None` when the body is longer (the rest is not read).
pub fn read_limited(response: Response, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut body = Vec::new();
    response.take(limit + 1).read_to_end(&mut body)?;
    Ok((body.len() as u64 <= limit).then_some(body))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// The Bearer challenge in a `WWW-Authenticate` value, if it has one with a realm.
fn bearer_challenge(value: &str) -> Option<Challenge> {
    let challenges = http_auth::parse_challenges(value).ok()?;
    let bearer = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?;
    let param = |name: &str| {
        bearer
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    Some(Challenge {
        realm: param("realm").filter(|r| r.starts_with("http://") || r.starts_with("https://"))?,
        service: param("service"),
        scope: param("scope"),
    })
}

fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_as_registries_send_them() {
        let hub = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/traefik:pull""#,
        )
        .unwrap();
        assert_eq!(hub.realm, "https://auth.docker.io/token");
        assert_eq!(hub.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(hub.scope.as_deref(), Some("repository:library/traefik:pull"));
        let bare = bearer_challenge(r#"Bearer realm="https://ghcr.io/token""#).unwrap();
        assert_eq!((bare.service, bare.scope), (None, None));
        assert!(bearer_challenge(r#"Basic realm="registry""#).is_none());
        assert!(bearer_challenge(r#"Bearer service="x""#).is_none());
        assert!(bearer_challenge(r#"Bearer realm="/relative""#).is_none());
    }
}

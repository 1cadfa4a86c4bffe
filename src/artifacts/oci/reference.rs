//! Image references as the lock writes them: `registry/repository:tag`, always with the
//! registry, so a reference never depends on a client's default registry.

use std::fmt;

use oci_spec::distribution::Reference;

use crate::artifacts::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// As written (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Normalised: Docker Hub's official images get `library/`.
    pub repository: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        if s.contains('@') {
            return Err("the reference must not carry a digest; give it in `digest`".into());
        }
        let (first, rest) = s.split_once('/').ok_or("the reference names no registry")?;
        if !(first.contains('.') || first.contains(':') || first == "localhost") {
            return Err(format!(
                "`{first}` is not a registry host; the reference must start with one"
            ));
        }
        if !rest.rsplit('/').next().unwrap_or("").contains(':') {
            return Err("the reference has no tag".into());
        }
        let parsed: Reference = s
            .parse()
            .map_err(|e: oci_spec::distribution::ParseError| e.to_string())?;
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().ok_or("the reference has no tag")?.to_string(),
        })
    }

    /// The host serving the registry API (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// Registries on this machine speak plain HTTP, as Docker and containerd assume.
    pub fn scheme(&self) -> &'static str {
        let host = self.registry.split(':').next().unwrap_or("");
        if host == "localhost" || host.starts_with("127.") {
            "http"
        } else {
            "https"
        }
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest`: the name a pod asking for the digest resolves.
    pub fn by_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name(), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_references_only() {
        let r = ImageRef::parse("registry.k8s.io/coredns/coredns:v1.14.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("registry.k8s.io", "coredns/coredns", "v1.14.2")
        );
        assert_eq!(r.api_host(), "registry.k8s.io");
        assert_eq!(r.scheme(), "https");
        let hub = ImageRef::parse("docker.io/traefik:v3.7.14").unwrap();
        assert_eq!(hub.repository, "library/traefik");
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        assert_eq!(hub.to_string(), "docker.io/library/traefik:v3.7.14");
        let local = ImageRef::parse("127.0.0.1:5000/pause:1").unwrap();
        assert_eq!((local.registry.as_str(), local.scheme()), ("127.0.0.1:5000", "http"));
        for bad in [
            "traefik:v3",
            "library/traefik:v3",
            "docker.io/traefik",
            "registry.k8s.io/pause:3.10@sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4",
            "registry.k8s.io/Pause:3",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}

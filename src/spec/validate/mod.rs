//! RawCluster → Cluster. Every rule is checked and every failure recorded in the report;
//! nothing stops at the first problem. A `None` result means the report has errors.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;

use ipnet::Ipv4Net;

mod admin;
mod names;
mod network;
mod nodes;

use super::Releases;
use super::model::*;
use super::raw::*;
use crate::diag::{Diagnostic, Report};

pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";

pub fn validate(raw: &RawCluster, releases: &Releases, report: &mut Report) -> Option<Cluster> {
    let mut v = Validator {
        report,
        addresses: HashMap::new(),
    };
    let cluster = v.cluster(raw, releases);
    if v.report.has_errors() { None } else { cluster }
}

struct Validator<'r> {
    report: &'r mut Report,
    /// Every address claimed so far, to report reuse (`path`, span of first use).
    addresses: HashMap<Ipv4Addr, (String, Option<Range<usize>>)>,
}

fn span<T>(s: &S<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Validator<'_> {
    fn error(&mut self, path: &str, span: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.report.push(Diagnostic::error(path, span, msg).help(help));
    }

    fn warn(&mut self, path: &str, span: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.report.push(Diagnostic::warning(path, span, msg).help(help));
    }

    fn required<'a, T>(
        &mut self,
        value: &'a Option<S<T>>,
        path: &str,
        parent: Option<Range<usize>>,
        example: &str,
    ) -> Option<&'a S<T>> {
        if value.is_none() {
            let key = path.rsplit('.').next().unwrap_or(path);
            self.error(
                path,
                parent,
                format!("missing required field `{key}`"),
                format!("add `{example}`"),
            );
        }
        value.as_ref()
    }

    fn cluster(&mut self, raw: &RawCluster, releases: &Releases) -> Option<Cluster> {
        let section = self.section(
            &raw.cluster,
            "cluster",
            "[cluster]\nname = \"homelab\"\nkubernetes_version = \"...\"",
        );
        let network = self.section(&raw.network, "network", "[network]\nsubnet = \"192.168.1.0/24\"\n...");
        let admin = self.section(
            &raw.admin,
            "admin",
            "[admin]\nuser = \"kube\"\nssh_authorized_keys = [\"ssh-ed25519 ...\"]",
        );

        let name = section.and_then(|s| self.cluster_name(s));
        let version = section.and_then(|s| self.version(s, releases));
        let dns_domain = section.and_then(|s| match &s.get_ref().dns_domain {
            None => Some(DEFAULT_DNS_DOMAIN.to_string()),
            Some(d) => self.dns_name(d, "cluster.dns_domain"),
        });
        let timezone = section
            .and_then(|s| s.get_ref().timezone.as_ref())
            .and_then(|tz| self.timezone(tz));
        let nodes = self.nodes(raw);
        let network = network.and_then(|n| self.network(n, &nodes));
        let admin = admin.and_then(|a| self.admin(a));
        let cni = self.cni(&raw.cni);
        let ingress = self.ingress(&raw.ingress, network.as_ref());
        let storage = self.storage(&raw.storage, &nodes);
        self.control_plane_count(&nodes, raw);

        let nodes: Vec<Node> = nodes.into_iter().map(|(_, n)| n).collect::<Option<Vec<_>>>()?;
        Some(Cluster {
            name: name?,
            kubernetes_version: version?,
            dns_domain: dns_domain?,
            timezone,
            network: network?,
            admin: admin?,
            cni: cni?,
            ingress: ingress?,
            storage: storage?,
            nodes,
        })
    }

    fn section<'a, T>(&mut self, value: &'a Option<S<T>>, name: &str, example: &str) -> Option<&'a S<T>> {
        if value.is_none() {
            self.error(
                name,
                None,
                format!("missing required section [{name}]"),
                format!("add\n{example}"),
            );
        }
        value.as_ref()
    }

    fn choice<T: Copy>(&mut self, value: &S<String>, path: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == value.get_ref()) {
            return Some(*t);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let help = match did_you_mean(value.get_ref(), &names) {
            Some(s) => format!("did you mean \"{s}\"? (one of: {})", names.join(", ")),
            None => format!("use one of: {}", names.join(", ")),
        };
        self.error(
            path,
            span(value),
            format!("`{}` is not a valid value", value.get_ref()),
            help,
        );
        None
    }

    fn wipe(&mut self, value: &S<String>, path: &str) -> Option<WipePolicy> {
        self.choice(
            value,
            path,
            &[("never", WipePolicy::Never), ("if-not-osd", WipePolicy::IfNotOsd)],
        )
    }

    fn cni(&mut self, cni: &Option<S<RawCni>>) -> Option<Cni> {
        let Some(c) = cni else {
            return Some(Cni {
                plugin: "flannel",
                backend: "vxlan",
            });
        };
        let plugin = match &c.get_ref().plugin {
            None => Some("flannel"),
            Some(p) => self.choice(p, "cni.plugin", &[("flannel", "flannel")]),
        };
        let backend = match &c.get_ref().backend {
            None => Some("vxlan"),
            Some(b) => self.choice(b, "cni.backend", &[("vxlan", "vxlan")]),
        };
        Some(Cni {
            plugin: plugin?,
            backend: backend?,
        })
    }

    fn ingress(&mut self, ingress: &Option<S<RawIngress>>, network: Option<&Network>) -> Option<Option<Ingress>> {
        let Some(i) = ingress else {
            if network.is_some_and(|n| n.ingress_vip.is_some()) {
                self.warn(
                    "network.ingress_vip",
                    None,
                    "ingress_vip is set but there is no [ingress] section, so nothing answers on it",
                    "add [ingress] with acme_email, or remove ingress_vip",
                );
            }
            return Some(None);
        };
        let raw = i.get_ref();
        let controller = match &raw.controller {
            None => Some("traefik"),
            Some(c) => self.choice(c, "ingress.controller", &[("traefik", "traefik")]),
        };
        let email = self
            .required(
                &raw.acme_email,
                "ingress.acme_email",
                span(i),
                "acme_email = \"you@example.net\"",
            )
            .and_then(|e| {
                let s = e.get_ref().trim();
                let valid = s.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !s.chars().any(char::is_whitespace)
                });
                if !valid {
                    self.error(
                        "ingress.acme_email",
                        span(e),
                        format!("`{s}` is not an e-mail address"),
                        "Let's Encrypt sends expiry notices here; use a real address such as \"you@yourdomain.net\"",
                    );
                    return None;
                }
                let domain = s.rsplit('@').next().unwrap_or_default().to_ascii_lowercase();
                if ["example.com", "example.org", "example.net"].contains(&domain.as_str()) {
                    self.warn(
                        "ingress.acme_email",
                        span(e),
                        format!("Let's Encrypt refuses addresses at {domain}"),
                        "use an address you read; certificates will not be issued otherwise",
                    );
                }
                Some(s.to_string())
            });
        let server = match &raw.acme_server {
            None => Some(AcmeServer::Production),
            Some(s) => self.choice(
                s,
                "ingress.acme_server",
                &[("production", AcmeServer::Production), ("staging", AcmeServer::Staging)],
            ),
        };
        if network.is_some_and(|n| n.ingress_vip.is_none()) {
            self.error("network.ingress_vip", span(i), "[ingress] needs an address that survives the loss of a node", "add `ingress_vip = \"192.168.1.11\"` to [network]: a free LAN address your router forwards ports 80 and 443 to");
        }
        Some(Some(Ingress {
            controller: controller?,
            acme_email: email?,
            acme_server: server?,
        }))
    }

    fn storage(
        &mut self,
        storage: &Option<S<RawStorage>>,
        nodes: &[(Option<Range<usize>>, Option<Node>)],
    ) -> Option<Option<Storage>> {
        let with_disk = nodes
            .iter()
            .filter(|(_, n)| n.as_ref().is_some_and(|n| n.disk.is_some()))
            .count();
        let Some(s) = storage else {
            if with_disk > 0 {
                self.error(
                    "storage",
                    None,
                    "nodes name disks but there is no [storage] section",
                    "add [storage] with provider = \"rook-ceph\" and replicas = 3, or remove the disks",
                );
                return None;
            }
            return Some(None);
        };
        let raw = s.get_ref();
        let provider = match &raw.provider {
            None => Some("rook-ceph"),
            Some(p) => self.choice(p, "storage.provider", &[("rook-ceph", "rook-ceph")]),
        };
        let replicas = match &raw.replicas {
            None => Some(3),
            Some(r) if !(1..=7).contains(r.get_ref()) => {
                self.error(
                    "storage.replicas",
                    span(r),
                    format!("{} replicas is not supported", r.get_ref()),
                    "use 3 (the usual choice), or 1 for a single-disk lab",
                );
                None
            }
            Some(r) => Some(*r.get_ref() as u32),
        };
        let any_invalid = nodes.iter().any(|(_, n)| n.is_none());
        if let Some(r) = replicas.filter(|_| !any_invalid) {
            let at = raw.replicas.as_ref().map_or(span(s), span);
            if with_disk == 0 {
                self.error(
                    "storage",
                    span(s),
                    "[storage] is set but no node has a `disk`",
                    "add `disk = \"/dev/disk/by-id/...\"` to the nodes whose disk ceph may use",
                );
            } else if (r as usize) > with_disk {
                self.error("storage.replicas", at, format!("{r} replicas need {r} nodes with a disk (ceph puts each copy on a different host), but only {with_disk} have one"), format!("add disks to more nodes, or set replicas = {with_disk}"));
            } else if r < 3 && with_disk >= 3 {
                self.warn(
                    "storage.replicas",
                    at,
                    format!("with {r} replica(s), losing a disk can lose data"),
                    "use replicas = 3 when three nodes have disks",
                );
            }
        }
        Some(Some(Storage {
            provider: provider?,
            replicas: replicas?,
        }))
    }
}

/// The closest candidate, if any is close enough to be a likely typo: a few edits away
/// (swapped letters count as one), or sharing most of a long prefix.
pub fn did_you_mean<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    candidates
        .iter()
        .filter_map(|c| {
            let edits = strsim::damerau_levenshtein(&given, c);
            let close = edits <= (c.len() / 3).max(1) || strsim::jaro_winkler(&given, c) >= 0.9;
            close.then_some((edits, *c))
        })
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos_only() {
        assert_eq!(
            did_you_mean("controlplane", &["control-plane", "worker"]),
            Some("control-plane")
        );
        assert_eq!(
            did_you_mean("api_vipp", &["api_vip", "ingress_vip", "subnet"]),
            Some("api_vip")
        );
        assert_eq!(did_you_mean("zzz", &["control-plane", "worker"]), None);
        assert_eq!(did_you_mean("mca", &["name", "role", "ip", "mac"]), Some("mac"));
        assert_eq!(
            did_you_mean("kubernetes_versoin", &["name", "kubernetes_version"]),
            Some("kubernetes_version")
        );
    }
}

//! Names: the cluster name, node hostnames, DNS names, the Kubernetes version, time zone.

use super::*;
use crate::release::{self, Release, Step};

impl Validator<'_> {
    pub(super) fn cluster_name(&mut self, s: &S<RawClusterSection>) -> Option<String> {
        let name = self.required(&s.get_ref().name, "cluster.name", span(s), "name = \"homelab\"")?;
        self.dns_label(name, "cluster.name")
    }

    pub(super) fn version(&mut self, s: &S<RawClusterSection>, releases: &Releases) -> Option<String> {
        let known = &releases.pinned;
        let raw = self.required(
            &s.get_ref().kubernetes_version,
            "cluster.kubernetes_version",
            span(s),
            "kubernetes_version = \"1.36.4\"",
        )?;
        let version = raw.get_ref().trim().trim_start_matches('v');
        if known.iter().any(|k| k == version) {
            return self.upgrade_step(version, releases, span(raw));
        }
        let list = known.join(", ");
        self.error(
            "cluster.kubernetes_version",
            span(raw),
            format!("Kubernetes version `{}` is not pinned in artifacts.lock", raw.get_ref()),
            format!("use one of: {list} (`kubestick lock` shows what each pins)"),
        );
        None
    }

    /// A release the cluster can move to from the newest one its sticks were built with:
    /// Kubernetes upgrades one minor release at a time and never goes back.
    fn upgrade_step(&mut self, version: &str, releases: &Releases, at: Option<Range<usize>>) -> Option<String> {
        let Some((newest, record)) = &releases.built else {
            return Some(version.to_string());
        };
        let Ok(new) = version.parse::<Release>() else {
            return Some(version.to_string());
        };
        let step = release::step(*newest, new);
        if step.supported() {
            return Some(version.to_string());
        }
        let record = record.display();
        let help = match &step {
            Step::Downgrade => format!(
                "keep kubernetes_version = \"{newest}\" or choose a newer release; if no node ever booted a \
                 {newest} stick, remove its entry from {record}"
            ),
            Step::Skips(between) => {
                let first = &between[0];
                let via = releases
                    .pinned
                    .iter()
                    .filter_map(|p| p.parse::<Release>().ok())
                    .filter(|p| p.minor_line() == *first)
                    .max()
                    .map_or_else(
                        || format!("a {first} release (this kubestick's lock pins none: `kubestick lock` lists what it pins)"),
                        |p| format!("kubernetes_version = \"{p}\""),
                    );
                format!("build sticks with {via} first and re-flash every node with them, then move on to {new}")
            }
            _ => format!(
                "stay on {}: kubeadm cannot move a cluster across major releases",
                newest.major
            ),
        };
        self.error(
            "cluster.kubernetes_version",
            at,
            format!(
                "{} (this cluster's sticks were built with {newest} before, says {record})",
                step.describe(*newest, new)
            ),
            help,
        );
        None
    }

    pub(super) fn timezone(&mut self, tz: &S<String>) -> Option<String> {
        let ok = !tz.get_ref().is_empty()
            && !tz.get_ref().starts_with('/')
            && !tz.get_ref().contains("..")
            && tz
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if ok {
            Some(tz.get_ref().clone())
        } else {
            self.error(
                "cluster.timezone",
                span(tz),
                format!("`{}` is not a time zone name", tz.get_ref()),
                "use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
            );
            None
        }
    }

    /// RFC 1123 label, as Kubernetes requires for node names.
    pub(super) fn dns_label(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref();
        let problem = if s.is_empty() {
            Some("is empty".to_string())
        } else if s.len() > 63 {
            Some(format!("is {} characters long; at most 63 are allowed", s.len()))
        } else if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            Some(format!(
                "contains `{c}`; only lowercase letters, digits and `-` are allowed"
            ))
        } else if s.starts_with('-') || s.ends_with('-') {
            Some("starts or ends with `-`".to_string())
        } else {
            None
        };
        match problem {
            None => Some(s.clone()),
            Some(p) => {
                let suggestion: String = s
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect::<String>()
                    .trim_matches('-')
                    .chars()
                    .take(63)
                    .collect();
                let help = if suggestion.is_empty() {
                    "use lowercase letters, digits and `-`, e.g. \"node1\"".to_string()
                } else {
                    format!("use a hostname-style name such as \"{suggestion}\"")
                };
                self.error(path, span(value), format!("`{s}` is not a valid name: it {p}"), help);
                None
            }
        }
    }

    pub(super) fn dns_name(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Some(s.clone())
        } else {
            self.error(
                path,
                span(value),
                format!("`{s}` is not a valid DNS name"),
                "use lowercase labels separated by dots, e.g. \"home.arpa\"",
            );
            None
        }
    }
}

//! Kubernetes releases (`1.36.4`) and what moving a cluster from one to another means under
//! Kubernetes' version skew policy: one minor release at a time, never back. Shared by the
//! spec (refusing a cluster.toml), the secrets stage (the record of releases built) and
//! `diff` (naming the change between two sticks).

use std::fmt;
use std::str::FromStr;

/// A Kubernetes release, `major.minor.patch` (a leading `v` is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Kubernetes release of the form 1.36.4")]
pub struct NotARelease(pub String);

impl FromStr for Release {
    type Err = NotARelease;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NotARelease(s.to_string());
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let mut next = || -> Result<u32, NotARelease> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let release = Release {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        match parts.next() {
            None => Ok(release),
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Release {
    /// `1.36`, the minor release this belongs to.
    pub fn minor_line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// What moving a cluster from one release to another is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Same,
    /// A newer patch release of the same minor release.
    Patch,
    /// The next minor release: what kubeadm upgrades to.
    Minor,
    /// Older than the cluster: Kubernetes does not support downgrades.
    Downgrade,
    /// More than one minor release ahead: the minor releases in between (`1.35`) come first.
    Skips(Vec<String>),
    /// Another major release.
    Major,
}

pub fn step(from: Release, to: Release) -> Step {
    use std::cmp::Ordering::*;
    if from.major != to.major {
        return Step::Major;
    }
    match (to.minor.cmp(&from.minor), to.patch.cmp(&from.patch)) {
        (Less, _) | (Equal, Less) => Step::Downgrade,
        (Equal, Equal) => Step::Same,
        (Equal, Greater) => Step::Patch,
        (Greater, _) if to.minor == from.minor + 1 => Step::Minor,
        (Greater, _) => Step::Skips(
            (from.minor + 1..to.minor)
                .map(|m| format!("{}.{m}", from.major))
                .collect(),
        ),
    }
}

impl Step {
    /// One line for a person about to flash the new sticks.
    pub fn describe(&self, from: Release, to: Release) -> String {
        match self {
            Step::Same => format!("Kubernetes {to}, as before"),
            Step::Patch => format!(
                "Kubernetes {from} → {to}, a patch release: re-flash the nodes one at a time, control-plane \
                 nodes first, each Ready before the next"
            ),
            Step::Minor => format!(
                "Kubernetes {from} → {to}, a minor upgrade: re-flash the control-plane nodes one at a time, \
                 each Ready before the next, then the workers (a worker stick waits until the control plane \
                 runs {})",
                to.minor_line()
            ),
            Step::Downgrade => format!("Kubernetes {from} → {to} is a downgrade, which Kubernetes does not support"),
            Step::Skips(between) => format!(
                "Kubernetes {from} → {to} skips {}: Kubernetes upgrades one minor release at a time",
                between.join(" and ")
            ),
            Step::Major => format!("Kubernetes {from} → {to} changes the major release"),
        }
    }

    /// Whether Kubernetes supports moving a running cluster this way.
    pub fn supported(&self) -> bool {
        matches!(self, Step::Same | Step::Patch | Step::Minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Release {
        s.parse().unwrap()
    }

    #[test]
    fn parses_releases_and_refuses_anything_else() {
        assert_eq!(
            r("v1.36.4"),
            Release {
                major: 1,
                minor: 36,
                patch: 4
            }
        );
        assert_eq!(r("1.35.8").to_string(), "1.35.8");
        for bad in ["1.36", "1.36.4.1", "1.36.x", "", "1..4", "1.36.4-rc.0", "+1.36.4"] {
            assert!(bad.parse::<Release>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn orders_numerically_not_as_text() {
        assert!(r("1.35.10") > r("1.35.9"));
        assert!(r("1.100.0") > r("1.36.4"));
    }

    #[test]
    fn steps_follow_the_skew_policy() {
        assert_eq!(step(r("1.36.4"), r("1.36.4")), Step::Same);
        assert_eq!(step(r("1.36.4"), r("1.36.5")), Step::Patch);
        assert_eq!(step(r("1.35.8"), r("1.36.4")), Step::Minor);
        assert_eq!(step(r("1.35.8"), r("1.36.0")), Step::Minor);
        assert_eq!(step(r("1.36.4"), r("1.35.8")), Step::Downgrade);
        assert_eq!(step(r("1.36.4"), r("1.36.3")), Step::Downgrade);
        assert_eq!(step(r("1.34.2"), r("1.36.4")), Step::Skips(vec!["1.35".into()]));
        assert_eq!(
            step(r("1.33.0"), r("1.36.4")),
            Step::Skips(vec!["1.34".into(), "1.35".into()])
        );
        assert_eq!(step(r("1.36.4"), r("2.0.0")), Step::Major);
        assert!(Step::Minor.supported() && Step::Patch.supported() && Step::Same.supported());
        assert!(!Step::Downgrade.supported() && !Step::Skips(vec![]).supported() && !Step::Major.supported());
    }

    #[test]
    fn descriptions_name_both_releases_and_what_is_skipped() {
        let (a, b) = (r("1.34.2"), r("1.36.4"));
        let d = step(a, b).describe(a, b);
        assert!(d.contains("1.34.2 → 1.36.4") && d.contains("skips 1.35"), "{d}");
        let (a, b) = (r("1.35.8"), r("1.36.4"));
        let d = step(a, b).describe(a, b);
        assert!(d.contains("minor upgrade") && d.contains("then the workers"), "{d}");
    }
}

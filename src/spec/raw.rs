//! cluster.toml exactly as written: every value keeps its source span, and values with a
//! syntax of their own (addresses, CIDRs, MACs, versions) stay strings here so that
//! `validate` can report every bad one at once instead of serde stopping at the first.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
pub struct RawCluster {
    pub cluster: Option<S<RawClusterSection>>,
    pub network: Option<S<RawNetwork>>,
    pub admin: Option<S<RawAdmin>>,
    pub cni: Option<S<RawCni>>,
    pub ingress: Option<S<RawIngress>>,
    pub storage: Option<S<RawStorage>>,
    #[serde(default)]
    pub nodes: Vec<S<RawNode>>,
}

#[derive(Debug, Deserialize)]
pub struct RawClusterSection {
    pub name: Option<S<String>>,
    pub kubernetes_version: Option<S<String>>,
    pub dns_domain: Option<S<String>>,
    pub timezone: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawNetwork {
    pub subnet: Option<S<String>>,
    pub gateway: Option<S<String>>,
    pub dns: Option<S<Vec<S<String>>>>,
    pub search_domains: Option<S<Vec<S<String>>>>,
    pub ntp: Option<S<Vec<S<String>>>>,
    pub api_vip: Option<S<String>>,
    pub ingress_vip: Option<S<String>>,
    pub pod_cidr: Option<S<String>>,
    pub service_cidr: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawAdmin {
    pub user: Option<S<String>>,
    pub ssh_authorized_keys: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
pub struct RawCni {
    pub plugin: Option<S<String>>,
    pub backend: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawIngress {
    pub controller: Option<S<String>>,
    pub acme_email: Option<S<String>>,
    pub acme_server: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawStorage {
    pub provider: Option<S<String>>,
    pub replicas: Option<S<i64>>,
    pub wipe: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawNode {
    pub name: Option<S<String>>,
    pub role: Option<S<String>>,
    pub ip: Option<S<String>>,
    pub mac: Option<S<String>>,
    pub disk: Option<S<String>>,
    pub wipe: Option<S<String>>,
}

/// The keys serde accepts for the table at `path` (as serde_ignored spells paths, e.g.
/// `nodes.1`), for "did you mean" suggestions. Taken from the derived impls themselves so
/// they can never drift from the structs above.
pub fn expected_keys(path: &[String]) -> &'static [&'static str] {
    match path.first().map(String::as_str) {
        None => fields_of::<RawCluster>(),
        Some("cluster") => fields_of::<RawClusterSection>(),
        Some("network") => fields_of::<RawNetwork>(),
        Some("admin") => fields_of::<RawAdmin>(),
        Some("cni") => fields_of::<RawCni>(),
        Some("ingress") => fields_of::<RawIngress>(),
        Some("storage") => fields_of::<RawStorage>(),
        Some("nodes") => fields_of::<RawNode>(),
        Some(_) => &[],
    }
}

/// Asks a derived `Deserialize` impl which field names it knows, by handing it a
/// deserializer that records the `fields` argument of `deserialize_struct` and stops.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Recorder<'a>(&'a mut &'static [&'static str]);

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field list recorded")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_keys_come_from_the_structs() {
        assert!(expected_keys(&[]).contains(&"nodes"));
        assert!(expected_keys(&["nodes".into(), "0".into()]).contains(&"mac"));
        assert!(expected_keys(&["network".into()]).contains(&"api_vip"));
        assert!(expected_keys(&["nonsense".into()]).is_empty());
    }

    /// The README's cluster.toml reference lists exactly the keys serde accepts.
    #[test]
    fn readme_reference_matches_the_structs() {
        let readme = include_str!("../../README.md");
        let documented: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(key, _)| key))
            .collect();
        let mut accepted = Vec::new();
        for section in expected_keys(&[]) {
            for key in expected_keys(&[section.to_string()]) {
                accepted.push(format!("{section}.{key}"));
            }
        }
        assert_eq!(documented, accepted, "update the cluster.toml reference in README.md");
    }
}

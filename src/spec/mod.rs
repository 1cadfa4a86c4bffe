//! Stage 1: cluster.toml → validated [`Cluster`]. TOML syntax errors, unknown keys, type
//! errors and rule violations all end up in one [`Report`] with line:column.

mod model;
mod plan;
mod raw;
mod validate;

pub use model::*;
pub use plan::plan;
pub use validate::did_you_mean;

use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, InvalidFile, Report};
use crate::release::Release;
use raw::RawCluster;

/// What `cluster.kubernetes_version` is held against.
#[derive(Debug, Clone, Default)]
pub struct Releases {
    /// The releases the lock pins.
    pub pinned: Vec<String>,
    /// The newest release this cluster's sticks were built with, and the file that says so.
    pub built: Option<(Release, std::path::PathBuf)>,
}

impl Releases {
    /// Only the lock's releases: for a cluster with no sticks built yet.
    pub fn pinned(pinned: Vec<String>) -> Self {
        Releases { pinned, built: None }
    }
}

/// A valid cluster and the warnings found on the way.
pub struct Loaded {
    pub cluster: Cluster,
    pub report: Report,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read cluster file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidFile),
}

pub fn load(path: &Path, releases: &Releases) -> Result<Loaded, LoadError> {
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &source, releases)
}

pub fn parse(path: &Path, source: &str, releases: &Releases) -> Result<Loaded, LoadError> {
    let mut report = Report::new(path, source);
    let (table, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            report.push(
                Diagnostic::error("(toml)", e.span(), format!("TOML syntax error: {}", first_line(e.message())))
                    .help("fix the syntax at the marked place; strings need double quotes, tables are written [name] and lists of tables [[nodes]]"),
            );
        }
        return Err(InvalidFile(report).into());
    }

    let mut unknown: Vec<Vec<String>> = Vec::new();
    let de = toml::de::Deserializer::from(table.clone());
    let raw: Result<RawCluster, _> = serde_ignored::deserialize(de, |p| unknown.push(segments(&p)));
    for path in &unknown {
        report_unknown(&mut report, table.get_ref(), path);
    }
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            report.push(
                Diagnostic::error("(toml)", e.span(), first_line(e.message()).to_string()).help(type_help(e.message())),
            );
            return Err(InvalidFile(report).into());
        }
    };
    let cluster = validate::validate(&raw, releases, &mut report);
    match cluster {
        Some(cluster) if !report.has_errors() => Ok(Loaded { cluster, report }),
        _ => Err(InvalidFile(report).into()),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn type_help(message: &str) -> String {
    if message.contains("invalid type") {
        "check the value's type: text goes in double quotes, lists in [ ], numbers bare".to_string()
    } else {
        "compare with `kubestick init`, which prints a complete, commented cluster file".to_string()
    }
}

/// serde_ignored's path as plain segments, without the wrappers `Spanned` adds.
fn segments(path: &serde_ignored::Path) -> Vec<String> {
    use serde_ignored::Path as P;
    let mut out = Vec::new();
    let mut cur = path;
    loop {
        match cur {
            P::Root => break,
            P::Seq { parent, index } => {
                out.push(index.to_string());
                cur = parent;
            }
            P::Map { parent, key } => {
                if !key.starts_with("$__serde_spanned") {
                    out.push(key.clone());
                }
                cur = parent;
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => cur = parent,
        }
    }
    out.reverse();
    out
}

fn report_unknown(report: &mut Report, root: &DeTable<'_>, path: &[String]) {
    let (parent, key) = path.split_at(path.len().saturating_sub(1));
    let Some(key) = key.first() else { return };
    let shown = display_path(path);
    let span = key_span(root, parent, key);
    let expected = raw::expected_keys(parent);
    let help = match did_you_mean(key, expected) {
        Some(s) => format!("did you mean `{s}`?"),
        None if expected.is_empty() => "remove it".to_string(),
        None => format!("remove it; the keys allowed here are: {}", expected.join(", ")),
    };
    report.push(Diagnostic::error(shown, span, format!("unknown field `{key}`")).help(help));
}

/// `nodes.1.ip` → `nodes[1].ip`.
fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            s.push_str(&format!("[{seg}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(seg);
        }
    }
    s
}

fn key_span(root: &DeTable<'_>, parent: &[String], key: &str) -> Option<std::ops::Range<usize>> {
    let mut table = root;
    let mut iter = parent.iter().peekable();
    while let Some(seg) = iter.next() {
        let value = table.iter().find(|(k, _)| k.get_ref() == seg).map(|(_, v)| v)?;
        let value = match value.get_ref() {
            DeValue::Array(items) => {
                let idx: usize = iter.next()?.parse().ok()?;
                items.get(idx)?
            }
            _ => value,
        };
        table = value.get_ref().as_table()?;
    }
    table.iter().find(|(k, _)| k.get_ref() == key).map(|(k, _)| k.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions() -> Releases {
        Releases::pinned(vec!["1.36.4".to_string()])
    }

    #[test]
    fn unknown_key_gets_line_and_suggestion() {
        let src = "[cluster]\nname = \"x\"\nkubernetes_versoin = \"1.36.4\"\n";
        let Err(LoadError::Invalid(InvalidFile(report))) = parse(Path::new("c.toml"), src, &versions()) else {
            panic!("expected invalid")
        };
        let d = report
            .diagnostics
            .iter()
            .find(|d| d.message.contains("unknown field"))
            .expect("unknown field reported");
        assert_eq!(d.path, "cluster.kubernetes_versoin");
        assert_eq!(report.line_col(d.span.clone().unwrap().start), (3, 1));
        assert_eq!(d.help.as_deref(), Some("did you mean `kubernetes_version`?"));
    }

    #[test]
    fn unknown_key_in_array_of_tables() {
        let src = "[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"b\"\nipaddr = \"1.2.3.4\"\n";
        let Err(LoadError::Invalid(InvalidFile(report))) = parse(Path::new("c.toml"), src, &versions()) else {
            panic!("expected invalid")
        };
        let d = report
            .diagnostics
            .iter()
            .find(|d| d.message.contains("unknown field"))
            .unwrap();
        assert_eq!(d.path, "nodes[1].ipaddr");
        assert_eq!(report.line_col(d.span.clone().unwrap().start), (5, 1));
    }
}

//! `kubestick diff OLD NEW`: what changed between two builds, from their bills of
//! materials — read from `out/<node>.cdx.json` or from inside a node image (so a stick's
//! image can be compared before it is flashed). Packages, artifacts, container images and
//! rendered files are compared by name; what the build itself recorded (kubestick's
//! version, the lock, the base's apt sources, the node) too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::bom::Category;
use crate::error::BadInput;
use crate::release::{self, Release};

/// One difference, as a table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub change: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub old: String,
    pub new: String,
}

/// A kubestick BOM from a `.cdx.json` file or a node image.
pub fn load(path: &Path) -> Result<Value> {
    let mut head = [0u8; 512];
    let n = std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read(&mut head)?;
    let is_json = head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let bytes = if is_json {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        let offset = crate::image::gpt_table::root_offset(path).map_err(|e| {
            BadInput(format!(
                "{} is neither a bill of materials (.cdx.json) nor a kubestick image: {e:#}",
                path.display()
            ))
        })?;
        crate::image::read_root_file(path, offset, crate::rootfs::compose::BOM_PATH).map_err(|e| {
            BadInput(format!(
                "{}: {e:#}\n  images built before kubestick carried a bill of materials cannot be compared; \
                 compare their out/<node>.cdx.json instead",
                path.display()
            ))
        })?
    };
    let bom: Value =
        serde_json::from_slice(&bytes).map_err(|e| BadInput(format!("{} is not JSON: {e}", path.display())))?;
    if bom["bomFormat"] != "CycloneDX" {
        return Err(BadInput(format!(
            "{} is not a CycloneDX bill of materials (no \"bomFormat\": \"CycloneDX\")",
            path.display()
        ))
        .into());
    }
    Ok(bom)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Every comparable item of a BOM: (kind, name) → what identifies its content.
fn items(bom: &Value) -> BTreeMap<(&'static str, String), String> {
    let mut out = BTreeMap::new();
    let meta = &bom["metadata"];
    let prop = |name: &str| -> Vec<String> {
        meta["properties"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == name)
            .filter_map(|p| p["value"].as_str().map(String::from))
            .collect()
    };
    let tools: Vec<String> = meta["tools"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == "kubestick")
        .filter_map(|t| t["version"].as_str().map(String::from))
        .collect();
    let mut build = |name: &str, values: Vec<String>| {
        if !values.is_empty() {
            out.insert(("build", name.to_string()), values.join(", "));
        }
    };
    build("kubestick", tools);
    build("node", prop("kubestick:node"));
    build("role", prop("kubestick:role"));
    build("kubernetes", prop("kubestick:kubernetes"));
    build(
        "lock",
        prop("kubestick:lock-sha256")
            .iter()
            .map(|h| format!("sha256:{}", short(h)))
            .collect(),
    );
    build("debian sources", prop("kubestick:base-source"));

    for c in bom["components"].as_array().into_iter().flatten() {
        let Some(category) = c["bom-ref"].as_str().and_then(Category::of_ref) else {
            continue;
        };
        let name = c["name"].as_str().unwrap_or_default();
        let version = c["version"].as_str().unwrap_or_default();
        let hash = c["hashes"][0]["content"].as_str().map(short);
        let (name, what) = match category {
            Category::Package => {
                let arch = c["bom-ref"].as_str().and_then(|r| r.rsplit(':').next()).unwrap_or("");
                (format!("{name}:{arch}"), version.to_string())
            }
            Category::Artifact | Category::Image => (
                // An image of another release than the stick's (bom-ref `image:<name>@<release>`)
                // is a row of its own beside the stick's own one of the same repository.
                match c["bom-ref"].as_str().and_then(|r| r.split_once('@')) {
                    Some((_, release)) if category == Category::Image => format!("{name} (from {release})"),
                    _ => name.to_string(),
                },
                match hash {
                    Some(h) => format!("{version} ({h})"),
                    None => version.to_string(),
                },
            ),
            Category::File => (name.to_string(), format!("sha256:{}", hash.unwrap_or("?"))),
        };
        out.insert((category.as_str(), name), what);
    }
    out
}

/// The differences from `old` to `new`, in table order (kind, then name).
pub fn compare(old: &Value, new: &Value) -> Vec<Change> {
    let (old, new) = (items(old), items(new));
    let mut keys: Vec<&(&'static str, String)> = old.keys().chain(new.keys()).collect();
    let order = |k: &str| {
        ["build", "package", "artifact", "image", "file"]
            .iter()
            .position(|x| *x == k)
    };
    keys.sort_by(|a, b| (order(a.0), &a.1).cmp(&(order(b.0), &b.1)));
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (o, n) = (old.get(key), new.get(key));
            let change = match (o, n) {
                (Some(o), Some(n)) if o == n => return None,
                (Some(_), Some(_)) => "changed",
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (None, None) => return None,
            };
            Some(Change {
                change,
                kind: key.0,
                name: key.1.clone(),
                old: o.cloned().unwrap_or_else(|| "-".into()),
                new: n.cloned().unwrap_or_else(|| "-".into()),
            })
        })
        .collect()
}

/// The Kubernetes release change between the two builds in words (what it means for the
/// order of flashing, or that a cluster on the old release refuses the new stick), if any.
pub fn release_change(changes: &[Change]) -> Option<String> {
    let c = changes.iter().find(|c| c.kind == "build" && c.name == "kubernetes")?;
    let (from, to): (Release, Release) = (c.old.parse().ok()?, c.new.parse().ok()?);
    let step = release::step(from, to);
    Some(if step.supported() {
        format!("{}.", step.describe(from, to))
    } else {
        format!(
            "{}: kubestick build refuses it for a cluster built with {from}, and a node flashed with it \
             does not join a cluster running {from}.",
            step.describe(from, to)
        )
    })
}

/// The changes as an aligned table with a header.
pub fn table(changes: &[Change]) -> String {
    let header = Change {
        change: "CHANGE",
        kind: "KIND",
        name: "NAME".into(),
        old: "OLD".into(),
        new: "NEW".into(),
    };
    let rows: Vec<&Change> = std::iter::once(&header).chain(changes).collect();
    let width = |f: fn(&Change) -> usize| rows.iter().map(|r| f(r)).max().unwrap_or(0);
    let (w0, w1, w2, w3) = (
        width(|r| r.change.len()),
        width(|r| r.kind.len()),
        width(|r| r.name.chars().count()),
        width(|r| r.old.chars().count()),
    );
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r.change, r.kind, r.name, r.old, r.new
        );
    }
    out
}

/// Prints what changed from `old` to `new`; true when anything did.
pub fn run(old: &Path, new: &Path) -> Result<bool> {
    let (a, b) = (load(old)?, load(new)?);
    let changes = compare(&a, &b);
    if changes.is_empty() {
        let n = b["components"].as_array().map_or(0, Vec::len);
        println!(
            "{} and {} are the same: {n} packages, artifacts, images and files, built alike.",
            old.display(),
            new.display()
        );
        return Ok(false);
    }
    print!("{}", table(&changes));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &changes {
        *counts.entry(c.kind).or_default() += 1;
    }
    println!(
        "{} change{} from {} to {}: {}",
        changes.len(),
        if changes.len() == 1 { "" } else { "s" },
        old.display(),
        new.display(),
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(line) = release_change(&changes) {
        println!("{line}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bom(krb: &str, file_hash: &str, extra_image: bool) -> Value {
        let mut components = vec![
            json!({"type": "library", "bom-ref": "package:libkrb5-3:amd64", "name": "libkrb5-3", "version": krb}),
            json!({"type": "file", "bom-ref": "file:/etc/kubestick/node.env", "name": "/etc/kubestick/node.env",
                   "hashes": [{"alg": "SHA-256", "content": file_hash}]}),
        ];
        if extra_image {
            components.push(
                json!({"type": "container", "bom-ref": "image:pause", "name": "registry.k8s.io/pause",
                                   "version": "3.10", "hashes": [{"alg": "SHA-256", "content": "abcdef0123456789"}]}),
            );
        }
        json!({
            "bomFormat": "CycloneDX",
            "metadata": {
                "tools": {"components": [{"name": "kubestick", "version": "0.1.0"}]},
                "properties": [{"name": "kubestick:node", "value": "n1"}],
            },
            "components": components,
        })
    }

    #[test]
    fn identical_boms_have_no_changes() {
        let a = bom("1.21.3-5+deb13u1", "aaaa", false);
        assert!(compare(&a, &a.clone()).is_empty());
    }

    #[test]
    fn changes_are_named_by_kind_and_name() {
        let a = bom("1.21.3-5+deb13u1", "aaaaaaaaaaaaaaaa", false);
        let b = bom("1.21.3-5+deb13u2", "bbbbbbbbbbbbbbbb", true);
        let changes = compare(&a, &b);
        let rows: Vec<(&str, &str, &str, &str, &str)> = changes
            .iter()
            .map(|c| (c.change, c.kind, c.name.as_str(), c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "changed",
                    "package",
                    "libkrb5-3:amd64",
                    "1.21.3-5+deb13u1",
                    "1.21.3-5+deb13u2"
                ),
                ("added", "image", "registry.k8s.io/pause", "-", "3.10 (abcdef012345)"),
                (
                    "changed",
                    "file",
                    "/etc/kubestick/node.env",
                    "sha256:aaaaaaaaaaaa",
                    "sha256:bbbbbbbbbbbb"
                ),
            ]
        );
        let t = table(&changes);
        assert!(t.starts_with("CHANGE   KIND     NAME"), "{t}");
        assert_eq!(t.lines().count(), 4);
        assert_eq!(release_change(&changes), None);
    }

    #[test]
    fn a_release_change_is_put_in_words() {
        let with_release = |r: &str| {
            let mut b = bom("1", "aaaa", false);
            b["metadata"]["properties"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "kubestick:kubernetes", "value": r}));
            b
        };
        let upgrade = compare(&with_release("1.35.8"), &with_release("1.36.4"));
        assert!(
            upgrade
                .iter()
                .any(|c| c.kind == "build" && c.name == "kubernetes" && c.new == "1.36.4")
        );
        let line = release_change(&upgrade).unwrap();
        assert!(
            line.starts_with("Kubernetes 1.35.8 → 1.36.4, a minor upgrade"),
            "{line}"
        );
        let line = release_change(&compare(&with_release("1.36.4"), &with_release("1.35.8"))).unwrap();
        assert!(
            line.contains("downgrade") && line.contains("does not join a cluster running 1.36.4"),
            "{line}"
        );
        let line = release_change(&compare(&with_release("1.34.2"), &with_release("1.36.4"))).unwrap();
        assert!(line.contains("skips 1.35"), "{line}");
    }
}

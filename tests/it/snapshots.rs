//! Snapshots of what the examples render to with the fixed secrets in tests/fixtures: a
//! template change shows up as a reviewable diff (`cargo insta review`).

use std::fs;

use crate::common::*;

fn snapshot_tree(example: &str, nodes: &[&str]) {
    let (_s, out) = render_example(example);
    let mut roots: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    roots.push("common".to_string());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for root in &roots {
            for rel in files_below(&out.join(root)) {
                let rel = std::path::Path::new(root).join(rel);
                let text = fs::read_to_string(out.join(&rel)).unwrap();
                let name = format!("{example}__{}", rel.to_string_lossy().replace('/', "__"));
                insta::assert_snapshot!(name, text);
            }
        }
        insta::assert_snapshot!(
            format!("{example}__admin.conf"),
            fs::read_to_string(out.join("admin.conf")).unwrap()
        );
    });
}

#[test]
fn homelab_renders_as_snapshotted() {
    // The init node and one joining control-plane node cover every template branch of
    // the reference cluster.
    snapshot_tree("homelab", &["optiplex-1", "optiplex-2"]);
}

#[test]
fn five_nodes_render_as_snapshotted() {
    snapshot_tree("five-nodes", &["cp-1", "worker-1", "worker-2"]);
}

//! Compiles overlays/ into the binary (src/rootfs/overlays.rs includes the generated
//! list), so an installed kubestick carries the files every image gets. Git keeps only the
//! executable bit, so that decides between 0755 and 0644.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays");
    println!("cargo:rerun-if-changed=overlays");
    let mut entries = Vec::new();
    walk(&root, &root, &mut entries);
    entries.sort();
    let mut out = String::from("pub const OVERLAYS: &[(&str, Overlay)] = &[\n");
    for (rel, line) in entries {
        let _ = writeln!(out, "    ({rel:?}, {line}),");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("overlays.rs");
    std::fs::write(dest, out).unwrap();
}

fn walk(root: &Path, dir: &Path, entries: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            entries.push((rel, format!("Overlay::Symlink({:?})", target.to_string_lossy())));
        } else if meta.is_dir() {
            walk(root, &path, entries);
        } else {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                "0o755"
            } else {
                "0o644"
            };
            entries.push((
                rel,
                format!(
                    "Overlay::File {{ mode: {mode}, data: include_bytes!({:?}) }}",
                    path.display().to_string()
                ),
            ));
        }
    }
}

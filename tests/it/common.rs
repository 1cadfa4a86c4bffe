use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A digest as artifacts.lock writes it: `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kubestick() -> Command {
    let mut cmd = Command::cargo_bin("kubestick").unwrap();
    cmd.env("NO_COLOR", "1");
    // Never the developer's own cache: `render` names unpinned images by the digests it
    // records, which would make rendered files depend on the machine.
    cmd.env("XDG_CACHE_HOME", "/nonexistent/kubestick-tests");
    cmd
}

/// A scratch directory holding a copy of an example cluster file and, if asked, a copy of
/// its fixed secrets (with the modes git cannot keep).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, contents).unwrap();
        p
    }

    /// Copies `examples/<name>.toml` and `tests/fixtures/<name>.secrets/` in.
    pub fn example_with_secrets(&self, name: &str) -> PathBuf {
        let toml = self.write(&format!("{name}.toml"), &example(name));
        copy_tree(
            &repo().join(format!("tests/fixtures/{name}.secrets")),
            &self.path(&format!("{name}.secrets")),
        );
        toml
    }
}

pub fn example(name: &str) -> String {
    fs::read_to_string(repo().join(format!("examples/{name}.toml"))).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

/// `kubestick render CLUSTER -o OUT`, run to completion.
pub fn render(cluster: &Path, out: &Path) -> assert_cmd::assert::Assert {
    kubestick().arg("render").arg(cluster).arg("-o").arg(out).assert()
}

/// Renders `examples/<name>.toml` with its fixed secrets; returns the scratch dir and out/.
pub fn render_example(name: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new();
    let toml = s.example_with_secrets(name);
    let out = s.path("out");
    render(&toml, &out).success();
    (s, out)
}

/// Every regular file below `root`, relative, sorted.
pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs a tool; panics when it is missing.
pub fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; `make test-deps` installs the validators"))
}

pub fn assert_tool_ok(program: &str, args: &[&str]) {
    let out = run_tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

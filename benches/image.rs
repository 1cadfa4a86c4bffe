//! `make bench`: what a node image costs once the base is cached, against
//! `cp --sparse=always` of the base in the same run (target: at most 1.2x); the cold base
//! build (mmdebstrap, fresh cache); the image size raw, allocated, and after `zstd -19`
//! (target: at most 300 MiB with the Kubernetes binaries).
//!
//! Upstream binaries cannot be downloaded on the development machines, so the images carry
//! the test doubles from qemu-tests/; the real kubeadm, kubelet, kubectl, containerd, runc,
//! crictl and CNI plugins add their own compressed size on top (printed as an estimate).

#[path = "support.rs"]
mod support;
use support::median;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn build(work: &Path, cache: &Path) -> Duration {
    let kubestick = repo().join("target/release/kubestick");
    let start = Instant::now();
    run(Command::new(&kubestick)
        .arg("build")
        .arg(work.join("cluster.toml"))
        .arg("-o")
        .arg(work.join("out"))
        .arg("--lock")
        .arg(work.join("doubles/artifacts.lock"))
        .arg("--mirror")
        .arg(work.join("doubles/mirror"))
        .arg("--cache")
        .arg(cache)
        .stdout(std::process::Stdio::null()));
    start.elapsed()
}

fn main() {
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet"])
        .current_dir(repo()));
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    run(Command::new("python3")
        .arg(repo().join("qemu-tests/make-mirror.py"))
        .arg(repo())
        .arg(work.join("doubles")));
    std::fs::copy(repo().join("qemu-tests/cluster.toml"), work.join("cluster.toml")).unwrap();

    // Cold: a fresh cache, so mmdebstrap downloads and builds the base.
    let cold_cache = work.join("cold-cache");
    let cold = build(work, &cold_cache);
    let _ = std::fs::remove_dir_all(work.join("out"));
    let base_tar = std::fs::read_dir(cold_cache.join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tar"))
        .unwrap();
    // Warm: everything cached; what a rebuild after a cluster.toml change costs.
    let warm = median((0..RUNS).map(|_| build(work, &cold_cache)).collect());

    let base_img = std::fs::read_dir(cold_cache.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "img"))
        .unwrap();
    let cp = median(
        (0..RUNS)
            .map(|i| {
                let to = work.join(format!("cp-{i}.img"));
                let start = Instant::now();
                run(Command::new("cp").arg("--sparse=always").arg(&base_img).arg(&to));
                let t = start.elapsed();
                std::fs::remove_file(to).unwrap();
                t
            })
            .collect(),
    );
    // The per-node step itself: sparse copy of the cached base, GPT, CIDATA, fsync.
    let lock = kubestick::artifacts::lock::Lock::parse(
        &work.join("doubles/artifacts.lock"),
        &std::fs::read_to_string(work.join("doubles/artifacts.lock")).unwrap(),
    )
    .unwrap();
    let cluster = kubestick::spec::load(&work.join("cluster.toml"), &lock.kubernetes_versions())
        .unwrap_or_else(|e| panic!("{e}"))
        .cluster;
    let secrets = kubestick::secrets::load(&work.join("cluster.secrets")).unwrap();
    let pins = lock
        .pins(&cluster.kubernetes_version, |_| None)
        .expect("the release is pinned");
    let rendered = kubestick::render::Renderer::new()
        .unwrap()
        .render(&cluster, &secrets, &pins)
        .unwrap();
    let root_len: u64 = std::fs::read_to_string(base_img.with_extension("layout"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let layout = kubestick::image::Layout::for_root_size(root_len);
    let per_node = median(
        (0..RUNS)
            .map(|i| {
                let to = work.join(format!("node-{i}.img"));
                let start = Instant::now();
                kubestick::image::build_node(&base_img, &layout, &cluster.name, &rendered.nodes[0], &to).unwrap();
                let t = start.elapsed();
                std::fs::remove_file(to).unwrap();
                t
            })
            .collect(),
    );
    let cp_sync = median(
        (0..RUNS)
            .map(|i| {
                let to = work.join(format!("cps-{i}.img"));
                let start = Instant::now();
                run(Command::new("cp").arg("--sparse=always").arg(&base_img).arg(&to));
                run(Command::new("sync").arg("--data").arg(&to));
                let t = start.elapsed();
                std::fs::remove_file(to).unwrap();
                t
            })
            .collect(),
    );

    let image = work.join("out/optiplex-1.img");
    let meta = std::fs::metadata(&image).unwrap();
    let zst = work.join("optiplex-1.img.zst");
    let start = Instant::now();
    run(Command::new("zstd")
        .args(["-19", "-T0", "-q", "-f"])
        .arg(&image)
        .arg("-o")
        .arg(&zst));
    let zstd_time = start.elapsed();
    let compressed = std::fs::metadata(&zst).unwrap().len();

    println!("image benchmark (test-double artifacts; median of {RUNS} where repeated)");
    println!(
        "  cold build, 3 nodes (mmdebstrap base, fresh cache)  {:>7.1} s",
        cold.as_secs_f64()
    );
    println!(
        "  base root filesystem tarball                         {:>7.0} MiB",
        mib(std::fs::metadata(&base_tar).unwrap().len())
    );
    println!(
        "  warm build, 3 nodes (base cached)                    {:>7.2} s",
        warm.as_secs_f64()
    );
    println!(
        "  one node image (copy, GPT, CIDATA, fsync)            {:>7.2} s",
        per_node.as_secs_f64()
    );
    println!(
        "  cp --sparse=always of the base image                 {:>7.2} s",
        cp.as_secs_f64()
    );
    println!(
        "  cp --sparse=always + sync --data                     {:>7.2} s",
        cp_sync.as_secs_f64()
    );
    let ratio = per_node.as_secs_f64() / cp.as_secs_f64();
    println!("  ratio node / cp                                      {ratio:>7.2}x  (target <= 1.2x)");
    println!(
        "  ratio node / (cp + sync)                             {:>7.2}x",
        per_node.as_secs_f64() / cp_sync.as_secs_f64()
    );
    println!(
        "  image size                                           {:>7.0} MiB ({:.0} MiB allocated)",
        mib(meta.len()),
        mib(meta.blocks() * 512)
    );
    println!(
        "  zstd -19                                             {:>7.0} MiB in {:.0} s",
        mib(compressed),
        zstd_time.as_secs_f64()
    );
}

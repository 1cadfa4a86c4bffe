//! `make bench`: what a node image costs once the base is cached, against
//! `cp --sparse=always` of the base in the same run (target: at most 1.2x); the cold base
//! build (mmdebstrap, fresh cache); the image size raw, allocated, and after `zstd -19`
//! (target: at most 300 MiB with the Kubernetes binaries); the bytes each container image
//! adds to a node image (raw, allocated in 4 KiB blocks, after `zstd -19`); the bill of
//! materials' share of a warm build (target: under 5%).
//!
//! Upstream binaries cannot be downloaded on the development machines, so the images carry
//! the test doubles from qemu-tests/; the real kubeadm, kubelet, kubectl, containerd, runc,
//! crictl and CNI plugins add their own compressed size on top (printed as an estimate).
//! The same holds for the container images: the doubles are one tiny layer each. With
//! network access (or a mirror of the real images), `BENCH_IMAGES_LOCK=artifacts.lock
//! [BENCH_IMAGES_MIRROR=DIR-or-URL] make bench` measures the real ones instead.

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
    let cluster = kubestick::spec::load(
        &work.join("cluster.toml"),
        &kubestick::spec::Releases::pinned(lock.kubernetes_versions()),
    )
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
    // The cache keeps "<root partition bytes> <epoch>" beside the base image.
    let layout_text = std::fs::read_to_string(base_img.with_extension("layout")).unwrap();
    let (root_len, epoch) = layout_text.trim().split_once(' ').unwrap();
    let base = kubestick::image::Base {
        path: base_img.clone(),
        layout: kubestick::image::Layout::for_root_size(root_len.parse().unwrap()),
        epoch: epoch.parse().unwrap(),
    };
    let bom = std::fs::read(work.join("out").join(format!("{}.cdx.json", rendered.nodes[0].name))).unwrap();
    let per_node = median(
        (0..RUNS)
            .map(|i| {
                let to = work.join(format!("node-{i}.img"));
                let start = Instant::now();
                kubestick::image::build_node(&base, &cluster.name, &rendered.nodes[0], &bom, &to).unwrap();
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

    // The bill of materials' share of a warm build: the package list read from the base,
    // then per node the document and its copy written into the root filesystem. The
    // document here lists no container images (what was pulled is not at hand in a bench;
    // they are 24 small objects among ~350).
    let packages_time = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                kubestick::rootfs::base::installed_packages(&base_tar).unwrap();
                start.elapsed()
            })
            .collect(),
    );
    let packages = kubestick::rootfs::base::installed_packages(&base_tar).unwrap();
    let base_spec = kubestick::rootfs::base::BaseSpec::new(None, None);
    let artifacts: Vec<&kubestick::artifacts::lock::Artifact> = lock.artifacts.iter().collect();
    let node = &rendered.nodes[0];
    let document_time = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let files = kubestick::build::bom_files(&rendered, node);
                kubestick::bom::document(&kubestick::bom::Inputs {
                    cluster: &cluster.name,
                    node: &node.name,
                    role: "control-plane",
                    kubernetes_version: &cluster.kubernetes_version,
                    lock_sha256: &lock.sha256,
                    suite: &base_spec.suite,
                    sources: &base_spec.sources(),
                    packages: &packages,
                    artifacts: &artifacts,
                    images: &[],
                    files: &files,
                    epoch: base.epoch,
                })
                .unwrap();
                start.elapsed()
            })
            .collect(),
    );
    let scratch_node = work.join("bom-node.img");
    kubestick::image::build_node(&base, &cluster.name, node, &bom, &scratch_node).unwrap();
    let write_time = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                kubestick::image::write_root_file(
                    &scratch_node,
                    base.layout.root.0,
                    kubestick::rootfs::compose::BOM_PATH,
                    &bom,
                    base.epoch,
                )
                .unwrap();
                start.elapsed()
            })
            .collect(),
    );
    std::fs::remove_file(&scratch_node).unwrap();
    let nodes = rendered.nodes.len() as u32;
    let bom_time = packages_time + (document_time + write_time) * nodes;

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
    println!(
        "  bill of materials, {nodes} nodes: packages {:.3} s + {nodes} x (document {:.3} s + into the image {:.3} s) = {:.2} s",
        packages_time.as_secs_f64(),
        document_time.as_secs_f64(),
        write_time.as_secs_f64(),
        bom_time.as_secs_f64()
    );
    println!(
        "  bill of materials / warm build                       {:>6.1} %  (target < 5 %)",
        100.0 * bom_time.as_secs_f64() / warm.as_secs_f64()
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
    image_costs(work, &cold_cache, &cluster);
}

/// What each image of `cluster` adds to a control-plane node's image: its blobs (top-level
/// manifest or index, the amd64 manifest, config, layers) as the OCI layout holds them.
fn image_costs(work: &Path, cache_dir: &Path, cluster: &kubestick::spec::Cluster) {
    use kubestick::artifacts::{cache::Cache, download, lock::Lock};
    let (lock_path, mirror) = match std::env::var_os("BENCH_IMAGES_LOCK") {
        Some(lock) => (PathBuf::from(lock), std::env::var("BENCH_IMAGES_MIRROR").ok()),
        None => (
            work.join("doubles/artifacts.lock"),
            Some(work.join("doubles/mirror").display().to_string()),
        ),
    };
    let lock = Lock::parse(&lock_path, &std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    let images: Vec<_> = lock.images_for_cluster(cluster).cloned().collect();
    let cache = Cache::open(cache_dir).unwrap();
    let options = download::Options {
        mirror: mirror.as_deref().map(download::Mirror::parse),
        allow_unpinned: true,
        ..Default::default()
    };
    let pulled = kubestick::artifacts::pull_all(images, &cache, options, true).unwrap();
    let block = |n: u64| n.div_ceil(4096) * 4096;
    let zstd = |blobs: &[PathBuf]| -> u64 {
        let mut cat = Command::new("sh");
        cat.arg("-c")
            .arg("cat \"$@\" | zstd -19 -T0 -q -c | wc -c")
            .arg("sh")
            .args(blobs);
        let out = cat.output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    println!(
        "container images carried by a control-plane node ({}):",
        lock_path.display()
    );
    println!("  {:<28} {:>10} {:>10} {:>10}", "image", "raw", "allocated", "zstd -19");
    let (mut raw, mut alloc, mut all) = (0, 0, std::collections::BTreeMap::new());
    for (image, result) in &pulled {
        let p = result.as_ref().unwrap_or_else(|e| panic!("{}: {e:#}", image.reference));
        let paths: Vec<PathBuf> = p.blobs.iter().map(|(d, _)| cache.path(d)).collect();
        let r: u64 = p.blobs.iter().map(|(_, s)| s).sum();
        let a: u64 = p.blobs.iter().map(|(_, s)| block(*s)).sum();
        println!("  {:<28} {:>10} {:>10} {:>10}", image.name, r, a, zstd(&paths));
        for (d, s) in &p.blobs {
            all.insert(d.to_string(), (cache.path(d), *s));
        }
        raw += r;
        alloc += a;
    }
    // Blobs shared between images are stored once.
    let unique_raw: u64 = all.values().map(|(_, s)| s).sum();
    let unique_alloc: u64 = all.values().map(|(_, s)| block(*s)).sum();
    let paths: Vec<PathBuf> = all.into_values().map(|(p, _)| p).collect();
    println!(
        "  {:<28} {:>10} {:>10} {:>10}  (each shared blob once; {raw} raw, {alloc} allocated without sharing)",
        "all, as carried",
        unique_raw,
        unique_alloc,
        zstd(&paths)
    );
}

//! The whole pipeline, stage by stage, for `render` and `build`: spec → secrets → render →
//! artifacts → rootfs → image. Each step says what it does; each stage module does one job.

use std::fs;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::artifacts::cache::Cache;
use crate::artifacts::digest::Digest;
use crate::artifacts::download;
use crate::artifacts::lock::{Image, Lock, Nodes};
use crate::artifacts::oci::pull::Pulled;
use crate::diag::Report;
use crate::release::Release;
use crate::render::{self, Rendered, Renderer};
use crate::rootfs::{base, compose, tools};
use crate::secrets::{self, Origin};
use crate::spec::{self, Cluster, Role};
use crate::{artifacts, bom, image, progress};

/// Loads and validates the cluster file, printing warnings (errors end the run). Its
/// Kubernetes release is held against the lock and against the releases this cluster's sticks
/// were built with (recorded in its state directory, `state` or the default beside the file).
pub fn load_cluster(path: &Path, lock: &Lock, state: Option<&Path>, styled: bool) -> Result<Cluster> {
    let state = state.map_or_else(|| secrets::default_dir(path), Path::to_path_buf);
    let built = secrets::releases::read(&state)?;
    let releases = spec::Releases {
        pinned: lock.kubernetes_versions(),
        built: secrets::releases::newest(&built).map(|r| (r, secrets::releases::path(&state))),
    };
    let loaded = spec::load(path, &releases)?;
    print_warnings(&loaded.report, styled);
    let new = loaded.cluster.kubernetes_version.parse::<Release>();
    if let (Some((newest, _)), Ok(new)) = (releases.built, new) {
        let step = crate::release::step(newest, new);
        if step != crate::release::Step::Same {
            eprintln!("note: {}.", step.describe(newest, new));
        }
    }
    Ok(loaded.cluster)
}

fn print_warnings(report: &Report, styled: bool) {
    if !report.diagnostics.is_empty() {
        eprint!("{}", report.render(styled));
    }
}

/// Stages 2–3 for a validated cluster: load or create the secrets, render and write out/.
/// `pins` come from the lock (with the digests observed for unpinned images, when known).
pub fn render_stage(
    path: &Path,
    cluster: &Cluster,
    output: &Path,
    state: Option<PathBuf>,
    pins: &render::Pins,
) -> Result<Rendered> {
    let state = state.unwrap_or_else(|| secrets::default_dir(path));
    let (secrets, origin) = secrets::load_or_create(&state, &cluster.name)?;
    for loose in secrets::loose_permissions(&state) {
        eprintln!(
            "warning: {} can be read by other users; run `chmod -R go= {}`",
            loose.display(),
            state.display()
        );
    }
    let rendered = Renderer::new()?.render(cluster, &secrets, pins)?;
    render::output::write(&rendered, output)
        .with_context(|| format!("writing the rendered files to {}", output.display()))?;

    match origin {
        Origin::Created => eprintln!(
            "Created the cluster's secrets in {} (back it up; keep it private).",
            state.display()
        ),
        Origin::Loaded => eprintln!("Using the cluster's secrets in {}.", state.display()),
    }
    println!(
        "Rendered {} node{} into {}:",
        rendered.nodes.len(),
        if rendered.nodes.len() == 1 { "" } else { "s" },
        output.display()
    );
    for node in &rendered.nodes {
        println!(
            "  {}/{}/  cloud-init/, ignition.json, files/ ({} files)",
            output.display(),
            node.name,
            node.files.len()
        );
    }
    println!(
        "  {}/common/files/  shared by every node ({} files)",
        output.display(),
        rendered.common_files.len()
    );
    let expires = secrets
        .admin_expires()
        .map(|t| format!(", certificate valid until {}", t.date()))
        .unwrap_or_default();
    println!(
        "  {}/admin.conf  admin kubeconfig for {}{expires}",
        output.display(),
        cluster.api_server_url()
    );
    if let Some(end) = secrets.admin_expires() {
        let left = end - time::OffsetDateTime::now_utc();
        if left < secrets::credentials::ADMIN_WARN {
            eprintln!(
                "warning: {}/admin.conf {} on {}; `kubestick kubeconfig {}` issues a new one",
                output.display(),
                if left.is_negative() { "expired" } else { "expires" },
                end.date(),
                path.display()
            );
        }
    }
    Ok(rendered)
}

/// The pins the renderer needs: every image by tag and digest; an unpinned one by the digest
/// `observed` knows for it (the cache's record, or what was just pulled), else by tag.
pub fn pins(lock: &Lock, cluster: &Cluster, observed: impl Fn(&Image) -> Option<Digest>) -> Result<render::Pins> {
    lock.pins(&cluster.kubernetes_version, observed)
        .context("the cluster's Kubernetes release is not in the lock")
}

pub struct Request<'a> {
    pub cluster: &'a Path,
    pub output: &'a Path,
    pub state: Option<PathBuf>,
    pub debian_mirror: &'a str,
    pub debian_security_mirror: Option<&'a str>,
    /// Build the Debian base again even when cached.
    pub refresh_base: bool,
    pub fetch: download::Options,
    pub cache: Option<PathBuf>,
    pub lock: Lock,
    pub styled: bool,
}

pub fn run(req: &Request<'_>) -> Result<()> {
    let show = std::io::stderr().is_terminal();
    let cache_root = match &req.cache {
        Some(dir) => dir.clone(),
        None => Cache::default_root()?,
    };
    let base_spec = base::BaseSpec::new(Some(req.debian_mirror), req.debian_security_mirror);
    // Host tools first: a missing one fails in a second, not after the downloads.
    tools::require_mke2fs()?;
    if req.refresh_base
        || !cache_root
            .join("rootfs")
            .join(format!("base-{}.tar", base_spec.key()))
            .exists()
    {
        tools::require("mmdebstrap", "build the Debian base image", "mmdebstrap")?;
    }

    let cluster = load_cluster(req.cluster, &req.lock, req.state.as_deref(), req.styled)?;

    eprintln!(
        "Fetching the pinned artifacts and images for Kubernetes {}...",
        cluster.kubernetes_version
    );
    let cache = Cache::open(&cache_root)?;
    let results = artifacts::fetch_all(
        req.lock.for_cluster(&cluster).cloned().collect(),
        &cache,
        req.fetch.clone(),
        show,
    )?;
    let mut fetched = Vec::new();
    let mut failures = Vec::new();
    for (artifact, result) in results {
        match result {
            Ok(f) => fetched.push((artifact, f.path)),
            Err(e) => failures.push(format!("  {e:#}")),
        }
    }
    let mut pulled = Vec::new();
    for (image, result) in artifacts::pull_all(
        req.lock.images_for_cluster(&cluster).cloned().collect(),
        &cache,
        req.fetch.clone(),
        show,
    )? {
        match result {
            Ok(p) => pulled.push(p),
            Err(e) => failures.push(format!("  {}: {e:#}", image.reference)),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} artifact(s) or image(s) could not be fetched, so no image was built:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    for p in pulled.iter().filter(|p| p.unpinned) {
        eprintln!(
            "warning: image {} is UNPINNED; using the observed digest {} (not checked against any published digest)",
            p.reference, p.top.0
        );
    }

    let pins = pins(&req.lock, &cluster, |image| {
        pulled
            .iter()
            .find(|p| p.image.reference == image.reference)
            .map(|p| p.top.0.clone())
    })?;
    let rendered = render_stage(req.cluster, &cluster, req.output, req.state.clone(), &pins)?;

    let source_date_epoch = source_date_epoch()?;
    let base_tar = base::ensure(&cache_root, &base_spec, req.refresh_base, show)?;
    // One base per role: control-plane images only on control-plane nodes.
    let mut bases = std::collections::BTreeMap::new();
    let mut carried_by_role = std::collections::BTreeMap::new();
    for role in [Role::ControlPlane, Role::Worker] {
        if !cluster.nodes.iter().any(|n| n.role == role) {
            continue;
        }
        let carried: Vec<&Pulled> = pulled
            .iter()
            .filter(|p| role == Role::ControlPlane || p.image.nodes == Nodes::All)
            .collect();
        let base = base_image(
            &cache_root,
            &base_tar,
            &base_spec,
            &fetched,
            &carried,
            role,
            &rendered,
            &cluster,
            source_date_epoch,
            show,
        )?;
        bases.insert(role.as_str(), base);
        carried_by_role.insert(role.as_str(), carried);
    }
    // What every node's bill of materials shares.
    let packages = base::installed_packages(&base_tar)?;
    let sources = base_spec.sources();
    let artifacts: Vec<&artifacts::lock::Artifact> = fetched.iter().map(|(a, _)| a).collect();

    let images_dir = req.output;
    let mut images = Vec::new();
    let mut image_size = 0;
    for node in &rendered.nodes {
        let role = cluster
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .map_or(Role::Worker, |n| n.role);
        let base_image = &bases[role.as_str()];
        image_size = image_size.max(base_image.layout.total);
        let out = images_dir.join(format!("{}.img", node.name));
        let spinner = progress::spinner(show, format!("writing {}", out.display()));
        let files = bom_files(&rendered, node);
        let bom = bom::document(&bom::Inputs {
            cluster: &cluster.name,
            node: &node.name,
            role: role.as_str(),
            kubernetes_version: &cluster.kubernetes_version,
            lock_sha256: &req.lock.sha256,
            suite: &base_spec.suite,
            sources: &sources,
            packages: &packages,
            artifacts: &artifacts,
            images: &carried_by_role[role.as_str()],
            files: &files,
            epoch: base_image.epoch,
        })?;
        let bom_path = images_dir.join(format!("{}.cdx.json", node.name));
        crate::fsx::write_atomic(&bom_path, &bom, crate::fsx::PUBLIC_MODE)?;
        image::build_node(base_image, &cluster.name, node, &bom, &out)?;
        spinner.finish_and_clear();
        images.push(out);
    }
    image::write_checksums(images_dir, &images)?;
    // Only now that sticks of this release exist does the cluster's next build answer to it.
    let state = req.state.clone().unwrap_or_else(|| secrets::default_dir(req.cluster));
    secrets::releases::record(&state, &cluster.kubernetes_version, time::OffsetDateTime::now_utc())?;
    // What `kubestick vm` needs to boot these images as a rehearsal (no secrets in it).
    crate::image::manifest::Manifest::from_cluster(&cluster).write(images_dir)?;

    println!(
        "Built {} image{} ({} each, sparse):",
        images.len(),
        if images.len() == 1 { "" } else { "s" },
        indicatif::HumanBytes(image_size)
    );
    for image in &images {
        println!("  {}", image.display());
    }
    println!(
        "  {}  (bill of materials of each image, CycloneDX {}; compare builds with `kubestick diff`)",
        images_dir.join("<node>.cdx.json").display(),
        bom::SPEC_VERSION
    );
    println!("  {}", images_dir.join("SHA256SUMS").display());
    println!(
        "  {}  (for `kubestick vm up {}`, a rehearsal in VMs)",
        images_dir.join(crate::image::manifest::FILE_NAME).display(),
        images_dir.display()
    );
    println!(
        "The images hold the cluster's secrets (mode 0600): keep them and the USB sticks private.\n\
         Next: `kubestick flash {} /dev/sdX` for each node.",
        images.first().map(|p| p.display().to_string()).unwrap_or_default()
    );
    Ok(())
}

/// The cluster's base image for one role (ESP + root, no node identity), cached under a key
/// of every input: the base tarball, the artifact and image digests, the overlays and the
/// shared rendered files.
#[allow(clippy::too_many_arguments)]
fn base_image(
    cache_root: &Path,
    base_tar: &Path,
    base_spec: &base::BaseSpec,
    fetched: &[(artifacts::lock::Artifact, PathBuf)],
    carried: &[&Pulled],
    role: Role,
    rendered: &Rendered,
    cluster: &Cluster,
    source_date_epoch: Option<u64>,
    show: bool,
) -> Result<image::Base> {
    let mut hasher = Sha256::new();
    hasher.update(base_spec.key());
    // The same inputs give a new tarball when the base is refreshed: its size and time tell.
    let meta = fs::metadata(base_tar).with_context(|| format!("reading {}", base_tar.display()))?;
    hasher.update(format!("base tarball {} {:?}\n", meta.len(), meta.modified().ok()));
    hasher.update(format!("SOURCE_DATE_EPOCH={source_date_epoch:?}\n"));
    hasher.update(&cluster.name);
    hasher.update(role.as_str());
    for p in carried {
        hasher.update(format!("image {} {}\n", p.reference, p.top.0));
    }
    for (a, _) in fetched {
        hasher.update(format!(
            "{} {} {:?}\n",
            a.name,
            a.install,
            a.digest.as_ref().map(ToString::to_string)
        ));
    }
    for (path, o) in crate::rootfs::overlays::OVERLAYS {
        hasher.update(format!("{path} {o:?}\n"));
    }
    for f in &rendered.common_files {
        hasher.update(format!("{} {} {}\n", f.path, f.mode, f.content));
    }
    for u in &rendered.units {
        hasher.update(format!("{} {}\n", u.name, u.content));
    }
    let key = hex::encode(hasher.finalize())[..24].to_string();
    let dir = cache_root.join("images");
    fs::create_dir_all(&dir)?;
    let prefix = format!("{}-{}-", cluster.name, role.as_str());
    let path = dir.join(format!("{prefix}{key}.img"));
    // Beside the image: its root partition's length and its epoch, as "<bytes> <seconds>".
    let layout_path = path.with_extension("layout");
    let cached = || -> Option<image::Base> {
        let text = fs::read_to_string(&layout_path).ok()?;
        let (root_len, epoch) = text.trim().split_once(' ')?;
        let (root_len, epoch) = (root_len.parse().ok()?, epoch.parse().ok()?);
        path.exists().then(|| image::Base {
            path: path.clone(),
            layout: image::Layout::for_root_size(root_len),
            epoch,
        })
    };
    if let Some(base) = cached() {
        return Ok(base);
    }
    let _lock = crate::fsx::lock_exclusive(&dir.join(format!("{}.lock", cluster.name)))?;
    if let Some(base) = cached() {
        return Ok(base);
    }

    let spinner = progress::spinner(
        show,
        format!("composing the root filesystem and the {} base image", role.as_str()),
    );
    let scratch = tempfile::Builder::new().prefix(".compose-").tempdir_in(&dir)?;
    let _unfinished = crate::interrupt::track(scratch.path());
    let layers = [
        compose::artifact_layer(fetched, scratch.path())?,
        compose::overlay_layer(),
        compose::rendered_layer(rendered),
        compose::image_layer(carried, &Cache::open(cache_root)?)?,
    ];
    let rootfs_tar = scratch.path().join("rootfs.tar");
    let stats = compose::compose(base_tar, &layers, source_date_epoch, &rootfs_tar)?;
    let partial = scratch.path().join("base.img");
    let layout = image::build_base(&rootfs_tar, &cluster.name, stats.epoch, &partial)?;
    spinner.finish_and_clear();
    // Only the newest base image of a cluster's role is kept.
    for entry in fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && (name.ends_with(".img") || name.ends_with(".layout")) {
            let _ = fs::remove_file(entry.path());
        }
    }
    fs::write(&layout_path, format!("{} {}", layout.root.1, stats.epoch))?;
    fs::rename(&partial, &path).with_context(|| format!("moving the base image into {}", dir.display()))?;
    Ok(image::Base {
        path,
        layout,
        epoch: stats.epoch,
    })
}

/// Every file kubestick puts on a node's image, for its bill of materials: overlays, the
/// rendered files every node shares, the units, and the node's own (CIDATA and its files).
pub fn bom_files(rendered: &Rendered, node: &render::RenderedNode) -> Vec<bom::FileEntry> {
    let mut files: Vec<bom::FileEntry> = crate::rootfs::overlays::OVERLAYS
        .iter()
        .filter_map(|(path, o)| match o {
            crate::rootfs::overlays::Overlay::File { data, .. } => Some(bom::FileEntry::new(format!("/{path}"), data)),
            crate::rootfs::overlays::Overlay::Symlink(_) => None,
        })
        .collect();
    files.extend(
        rendered
            .common_files
            .iter()
            .chain(&node.files)
            .map(|f| bom::FileEntry::new(f.path.clone(), f.content.as_bytes())),
    );
    files.extend(
        rendered
            .units
            .iter()
            .map(|u| bom::FileEntry::new(format!("{}/{}", render::UNIT_DIR, u.name), u.content.as_bytes())),
    );
    for (name, content) in [
        ("meta-data", &node.meta_data),
        ("network-config", &node.network_config),
        ("user-data", &node.user_data),
    ] {
        files.push(bom::FileEntry::new(format!("CIDATA:/{name}"), content.as_bytes()));
    }
    files
}

/// SOURCE_DATE_EPOCH from the environment (reproducible-builds.org): when set, every time
/// in the images is that one (no later one survives); when not, the base's own.
fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            crate::error::BadInput(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970\n  \
                 fix: unset it, or set it to an integer such as `$(git log -1 --format=%ct)`"
            ))
            .into()
        }),
        Err(e) => Err(crate::error::BadInput(format!("SOURCE_DATE_EPOCH: {e}")).into()),
    }
}

//! Command line: one function per subcommand, each calling the stages in order.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::artifacts::cache::{Cache, Entry};
use crate::artifacts::download::{self, Mirror, Outcome};
use crate::artifacts::lock::{Artifact, Image, Lock};
use crate::artifacts::{self, refresh};
use crate::diag::InvalidFile;
use crate::error::BadInput;
use crate::render::Rendered;
use crate::secrets::SecretsError;
use crate::spec::{self, LoadError};

const EXAMPLE: &str = include_str!("../examples/homelab.toml");

/// Turn one cluster.toml into bootable disk images for a bare-metal Kubernetes home lab.
#[derive(Debug, Parser)]
#[command(name = "kubestick", version, help_expected = true)]
pub struct Cli {
    /// When to color diagnostics
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a commented cluster file to start from: `kubestick init > cluster.toml`
    Init,
    /// Validate a cluster file and print the plan: who creates the cluster, who joins,
    /// which disk each node gives to ceph, and every address in use
    Check {
        /// The cluster file
        cluster: PathBuf,
        /// Where the cluster's secrets live [default: <cluster file without .toml>.secrets/ beside it]
        #[arg(long)]
        state: Option<PathBuf>,
        /// The admin kubeconfig whose expiry to show [default: out/admin.conf when it exists]
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
    /// Issue a new admin kubeconfig from the cluster CA in the state directory (the old one
    /// expires after a year; this never locks you out)
    Kubeconfig {
        /// The cluster file
        cluster: PathBuf,
        /// Where to write it (`-` for standard output)
        #[arg(short, long, default_value = "out/admin.conf")]
        output: PathBuf,
        /// Where the cluster's secrets live [default: <cluster file without .toml>.secrets/ beside it]
        #[arg(long)]
        state: Option<PathBuf>,
        /// Days the credential is valid for (at most until the cluster CA ends)
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        validity: u32,
    },
    /// Build one bootable disk image per node (out/<node>.img), out/SHA256SUMS, the rendered
    /// configuration and the admin kubeconfig
    Build {
        /// The cluster file
        cluster: PathBuf,
        /// Output directory
        #[arg(short, long, default_value = "out")]
        output: PathBuf,
        /// Where the cluster's secrets live [default: <cluster file without .toml>.secrets/ beside it]
        #[arg(long)]
        state: Option<PathBuf>,
        /// Debian mirror for the base root filesystem
        #[arg(long, value_name = "URL", default_value = crate::rootfs::base::DEFAULT_MIRROR)]
        debian_mirror: String,
        /// Debian security mirror (trixie-security) [default: `debian-security` beside
        /// --debian-mirror when that ends in `/debian`, else Debian's]
        #[arg(long, value_name = "URL")]
        debian_security_mirror: Option<String>,
        /// Build the Debian base again even if it is cached, taking in the updates and
        /// security fixes published since (compare with `kubestick diff`)
        #[arg(long)]
        refresh_base: bool,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lock: LockFile,
    },
    /// Write a node image to a USB stick and verify it (--list shows the sticks)
    Flash(crate::flash::FlashArgs),
    /// What changed between two builds: packages, artifacts, container images and rendered
    /// files, from their bills of materials. Exit 0 when the same, 1 when anything changed
    Diff {
        /// The old build: a node image (out/<node>.img) or its bill of materials (out/<node>.cdx.json)
        old: PathBuf,
        /// The new build, likewise
        new: PathBuf,
    },
    /// Show what artifacts.lock pins: every upstream file, its digest and where the digest
    /// was published
    Lock {
        /// Only the files Kubernetes VERSION needs
        #[arg(long, value_name = "VERSION")]
        kubernetes: Option<String>,
        #[command(flatten)]
        lock: LockFile,
        #[command(subcommand)]
        action: Option<LockAction>,
    },
    /// Download what a cluster needs into the verified cache (or check it with --list)
    Fetch {
        /// The cluster file; its Kubernetes version decides what is fetched
        cluster: Option<PathBuf>,
        /// Fetch for Kubernetes VERSION instead of a cluster file's [default: the newest pinned]
        #[arg(long, value_name = "VERSION", conflicts_with = "cluster")]
        kubernetes: Option<String>,
        /// Show what is cached, verified or missing; download nothing
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        lock: LockFile,
    },
    /// Write every node's configuration (cloud-init, Ignition, kubeadm) and the admin
    /// kubeconfig, creating the cluster's secrets on first use
    Render {
        /// The cluster file
        cluster: PathBuf,
        /// Output directory
        #[arg(short, long, default_value = "out")]
        output: PathBuf,
        /// Where the cluster's secrets live [default: <cluster file without .toml>.secrets/ beside it]
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Rehearse a built cluster as VMs on this machine (QEMU, no root): up, status, console,
    /// stop/start a node, down, destroy
    Vm(crate::vm::VmArgs),
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Compare each pin with the checksum file upstream publishes (needs network access)
    Refresh {
        /// Update changed digests in the lock file given with --lock
        #[arg(long)]
        write: bool,
        /// Read checksum files from this URL or directory instead of upstream hosts (a directory
        /// is also read as an OCI image layout to resolve image tags)
        #[arg(long, value_name = "URL|DIR")]
        mirror: Option<String>,
        /// Resolve image tags at this registry instead of each image's own
        #[arg(long, value_name = "URL")]
        registry_mirror: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct LockFile {
    /// Use this lock file instead of the one built into kubestick
    #[arg(long = "lock", value_name = "FILE", id = "file", global = true)]
    pub file: Option<PathBuf>,
}

impl LockFile {
    fn load(&self) -> Result<Lock> {
        match &self.file {
            None => Ok(Lock::embedded()),
            Some(path) => Lock::from_file(path),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// Use only the cache; fail listing what is missing
    #[arg(long, conflicts_with = "mirror")]
    pub offline: bool,
    /// Fetch from this URL or directory (laid out as <mirror>/<host>/<path>) instead of upstream
    /// hosts; a directory is also read as an OCI image layout (oci-layout, index.json, blobs/) for images
    #[arg(long, value_name = "URL|DIR")]
    pub mirror: Option<String>,
    /// Pull every image from this registry instead of its own (containerd-style, with ?ns=<registry>)
    #[arg(long, value_name = "URL", conflicts_with = "offline")]
    pub registry_mirror: Option<String>,
    /// Also download files and images upstream publishes no digest for (`kubestick lock` marks them
    /// UNPINNED); their observed digest is recorded, and later runs use those bytes without this flag
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Cache directory [default: $XDG_CACHE_HOME/kubestick or ~/.cache/kubestick]
    #[arg(long, value_name = "DIR", env = "KUBESTICK_CACHE")]
    pub cache: Option<PathBuf>,
    /// Seconds to wait for a connection, a response or the next bytes
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Attempts per file after a transient failure (timeouts, resets, 408, 429, 5xx)
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
    /// Seconds before the first retry; doubled for each further one, at most 30
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub retry_delay: f64,
}

/// Exit codes: 0 success, 1 failure, 2 bad input (the user's files need fixing).
pub fn main() -> ExitCode {
    // Die quietly like other Unix tools when the reader of our output goes away
    // (`kubestick lock | head`), instead of panicking on the failed write.
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = crate::interrupt::install() {
        eprintln!("warning: Ctrl-C will not clean up unfinished files: {e}");
    }
    let styled = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    // diff(1)'s convention: a difference is an answer, not an error.
    if let Command::Diff { old, new } = &cli.command {
        return match crate::diff::run(old, new) {
            Ok(false) => ExitCode::SUCCESS,
            Ok(true) => ExitCode::from(1),
            Err(err) => report_error(&err, styled),
        };
    }
    match run(cli, styled) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report_error(&err, styled),
    }
}

fn report_error(err: &anyhow::Error, styled: bool) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let report = err.downcast_ref::<LoadError>().and_then(|e| match e {
        LoadError::Invalid(InvalidFile(report)) => Some(report),
        LoadError::Read { .. } => None,
    });
    if let Some(report) = report.or_else(|| err.downcast_ref::<InvalidFile>().map(|f| &f.0)) {
        let _ = write!(stderr, "{}", report.render(styled));
        return ExitCode::from(2);
    }
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
    let bad_input = err.chain().any(|c| {
        c.is::<SecretsError>() || c.is::<LoadError>() || c.is::<BadInput>() || c.is::<crate::flash::FlashRefusal>()
    });
    ExitCode::from(if bad_input { 2 } else { 1 })
}

fn run(cli: Cli, styled: bool) -> Result<()> {
    match cli.command {
        Command::Init => {
            print!("{EXAMPLE}");
            Ok(())
        }
        Command::Check {
            cluster,
            state,
            kubeconfig,
        } => check(&cluster, state, kubeconfig, styled),
        Command::Kubeconfig {
            cluster,
            output,
            state,
            validity,
        } => kubeconfig(&cluster, &output, state, validity, styled),
        Command::Render { cluster, output, state } => render(&cluster, &output, state, styled).map(drop),
        Command::Build {
            cluster,
            output,
            state,
            debian_mirror,
            debian_security_mirror,
            refresh_base,
            source,
            lock,
        } => crate::build::run(&crate::build::Request {
            cluster: &cluster,
            output: &output,
            state,
            debian_mirror: &debian_mirror,
            debian_security_mirror: debian_security_mirror.as_deref(),
            refresh_base,
            fetch: download_options(&source),
            cache: source.cache.clone(),
            lock: lock.load()?,
            styled,
        }),
        Command::Flash(args) => crate::flash::run(&args),
        Command::Vm(args) => crate::vm::run(args),
        Command::Diff { .. } => unreachable!("handled in main"),
        Command::Lock {
            kubernetes,
            lock,
            action: None,
        } => show_lock(&lock.load()?, kubernetes.as_deref()),
        Command::Lock {
            lock: file,
            action:
                Some(LockAction::Refresh {
                    write,
                    mirror,
                    registry_mirror,
                }),
            ..
        } => refresh_lock(&file, write, mirror, registry_mirror),
        Command::Fetch {
            cluster,
            kubernetes,
            list,
            source,
            lock,
        } => fetch(cluster, kubernetes, list, &source, &lock, styled),
    }
}

fn check(path: &Path, state: Option<PathBuf>, kubeconfig: Option<PathBuf>, styled: bool) -> Result<()> {
    use crate::secrets::credentials;
    let lock = Lock::embedded();
    let cluster = crate::build::load_cluster(path, &lock, state.as_deref(), styled)?;
    print!("{}", spec::plan(&cluster));
    let state = state.unwrap_or_else(|| crate::secrets::default_dir(path));
    if !state.exists() {
        println!(
            "Credentials: none yet (the first `kubestick build` creates them in {}).",
            state.display()
        );
        return Ok(());
    }
    let secrets = crate::secrets::load(&state)?;
    let kubeconfig = kubeconfig.or_else(|| Some(PathBuf::from("out/admin.conf")).filter(|p| p.exists()));
    let now = time::OffsetDateTime::now_utc();
    println!("Credentials (the nodes renew their own certificates):");
    for e in credentials::expiries(&secrets, kubeconfig.as_deref())? {
        let fix = if e.warn == credentials::CA_WARN {
            "a CA cannot be renewed in place; plan a new cluster (new secrets) before then".to_string()
        } else {
            format!("issue a new one with `kubestick kubeconfig {}`", path.display())
        };
        println!("  {:<40} {}", e.what, e.describe(now, &fix));
    }
    Ok(())
}

fn kubeconfig(path: &Path, output: &Path, state: Option<PathBuf>, days: u32, styled: bool) -> Result<()> {
    use crate::secrets::credentials;
    let lock = Lock::embedded();
    let cluster = crate::build::load_cluster(path, &lock, state.as_deref(), styled)?;
    let state = state.unwrap_or_else(|| crate::secrets::default_dir(path));
    if !state.exists() {
        return Err(BadInput(format!(
            "{} does not exist: the cluster has no secrets yet\n  fix: pass --state DIR for the \
             directory `kubestick build` created, or build the cluster first",
            state.display()
        ))
        .into());
    }
    let secrets = crate::secrets::load(&state)?;
    let admin = credentials::issue_admin(&secrets, days, time::OffsetDateTime::now_utc())?;
    let text = secrets.kubeconfig(&admin, &cluster.name, &cluster.api_server_url());
    let until = crate::secrets::pki::inspect(&admin.cert_pem)?.not_after.date();
    if output == Path::new("-") {
        print!("{text}");
    } else {
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::fsx::write_atomic(output, text.as_bytes(), crate::fsx::SECRET_MODE)?;
        eprintln!(
            "Wrote {}: administrator of {} at {}, valid until {until} (mode 0600; keep it private).",
            output.display(),
            cluster.name,
            cluster.api_server_url()
        );
    }
    if credentials::keep_if_longer(&secrets, &admin)? {
        eprintln!(
            "Kept it in {} too: later builds write it to out/admin.conf.",
            state.join("pki/admin.crt").display()
        );
    }
    Ok(())
}

fn render(path: &Path, output: &Path, state: Option<PathBuf>, styled: bool) -> Result<Rendered> {
    let lock = Lock::embedded();
    let cluster = crate::build::load_cluster(path, &lock, state.as_deref(), styled)?;
    // Unpinned images are named by the digest an earlier fetch observed, if the cache has one.
    let cache = Cache::default_root().ok().and_then(|root| Cache::existing(&root));
    let pins = crate::build::pins(&lock, &cluster, |image| {
        cache
            .as_ref()
            .and_then(|c| c.observed(&artifacts::oci::pull::observed_key(&image.reference)))
    })?;
    let rendered = crate::build::render_stage(path, &cluster, output, state, &pins)?;
    println!(
        "These files contain the cluster's secrets (mode 0600); keep {} private.",
        output.display()
    );
    Ok(rendered)
}

fn show_lock(lock: &Lock, kubernetes: Option<&str>) -> Result<()> {
    let versions = match kubernetes {
        Some(v) => vec![known_version(lock, v)?],
        None => lock.kubernetes_versions(),
    };
    for version in versions {
        println!("Kubernetes {version}:");
        for a in lock.for_kubernetes(&version) {
            let digest = a.digest.as_ref().map_or_else(
                || format!("UNPINNED: {}", a.unpinned.as_deref().unwrap_or("")),
                ToString::to_string,
            );
            println!("  {:<34} {:<8} {digest}", a.name, a.version);
            println!("  {:<34} {:<8} {}", "", "", a.url);
            println!("  {:<34} {:<8} from {}", "", "", a.source);
        }
        println!("  images:");
        for i in lock.images_for_kubernetes(&version) {
            let digest = i.digest.as_ref().map_or_else(
                || format!("UNPINNED: {}", i.unpinned.as_deref().unwrap_or("")),
                ToString::to_string,
            );
            let carried = match i.nodes {
                artifacts::lock::Nodes::All => "",
                artifacts::lock::Nodes::ControlPlane => " (control-plane nodes)",
            };
            println!("  {:<34} {}{carried}", i.name, i.reference);
            println!("  {:<34} {digest}", "");
            println!("  {:<34} from {}", "", i.source);
        }
        println!();
    }
    Ok(())
}

fn known_version(lock: &Lock, v: &str) -> Result<String> {
    let v = v.trim_start_matches('v');
    if lock.kubernetes.contains_key(v) {
        Ok(v.to_string())
    } else {
        Err(BadInput(format!(
            "Kubernetes {v} is not pinned; the lock has {}",
            lock.kubernetes_versions().join(", ")
        ))
        .into())
    }
}

fn refresh_lock(file: &LockFile, write: bool, mirror: Option<String>, registry_mirror: Option<String>) -> Result<()> {
    if write && file.file.is_none() {
        return Err(BadInput(
            "--write needs the lock file to update: `kubestick lock refresh --write --lock artifacts.lock`".into(),
        )
        .into());
    }
    let lock = file.load()?;
    let mirror = mirror.as_deref().map(Mirror::parse);
    let checks = refresh::check_all(&lock, mirror.as_ref(), std::time::Duration::from_secs(30))?;
    let mut changes = Vec::new();
    let mut unavailable = 0;
    for (i, check) in &checks {
        let a = &lock.artifacts[*i];
        let label = format!(
            "{} {}",
            a.name,
            a.kubernetes
                .as_deref()
                .map(|k| format!("(k8s {k})"))
                .unwrap_or_default()
        );
        match check {
            refresh::Check::Same => println!("  same       {label}"),
            refresh::Check::NotPublished => println!("  no source  {label}: {}", a.source),
            refresh::Check::Changed { published } => {
                println!(
                    "  CHANGED    {label}: lock {}, published {published}",
                    a.digest.as_ref().map_or("none".into(), ToString::to_string)
                );
                changes.push((*i, published.clone()));
            }
            refresh::Check::Unavailable { reason } => {
                println!("  ERROR      {label}: {reason}");
                unavailable += 1;
            }
        }
    }
    println!("Images (tags resolved at the registry):");
    let options = download::Options {
        mirror: mirror.clone(),
        registry_mirror: registry_mirror.clone(),
        retries: 2,
        ..download::Options::default()
    };
    let mut image_changes = Vec::new();
    for (i, check) in refresh::check_images(&lock, options)? {
        let image = &lock.images[i];
        match check {
            refresh::Check::Same => println!("  same       {}", image.reference),
            refresh::Check::Changed { published } => {
                match &image.digest {
                    Some(d) => println!("  CHANGED    {}: lock {d}, registry {published}", image.reference),
                    None => println!("  resolved   {}: unpinned, registry {published}", image.reference),
                }
                image_changes.push((i, published));
            }
            refresh::Check::Unavailable { reason } => {
                println!("  ERROR      {}: {reason}", image.reference);
                unavailable += 1;
            }
            refresh::Check::NotPublished => {}
        }
    }
    let total = changes.len() + image_changes.len();
    if write && total > 0 {
        let path = file.file.as_ref().expect("checked above");
        if !changes.is_empty() {
            refresh::write_changes(path, &changes)?;
        }
        if !image_changes.is_empty() {
            let lock = Lock::from_file(path)?;
            refresh::write_image_changes(path, &image_changes, &lock, registry_mirror.as_deref().unwrap_or(""))?;
        }
        println!("Updated {total} digest(s) in {}.", path.display());
    } else if total > 0 {
        println!("{total} digest(s) differ; run again with --lock FILE --write to update FILE.");
    }
    if unavailable > 0 {
        anyhow::bail!("{unavailable} checksum file(s) or image tag(s) could not be read");
    }
    Ok(())
}

fn fetch(
    cluster: Option<PathBuf>,
    kubernetes: Option<String>,
    list: bool,
    source: &SourceArgs,
    file: &LockFile,
    styled: bool,
) -> Result<()> {
    let lock = file.load()?;
    // For a cluster file, only what that cluster uses; for a release, everything.
    let (version, selection, images): (String, Vec<Artifact>, Vec<Image>) = match (&cluster, kubernetes) {
        (Some(path), _) => {
            let cluster = crate::build::load_cluster(path, &lock, None, styled)?;
            let selection = lock.for_cluster(&cluster).cloned().collect();
            let images = lock.images_for_cluster(&cluster).cloned().collect();
            (cluster.kubernetes_version, selection, images)
        }
        (None, v) => {
            let version = match v {
                Some(v) => known_version(&lock, &v)?,
                None => lock
                    .kubernetes_versions()
                    .into_iter()
                    .next()
                    .context("the lock pins no Kubernetes release")?,
            };
            let selection = lock.for_kubernetes(&version).cloned().collect();
            let images = lock.images_for_kubernetes(&version).cloned().collect();
            (version, selection, images)
        }
    };
    let root = match &source.cache {
        Some(dir) => dir.clone(),
        None => Cache::default_root()?,
    };
    let cache = Cache::open(&root)?;
    if list {
        return list_cache(&selection, &images, &version, &cache);
    }
    let progress = std::io::stderr().is_terminal();
    let results = artifacts::fetch_all(selection, &cache, download_options(source), progress)?;
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    for (a, result) in results {
        match result {
            Ok(f) => {
                let how = match f.outcome {
                    Outcome::Cached => "cached".to_string(),
                    Outcome::Downloaded { bytes, resumed_from: 0 } => format!("downloaded {}", human(bytes)),
                    Outcome::Downloaded { bytes, resumed_from } => {
                        format!("downloaded {} (resumed at {})", human(bytes), human(resumed_from))
                    }
                    Outcome::Copied { bytes } => format!("copied {} from the mirror", human(bytes)),
                };
                if f.unpinned {
                    println!(
                        "  !  {:<34} {how}; UNPINNED, observed {} (not verified against any published digest)",
                        a.name, f.digest
                    );
                } else {
                    println!("  ok {:<34} {how}", a.name);
                }
            }
            Err(e) => {
                println!("  -- {:<34} FAILED", a.name);
                failed.push((a.name, e));
            }
        }
    }
    let started = std::time::Instant::now();
    let mut transferred = 0;
    for (image, result) in artifacts::pull_all(images, &cache, download_options(source), progress)? {
        match result {
            Ok(p) => {
                transferred += p.transferred;
                let how = if p.transferred == 0 {
                    format!("cached, {}", human(p.size()))
                } else {
                    format!("fetched {} of {}", human(p.transferred), human(p.size()))
                };
                if p.unpinned {
                    println!(
                        "  !  {:<34} {how}; UNPINNED, observed {} (not verified against any published digest)",
                        image.reference, p.top.0
                    );
                } else {
                    println!("  ok {:<34} {how}", image.reference);
                }
            }
            Err(e) => {
                println!("  -- {:<34} FAILED", image.reference);
                failed.push((image.reference, e));
            }
        }
    }
    if transferred > 0 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "Images: {} in {secs:.1}s ({}/s)",
            human(transferred),
            human((transferred as f64 / secs.max(0.001)) as u64)
        );
    }
    println!("Cache: {}", cache.root().display());
    if failed.is_empty() {
        return Ok(());
    }
    let offline = failed
        .iter()
        .all(|(_, e)| matches!(e.downcast_ref(), Some(download::FetchError::Offline { .. })));
    let mut msg = format!(
        "{} of the files and images Kubernetes {version} needs could not be fetched:",
        failed.len()
    );
    for (name, e) in &failed {
        msg.push_str(&format!("\n  {name}: {e:#}"));
    }
    if offline {
        msg.push_str("\n  fix: run `kubestick fetch` once with network access, or give --mirror URL|DIR");
    }
    Err(anyhow::anyhow!(msg))
}

fn download_options(source: &SourceArgs) -> download::Options {
    download::Options {
        timeout: std::time::Duration::from_secs(source.timeout.max(1)),
        retries: source.retries,
        retry_delay: std::time::Duration::from_secs_f64(source.retry_delay.clamp(0.0, 30.0)),
        mirror: source.mirror.as_deref().map(Mirror::parse),
        registry_mirror: source.registry_mirror.clone(),
        offline: source.offline,
        allow_unpinned: source.allow_unpinned,
    }
}

fn list_cache(selection: &[Artifact], images: &[Image], version: &str, cache: &Cache) -> Result<()> {
    let mut missing = 0;
    println!("Artifacts for Kubernetes {version} in {}:", cache.root().display());
    for (a, entry) in artifacts::status(selection, cache)? {
        let state = match &entry {
            Entry::Verified { size, .. } if a.digest.is_none() => {
                format!("cached, {} (unpinned, observed digest)", human(*size))
            }
            Entry::Verified { size, .. } => format!("verified, {}", human(*size)),
            Entry::Corrupt { actual, .. } => format!("CORRUPT (is {actual}; will be fetched again)"),
            Entry::Missing => {
                missing += 1;
                "missing".to_string()
            }
        };
        println!("  {:<34} {:<8} {state}", a.name, a.version);
    }
    println!("Images:");
    for (image, state) in artifacts::image_status(images, cache) {
        let state = match state {
            Ok(p) if p.unpinned => format!(
                "cached, {} in {} blobs (unpinned, observed {})",
                human(p.size()),
                p.blobs.len(),
                p.top.0
            ),
            Ok(p) => format!("verified, {} in {} blobs", human(p.size()), p.blobs.len()),
            Err(e) => {
                missing += 1;
                match e.downcast_ref::<download::FetchError>() {
                    Some(download::FetchError::Unpinned { .. }) => "missing (unpinned: needs --allow-unpinned)".into(),
                    Some(download::FetchError::Offline { .. }) => "missing".into(),
                    _ => format!("missing ({e:#})"),
                }
            }
        };
        println!("  {:<60} {state}", image.reference);
    }
    println!("{missing} missing.");
    Ok(())
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! Command line: one function per subcommand, each calling the stages in order.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::artifacts::lock::Lock;
use crate::diag::{InvalidFile, Report};
use crate::render::{self, Pins, Renderer};
use crate::secrets::{self, Origin, SecretsError};
use crate::spec::{self, Cluster, LoadError};

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
}

/// Exit codes: 0 success, 1 failure, 2 bad input (the user's files need fixing).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let styled = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match run(cli, styled) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report_error(&err, styled),
    }
}

fn report_error(err: &anyhow::Error, styled: bool) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    if let Some(LoadError::Invalid(InvalidFile(report))) = err.downcast_ref::<LoadError>() {
        let _ = write!(stderr, "{}", report.render(styled));
        return ExitCode::from(2);
    }
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
    let bad_input = err.chain().any(|c| c.is::<SecretsError>() || c.is::<LoadError>());
    ExitCode::from(if bad_input { 2 } else { 1 })
}

fn run(cli: Cli, styled: bool) -> Result<()> {
    match cli.command {
        Command::Init => {
            print!("{EXAMPLE}");
            Ok(())
        }
        Command::Check { cluster } => check(&cluster, styled),
        Command::Render { cluster, output, state } => render(&cluster, &output, state, styled),
    }
}

/// Loads and validates the cluster file, printing warnings (errors end the run).
fn load(path: &Path, lock: &Lock, styled: bool) -> Result<Cluster> {
    let loaded = spec::load(path, &lock.kubernetes_versions())?;
    print_warnings(&loaded.report, styled);
    Ok(loaded.cluster)
}

fn print_warnings(report: &Report, styled: bool) {
    if !report.diagnostics.is_empty() {
        eprint!("{}", report.render(styled));
    }
}

fn check(path: &Path, styled: bool) -> Result<()> {
    let lock = Lock::embedded();
    let cluster = load(path, &lock, styled)?;
    print!("{}", spec::plan(&cluster));
    Ok(())
}

fn render(path: &Path, output: &Path, state: Option<PathBuf>, styled: bool) -> Result<()> {
    let lock = Lock::embedded();
    let cluster = load(path, &lock, styled)?;
    let state = state.unwrap_or_else(|| secrets::default_dir(path));
    let (secrets, origin) = secrets::load_or_create(&state, &cluster.name)?;
    for loose in secrets::loose_permissions(&state) {
        eprintln!(
            "warning: {} can be read by other users; run `chmod -R go= {}`",
            loose.display(),
            state.display()
        );
    }
    let release = &lock.kubernetes[&cluster.kubernetes_version];
    let pins = Pins {
        pause_image: release.pause_image.clone(),
    };
    let rendered = Renderer::new()?.render(&cluster, &secrets, &pins)?;
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
    println!(
        "These files contain the cluster's secrets (mode 0600); keep {} private.",
        output.display()
    );
    Ok(())
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

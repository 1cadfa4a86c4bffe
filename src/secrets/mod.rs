//! Stage 2: the cluster's secrets, made once into a state directory beside the cluster
//! file and reused on every later run, so a rebuilt node rejoins the same cluster. A
//! missing or damaged secret is an error with instructions, never silently replaced:
//! replacing the CA would strand every node already flashed.

pub mod credentials;
pub mod pki;
pub mod releases;
mod token;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use time::OffsetDateTime;

use crate::fsx::{self, PRIVATE_DIR_MODE, SECRET_MODE};
pub use pki::{CertKey, KeyPairPem};
pub use token::BootstrapToken;

/// Bumped when the layout changes, so an old kubestick never misreads a newer state dir.
const FORMAT: u32 = 1;
const MARKER: &str = "kubestick-state.toml";

#[derive(Debug, Clone)]
pub struct Secrets {
    pub dir: PathBuf,
    pub ca: CertKey,
    pub front_proxy_ca: CertKey,
    pub etcd_ca: CertKey,
    pub service_account: KeyPairPem,
    pub admin: CertKey,
    pub bootstrap_token: BootstrapToken,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, for `kubeadm join`.
    pub discovery_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secret {path} is missing\n  the state directory {dir} holds the secrets of an existing cluster\n  \
         fix: restore {path} from your backup of {dir}; or, to start a brand-new cluster, move {dir} \
         away and run again (nodes built from the old secrets will then no longer be able to join)"
    )]
    Missing { path: PathBuf, dir: PathBuf },
    #[error(
        "secret {path} is damaged: {reason}\n  \
         fix: restore it from your backup of {dir}; or, to start a brand-new cluster, move {dir} \
         away and run again (nodes built from the old secrets will then no longer be able to join)"
    )]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error(
        "{dir} was written by a newer kubestick (state format {found}, this one reads {FORMAT})\n  fix: use that kubestick version"
    )]
    NewerFormat { dir: PathBuf, found: u32 },
}

/// Where the secrets of the cluster described by `cluster_file` live by default:
/// `homelab.toml` → `homelab.secrets/` in the same directory.
pub fn default_dir(cluster_file: &Path) -> PathBuf {
    let stem = cluster_file.file_stem().and_then(|s| s.to_str()).unwrap_or("cluster");
    cluster_file.with_file_name(format!("{stem}.secrets"))
}

/// What happened when the state directory was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Loaded,
}

/// Loads the secrets in `dir`, creating them first if `dir` does not exist.
pub fn load_or_create(dir: &Path, cluster_name: &str) -> Result<(Secrets, Origin)> {
    if dir.exists() {
        // A directory someone made ahead of time (to choose its place or mode) is not a
        // damaged state directory: fill it.
        let empty = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            return Ok((load(dir)?, Origin::Loaded));
        }
        fs::remove_dir(dir).with_context(|| format!("replacing the empty directory {}", dir.display()))?;
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Build everything in a private temporary directory and rename it into place, so an
    // interrupted run leaves either no state directory or a complete one.
    let staging = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("secrets")
        ))
        .suffix(".partial")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let _unfinished = crate::interrupt::track(staging.path());
    write_new_state(staging.path(), cluster_name)?;
    match fs::rename(staging.path(), dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok((load(dir)?, Origin::Created))
        }
        // Another run finished first: use its secrets, drop ours.
        Err(_) if dir.exists() => Ok((load(dir)?, Origin::Loaded)),
        Err(e) => Err(e).with_context(|| format!("moving the new secrets into place at {}", dir.display())),
    }
}

fn write_new_state(dir: &Path, cluster_name: &str) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let ca = pki::new_ca("kubernetes", now)?;
    let front_proxy_ca = pki::new_ca("front-proxy-ca", now)?;
    let etcd_ca = pki::new_ca("etcd-ca", now)?;
    let sa = pki::new_key_pair()?;
    let admin = pki::new_admin(&ca, now, pki::CLIENT_VALIDITY)?;
    let token =
        BootstrapToken::generate().map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;

    fsx::create_dir_mode(dir, PRIVATE_DIR_MODE)?;
    fsx::create_dir_mode(&dir.join("pki/etcd"), PRIVATE_DIR_MODE)?;
    fsx::create_dir_mode(&dir.join("pki"), PRIVATE_DIR_MODE)?;
    let files: [(&str, &str); 12] = [
        ("pki/ca.crt", &ca.cert_pem),
        ("pki/ca.key", &ca.key_pem),
        ("pki/front-proxy-ca.crt", &front_proxy_ca.cert_pem),
        ("pki/front-proxy-ca.key", &front_proxy_ca.key_pem),
        ("pki/etcd/ca.crt", &etcd_ca.cert_pem),
        ("pki/etcd/ca.key", &etcd_ca.key_pem),
        ("pki/sa.key", &sa.private_pem),
        ("pki/sa.pub", &sa.public_pem),
        ("pki/admin.crt", &admin.cert_pem),
        ("pki/admin.key", &admin.key_pem),
        ("bootstrap-token", &format!("{}\n", token.as_str())),
        (
            MARKER,
            &format!(
                "# Secrets of the kubestick cluster `{cluster_name}`. Back this directory up; keep it private.\n\
                 # Losing it means new nodes can no longer join the cluster built from it.\n\
                 format = {FORMAT}\ncluster = \"{cluster_name}\"\n"
            ),
        ),
    ];
    for (name, contents) in files {
        fsx::write_new(&dir.join(name), contents.as_bytes(), SECRET_MODE)?;
    }
    Ok(())
}

/// Reads and checks every secret in `dir`.
pub fn load(dir: &Path) -> Result<Secrets> {
    let read = |name: &str| -> Result<String, SecretsError> {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SecretsError::Missing {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                }
            } else {
                SecretsError::Corrupt {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })
    };
    let corrupt = |name: &str, reason: String| SecretsError::Corrupt {
        path: dir.join(name),
        dir: dir.to_path_buf(),
        reason,
    };

    let marker = read(MARKER)?;
    let format = marker
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("format").and_then(toml::Value::as_integer))
        .ok_or_else(|| corrupt(MARKER, "it has no `format = N` line".into()))?;
    if format > i64::from(FORMAT) {
        return Err(SecretsError::NewerFormat {
            dir: dir.to_path_buf(),
            found: format as u32,
        }
        .into());
    }

    let ca_pair = |base: &str| -> Result<CertKey, SecretsError> {
        let pair = CertKey {
            cert_pem: read(&format!("{base}.crt"))?,
            key_pem: read(&format!("{base}.key"))?,
        };
        pki::check_pair(&pair, true).map_err(|e| corrupt(&format!("{base}.crt"), e.to_string()))?;
        Ok(pair)
    };
    let ca = ca_pair("pki/ca")?;
    let front_proxy_ca = ca_pair("pki/front-proxy-ca")?;
    let etcd_ca = ca_pair("pki/etcd/ca")?;
    let service_account = KeyPairPem {
        private_pem: read("pki/sa.key")?,
        public_pem: read("pki/sa.pub")?,
    };
    pki::check_key_pair(&service_account).map_err(|e| corrupt("pki/sa.key", e.to_string()))?;
    let admin = CertKey {
        cert_pem: read("pki/admin.crt")?,
        key_pem: read("pki/admin.key")?,
    };
    pki::check_pair(&admin, false).map_err(|e| corrupt("pki/admin.crt", e.to_string()))?;
    let bootstrap_token =
        BootstrapToken::parse(read("bootstrap-token")?.trim()).map_err(|e| corrupt("bootstrap-token", e))?;
    let discovery_hash = pki::discovery_hash(&ca.cert_pem).map_err(|e| corrupt("pki/ca.crt", e.to_string()))?;

    Ok(Secrets {
        dir: dir.to_path_buf(),
        ca,
        front_proxy_ca,
        etcd_ca,
        service_account,
        admin,
        bootstrap_token,
        discovery_hash,
    })
}

/// Paths in `dir` that other users can read or write: secrets should be 0600 in a 0700
/// directory. Reported as a warning; the caller decides.
pub fn loose_permissions(dir: &Path) -> Vec<PathBuf> {
    let mut loose = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            loose.push(p.clone());
        }
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    loose.sort();
    loose
}

impl Secrets {
    /// A kubeconfig for the cluster's administrator, pointing at `server` (the API VIP).
    pub fn admin_kubeconfig(&self, cluster_name: &str, server: &str) -> String {
        self.kubeconfig(&self.admin, cluster_name, server)
    }

    /// A kubeconfig with the client certificate `client` (signed by this cluster's CA).
    pub fn kubeconfig(&self, client: &CertKey, cluster_name: &str, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let user = format!("{cluster_name}-admin");
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: {cluster_name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n\
             - name: {user}@{cluster_name}\n  context:\n    cluster: {cluster_name}\n    user: {user}\n\
             current-context: {user}@{cluster_name}\n\
             preferences: {{}}\n",
            ca = b64(&self.ca.cert_pem),
            cert = b64(&client.cert_pem),
            key = b64(&client.key_pem),
        )
    }

    /// When the admin client certificate stops working.
    pub fn admin_expires(&self) -> Option<OffsetDateTime> {
        pki::inspect(&self.admin.cert_pem).ok().map(|i| i.not_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c.secrets");
        let (a, origin) = load_or_create(&dir, "c").unwrap();
        assert_eq!(origin, Origin::Created);
        let (b, origin) = load_or_create(&dir, "c").unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(a.ca, b.ca);
        assert_eq!(a.bootstrap_token, b.bootstrap_token);
        assert!(loose_permissions(&dir).is_empty());
        // No staging directory is left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_and_corrupt_secrets_are_errors_not_regenerated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c.secrets");
        load_or_create(&dir, "c").unwrap();
        fs::write(dir.join("pki/etcd/ca.key"), "garbage").unwrap();
        let err = load_or_create(&dir, "c").unwrap_err().to_string();
        assert!(err.contains("pki/etcd/ca.crt is damaged"), "{err}");
        fs::remove_file(dir.join("pki/sa.pub")).unwrap();
        fs::write(dir.join("pki/etcd/ca.key"), "garbage").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("damaged") || err.contains("missing"), "{err}");
        assert_eq!(fs::read_to_string(dir.join("pki/etcd/ca.key")).unwrap(), "garbage");
    }

    #[test]
    fn an_empty_directory_is_filled_not_reported_as_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c.secrets");
        fs::create_dir(&dir).unwrap();
        let (_, origin) = load_or_create(&dir, "c").unwrap();
        assert_eq!(origin, Origin::Created);
        assert!(loose_permissions(&dir).is_empty());
    }

    #[test]
    fn default_dir_sits_beside_the_cluster_file() {
        assert_eq!(
            default_dir(Path::new("/x/homelab.toml")),
            PathBuf::from("/x/homelab.secrets")
        );
        assert_eq!(default_dir(Path::new("homelab.toml")), PathBuf::from("homelab.secrets"));
    }
}

//! The cluster's long-lived credentials from the user's side: when the CAs and the admin
//! kubeconfig expire (`kubestick check`), and a new admin credential issued from the CA in
//! the state directory (`kubestick kubeconfig`), so the user is never locked out. The nodes
//! renew their own certificates (templates/firstboot/certs); these are the ones they cannot.

use std::path::Path;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use time::{Duration, OffsetDateTime};

use super::Secrets;
use super::pki::{self, CertKey};
use crate::error::BadInput;
use crate::fsx::SECRET_MODE;

/// From this close to its end on, the admin credential is reported for renewal.
pub const ADMIN_WARN: Duration = Duration::days(30);
/// CAs cannot be renewed in place: they are reported a year ahead.
pub const CA_WARN: Duration = Duration::days(365);

/// One credential and when it stops working.
#[derive(Debug, Clone)]
pub struct Expiry {
    pub what: String,
    pub not_after: OffsetDateTime,
    pub warn: Duration,
}

impl Expiry {
    /// "until 2027-12-05 (365 days)", with what to do when it is close or past.
    pub fn describe(&self, now: OffsetDateTime, fix: &str) -> String {
        let left = self.not_after - now;
        let date = self.not_after.date();
        if left <= Duration::ZERO {
            format!("EXPIRED on {date}: {fix}")
        } else if left < self.warn {
            format!("until {date} ({} days left): {fix}", left.whole_days())
        } else {
            format!("until {date} ({} days)", left.whole_days())
        }
    }
}

/// The PEM client certificate inside a kubeconfig (`client-certificate-data`).
pub fn kubeconfig_client_cert(kubeconfig: &str) -> Option<String> {
    let data = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data:"))?
        .trim();
    let pem = base64::engine::general_purpose::STANDARD.decode(data).ok()?;
    String::from_utf8(pem).ok()
}

/// The three CAs of `secrets`, then the admin credential: that of `kubeconfig` when given,
/// else the one the state directory holds (what the next build writes to out/admin.conf).
pub fn expiries(secrets: &Secrets, kubeconfig: Option<&Path>) -> Result<Vec<Expiry>> {
    let ca = |what: &str, c: &CertKey| -> Result<Expiry> {
        Ok(Expiry {
            what: what.to_string(),
            not_after: pki::inspect(&c.cert_pem)?.not_after,
            warn: CA_WARN,
        })
    };
    let mut out = vec![
        ca("cluster CA", &secrets.ca)?,
        ca("front-proxy CA", &secrets.front_proxy_ca)?,
        ca("etcd CA", &secrets.etcd_ca)?,
    ];
    let (what, pem) = match kubeconfig {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let pem = kubeconfig_client_cert(&text).ok_or_else(|| {
                BadInput(format!(
                    "{} holds no client certificate (client-certificate-data)",
                    path.display()
                ))
            })?;
            (path.display().to_string(), pem)
        }
        None => (
            format!("admin credential ({})", secrets.dir.join("pki/admin.crt").display()),
            secrets.admin.cert_pem.clone(),
        ),
    };
    out.push(Expiry {
        what,
        not_after: pki::inspect(&pem)
            .context("reading the admin kubeconfig's certificate")?
            .not_after,
        warn: ADMIN_WARN,
    });
    Ok(out)
}

/// A new admin credential valid for `days`, refused when it would outlive the CA.
pub fn issue_admin(secrets: &Secrets, days: u32, now: OffsetDateTime) -> Result<CertKey> {
    let ca_end = pki::inspect(&secrets.ca.cert_pem)?.not_after;
    let most = (ca_end - now).whole_days();
    if days == 0 || i64::from(days) > most {
        return Err(BadInput(format!(
            "--validity {days}: a credential must be valid for 1 to {most} days (the cluster CA ends on {})\n  \
             fix: pass --validity {}",
            ca_end.date(),
            most.clamp(1, 365)
        ))
        .into());
    }
    Ok(pki::new_admin(&secrets.ca, now, Duration::days(i64::from(days)))?)
}

/// Makes `admin` the state directory's admin credential (the one every later build writes
/// to out/admin.conf) when it outlives the one there. The pair is written beside the old
/// one and renamed over it, certificate last; the previous pair is kept as `*.old`.
pub fn keep_if_longer(secrets: &Secrets, admin: &CertKey) -> Result<bool> {
    let new_end = pki::inspect(&admin.cert_pem)?.not_after;
    if secrets.admin_expires().is_some_and(|old| old >= new_end) {
        return Ok(false);
    }
    let pki_dir = secrets.dir.join("pki");
    for (name, contents) in [("admin.key", &admin.key_pem), ("admin.crt", &admin.cert_pem)] {
        let path = pki_dir.join(name);
        let old = pki_dir.join(format!("{name}.old"));
        std::fs::copy(&path, &old).with_context(|| format!("keeping {} as {}", path.display(), old.display()))?;
        crate::fsx::write_atomic(&path, contents.as_bytes(), SECRET_MODE)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> (tempfile::TempDir, Secrets) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.secrets");
        let (s, _) = crate::secrets::load_or_create(&state, "c").unwrap();
        (dir, s)
    }

    #[test]
    fn a_new_admin_credential_has_the_validity_asked_and_never_outlives_the_ca() {
        let (_d, s) = secrets();
        let now = OffsetDateTime::now_utc();
        let c = issue_admin(&s, 30, now).unwrap();
        let end = pki::inspect(&c.cert_pem).unwrap().not_after;
        // Certificates count whole seconds: 30 days, less the fraction of a second cut off.
        assert!((29..=30).contains(&(end - now).whole_days()), "{end}");
        pki::check_pair(&c, false).unwrap();
        let e = issue_admin(&s, 5000, now).unwrap_err().to_string();
        assert!(e.contains("--validity 5000") && e.contains("1 to 3649 days"), "{e}");
        assert!(issue_admin(&s, 0, now).is_err());
    }

    #[test]
    fn only_a_longer_lived_credential_replaces_the_stored_one() {
        let (_d, s) = secrets();
        let now = OffsetDateTime::now_utc();
        let short = issue_admin(&s, 10, now).unwrap();
        assert!(!keep_if_longer(&s, &short).unwrap());
        let long = issue_admin(&s, 700, now).unwrap();
        assert!(keep_if_longer(&s, &long).unwrap());
        let reloaded = crate::secrets::load(&s.dir).unwrap();
        assert_eq!(reloaded.admin.cert_pem, long.cert_pem);
        assert!(s.dir.join("pki/admin.crt.old").exists());
    }

    #[test]
    fn expiry_says_what_to_do_when_close_or_past() {
        let now = OffsetDateTime::now_utc();
        let e = |days| Expiry {
            what: "x".into(),
            not_after: now + Duration::days(days) + Duration::hours(1),
            warn: ADMIN_WARN,
        };
        assert!(!e(200).describe(now, "renew").contains("renew"));
        assert!(e(10).describe(now, "renew").ends_with("(10 days left): renew"));
        assert!(e(-3).describe(now, "renew").starts_with("EXPIRED on "));
    }
}

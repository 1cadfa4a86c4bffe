//! The cluster's certificate authorities and keys, made with rcgen (ECDSA P-256, which
//! kubeadm accepts with `encryptionAlgorithm: ECDSA-P256` and then uses for every
//! certificate it issues from these CAs).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

/// kubeadm's own default for CAs.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// kubeadm's own default for client certificates.
pub const CLIENT_VALIDITY: Duration = Duration::days(365);
/// Tolerates nodes whose clock is a little behind the machine that built the images.
const BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("not an X.509 certificate: {0}")]
    X509(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate is not a CA certificate")]
    NotCa,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A key pair without a certificate (the service-account signing key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairPem {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<CertKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate signed by `ca`, valid for `validity` (used for the admin kubeconfig).
pub fn new_client(
    ca: &CertKey,
    common_name: &str,
    organization: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name, Some(organization));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The cluster administrator's client certificate. kubeadm (1.29+) binds this group to
/// cluster-admin; unlike system:masters it can be revoked by deleting that binding.
pub fn new_admin(ca: &CertKey, now: OffsetDateTime, validity: Duration) -> Result<CertKey, PkiError> {
    new_client(ca, "kubernetes-admin", "kubeadm:cluster-admins", now, validity)
}

pub fn new_key_pair() -> Result<KeyPairPem, PkiError> {
    let key = KeyPair::generate()?;
    Ok(KeyPairPem {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// What was read back from a certificate, for checks and for `check`'s summary.
pub struct CertInfo {
    pub spki_der: Vec<u8>,
    pub is_ca: bool,
    pub not_after: OffsetDateTime,
}

pub fn inspect(cert_pem: &str) -> Result<CertInfo, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(PkiError::Pem(format!("found a `{}` block instead", pem.label)));
    }
    let cert = pem.parse_x509().map_err(|e| PkiError::X509(e.to_string()))?;
    Ok(CertInfo {
        spki_der: cert.tbs_certificate.subject_pki.raw.to_vec(),
        is_ca: cert.is_ca(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Parses both halves and checks the key is the certificate's.
pub fn check_pair(pair: &CertKey, want_ca: bool) -> Result<CertInfo, PkiError> {
    let info = inspect(&pair.cert_pem)?;
    let key = KeyPair::from_pem(&pair.key_pem)?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != info.spki_der {
        return Err(PkiError::KeyMismatch);
    }
    if want_ca && !info.is_ca {
        return Err(PkiError::NotCa);
    }
    Ok(info)
}

pub fn check_key_pair(pair: &KeyPairPem) -> Result<(), PkiError> {
    let key = KeyPair::from_pem(&pair.private_pem)?;
    if key.public_key_pem().trim() != pair.public_pem.trim() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(())
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` + hex SHA-256 of the CA
/// certificate's DER SubjectPublicKeyInfo (RFC 7469 pinning).
pub fn discovery_hash(ca_cert_pem: &str) -> Result<String, PkiError> {
    let info = inspect(ca_cert_pem)?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&info.spki_der))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_client_check_out() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca("kubernetes", now).unwrap();
        let info = check_pair(&ca, true).unwrap();
        assert!(info.is_ca);
        let admin = new_client(&ca, "kubernetes-admin", "kubeadm:cluster-admins", now, CLIENT_VALIDITY).unwrap();
        let info = check_pair(&admin, false).unwrap();
        assert!(!info.is_ca);
        assert!(check_pair(&admin, true).is_err());
        let swapped = CertKey {
            cert_pem: ca.cert_pem.clone(),
            key_pem: admin.key_pem.clone(),
        };
        assert!(matches!(check_pair(&swapped, true), Err(PkiError::KeyMismatch)));
        let hash = discovery_hash(&ca.cert_pem).unwrap();
        assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
    }
}

//! [admin]: the login user and its SSH public keys.

use base64::Engine as _;

use super::*;

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl Validator<'_> {
    pub(super) fn admin(&mut self, a: &S<RawAdmin>) -> Option<Admin> {
        let raw = a.get_ref();
        let user = self
            .required(&raw.user, "admin.user", span(a), "user = \"kube\"")
            .and_then(|u| {
                let s = u.get_ref();
                let valid = !s.is_empty()
                    && s.len() <= 32
                    && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
                if !valid {
                    self.error(
                        "admin.user",
                        span(u),
                        format!("`{s}` is not a valid user name"),
                        "use lowercase letters, digits, `_` and `-`, starting with a letter, e.g. \"kube\"",
                    );
                    None
                } else if ["root", "daemon", "bin", "sys", "nobody", "systemd-network"].contains(&s.as_str()) {
                    self.error(
                        "admin.user",
                        span(u),
                        format!("`{s}` is a system account"),
                        "choose your own user name, e.g. \"kube\"; it gets sudo rights",
                    );
                    None
                } else {
                    Some(s.clone())
                }
            });
        let keys = match &raw.ssh_authorized_keys {
            None => Some(Vec::new()),
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, k)| self.ssh_key(k, &format!("admin.ssh_authorized_keys[{i}]")))
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Option<Vec<_>>>(),
        };
        if keys.as_ref().is_some_and(Vec::is_empty) {
            self.warn(
                "admin.ssh_authorized_keys",
                raw.ssh_authorized_keys.as_ref().map_or(span(a), span),
                "no SSH key: nobody will be able to log in to the nodes",
                "add your public key, e.g. the contents of ~/.ssh/id_ed25519.pub",
            );
        }
        Some(Admin {
            user: user?,
            ssh_authorized_keys: keys?,
        })
    }

    pub(super) fn ssh_key(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref().trim();
        if s.contains("PRIVATE KEY") {
            self.error(path, span(value), "this is a private key", "never put a private key here: use the public half (the .pub file, e.g. ~/.ssh/id_ed25519.pub), and consider this private key exposed");
            return None;
        }
        let mut fields = s.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let problem = if !SSH_KEY_TYPES.contains(&kind) {
            Some(format!("`{kind}` is not an SSH public key type"))
        } else {
            match base64::engine::general_purpose::STANDARD.decode(blob) {
                Err(_) => Some("the key data is not valid base64 (was the line cut or wrapped?)".to_string()),
                Ok(bytes) => match ssh_blob_fields(&bytes) {
                    None => Some("the key data is cut short or has bytes left over (was it copied whole?)".to_string()),
                    Some(fields) if fields.first().copied() != Some(kind.as_bytes()) => Some(format!(
                        "the key data does not hold a {kind} key (was it copied whole?)"
                    )),
                    Some(fields) if kind == "ssh-ed25519" && (fields.len() != 2 || fields[1].len() != 32) => {
                        Some("an ed25519 key holds exactly 32 bytes of key data (was it copied whole?)".to_string())
                    }
                    Some(fields) if fields.len() < 2 => Some("the key data holds no key".to_string()),
                    Some(_) => None,
                },
            }
        };
        match problem {
            None => Some(s.to_string()),
            Some(p) => {
                self.error(
                    path,
                    span(value),
                    format!("malformed SSH public key: {p}"),
                    "paste one whole line of a .pub file: \"ssh-ed25519 AAAAC3Nza... you@laptop\"",
                );
                None
            }
        }
    }
}

/// The length-prefixed fields of an SSH public key blob (RFC 4253 §6.6), or None when
/// the blob is not exactly a sequence of them.
fn ssh_blob_fields(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        fields.push(bytes.get(4..4 + len)?);
        bytes = &bytes[4 + len..];
    }
    Some(fields)
}

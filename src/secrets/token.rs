//! kubeadm bootstrap tokens: `[a-z0-9]{6}.[a-z0-9]{16}`, the id before the dot and the
//! secret after it.

use ring::rand::{SecureRandom as _, SystemRandom};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let rng = SystemRandom::new();
        let pick = |n: usize| -> Result<String, ring::error::Unspecified> {
            let mut out = String::with_capacity(n);
            while out.len() < n {
                let mut b = [0u8; 1];
                rng.fill(&mut b)?;
                // Reject the top of the byte range so every character is equally likely.
                if usize::from(b[0]) < 256 - 256 % ALPHABET.len() {
                    out.push(ALPHABET[usize::from(b[0]) % ALPHABET.len()] as char);
                }
            }
            Ok(out)
        };
        Ok(BootstrapToken(format!("{}.{}", pick(6)?, pick(16)?)))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b));
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(BootstrapToken(s.to_string())),
            _ => Err("a bootstrap token has the form [a-z0-9]{6}.[a-z0-9]{16}".to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn id(&self) -> &str {
        self.0.split_once('.').map_or("", |(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = BootstrapToken::generate().unwrap();
        let b = BootstrapToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(BootstrapToken::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.id().len(), 6);
        assert!(BootstrapToken::parse("ABCDEF.0123456789abcdef").is_err());
        assert!(BootstrapToken::parse("abcdef0123456789abcdef").is_err());
    }
}

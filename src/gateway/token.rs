//! The tokens the gateway's Authenticate gives password users: signed, so that any replica
//! can check one another replica issued (the key is in the catalog, which every replica
//! reads), and short-lived as etcd's simple tokens (clients authenticate again when told
//! a token is invalid).

use ring::hmac;

/// How long a token is good for: etcd's simple-token default.
pub const TTL_SECS: u64 = 300;

pub struct Tokens {
    key: hmac::Key,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A fresh signing key, as stored in the catalog.
pub fn new_secret() -> String {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    // The system's random source; without it no token can be issued safely.
    if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
        return String::new();
    }
    hex(&key)
}

impl Tokens {
    /// `None` for a catalog without a usable key (no token is valid then).
    pub fn from_secret(secret: &str) -> Option<Tokens> {
        let key = unhex(secret).filter(|k| k.len() == 32)?;
        Some(Tokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// A token for `user`, good until `now + TTL_SECS`.
    pub fn issue(&self, user: &str, now_unix: u64) -> String {
        let body = format!("{}.{}", hex(user.as_bytes()), now_unix + TTL_SECS);
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(tag.as_ref()))
    }

    /// The user a token names, if this key signed it and it has not expired.
    pub fn verify(&self, token: &str, now_unix: u64) -> Option<String> {
        let (body, tag) = token.rsplit_once('.')?;
        hmac::verify(&self.key, body.as_bytes(), &unhex(tag)?).ok()?;
        let (user, expiry) = body.split_once('.')?;
        if expiry.parse::<u64>().ok()? < now_unix {
            return None;
        }
        String::from_utf8(unhex(user)?).ok()
    }
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who sends a request, as etcd decides it: with auth off, nobody in particular (tokens are
/// not even looked at); else the user of its token (`token`, else `authorization`, a
/// `Bearer ` prefix aside), and an unknown or expired token is refused without falling back
/// to the certificate; else the CN of its verified client certificate.
pub fn caller<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    common_name: impl FnOnce() -> Option<String>,
    catalog: &super::catalog::Catalog,
) -> Result<Option<String>, crate::rbac::AuthError> {
    if !catalog.auth.enabled {
        return Ok(common_name());
    }
    let Some(token) = header("token").or_else(|| header("authorization")) else {
        return Ok(common_name());
    };
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    Tokens::from_secret(&catalog.token_secret)
        .and_then(|t| t.verify(token, now_unix()))
        .map(Some)
        .ok_or(crate::rbac::AuthError::InvalidAuthToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_it_expires_and_only_under_its_key() {
        let secret = new_secret();
        let t = Tokens::from_secret(&secret).unwrap();
        let token = t.issue("alice", 1000);
        assert_eq!(t.verify(&token, 1000).as_deref(), Some("alice"));
        assert_eq!(t.verify(&token, 1000 + TTL_SECS).as_deref(), Some("alice"));
        assert_eq!(t.verify(&token, 1001 + TTL_SECS), None, "expired");
        let other = Tokens::from_secret(&new_secret()).unwrap();
        assert_eq!(other.verify(&token, 1000), None, "another key");
        let forged = token.replacen(&hex(b"alice"), &hex(b"root"), 1);
        assert_eq!(t.verify(&forged, 1000), None, "another user under the same tag");
        for junk in ["", ".", "a.b.c", "zz.1.zz", "616c696365.9999999999"] {
            assert_eq!(t.verify(junk, 1000), None, "{junk:?}");
        }
        assert!(Tokens::from_secret("").is_none());
        assert!(Tokens::from_secret("abcd").is_none());
    }
}

//! Dashboard sessions: a signed, expiring cookie that names the API key it was opened with,
//! and the CSRF token derived from it.
//!
//! The cookie is `v1.<expires unix>.<key name, base64url>.<nonce hex>.<HMAC-SHA256, base64url>`.
//! It never holds the API key: only the key's name, which is not secret. The signing key is
//! 32 random bytes kept in the secret store under [`SESSION_KEY_SECRET`], created on first
//! use, so every process serving the same deployment (Lambda instances included) accepts the
//! same cookies. Deleting that secret and restarting ends every session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ports::{PortError, SecretStore};
use crate::secret::Secret;

/// Name of the session cookie.
pub const COOKIE: &str = "taskrunner_session";

/// Secret store entry holding the cookie signing key (hex).
pub const SESSION_KEY_SECRET: &str = "taskrunner-ui/session-key";

/// How long a session lasts after login.
pub const LIFETIME: Duration = Duration::hours(8);

/// The key sessions are signed with.
pub struct SessionKey(Secret);

/// A valid session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Name of the API key that opened it.
    pub key_name: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
    nonce: String,
}

impl SessionKey {
    /// The deployment's key: read from `store`, created there when missing (see
    /// [`crate::auth::signing_key`]).
    pub async fn load(store: &dyn SecretStore) -> Result<Self, PortError> {
        crate::auth::signing_key(store, SESSION_KEY_SECRET)
            .await
            .map(Self)
    }

    /// A key given directly (tests).
    pub fn from_secret(key: Secret) -> Self {
        Self(key)
    }

    fn mac(&self, message: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A new session for the API key named `key_name`, as a cookie value.
    pub fn open(&self, key_name: &str, now: DateTime<Utc>) -> Result<String, PortError> {
        let payload = format!(
            "v1.{}.{}.{}",
            (now + LIFETIME).timestamp(),
            URL_SAFE_NO_PAD.encode(key_name),
            hex::encode(random::<16>()?)
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        Ok(format!("{payload}.{signature}"))
    }

    /// The session a cookie value holds, if it is signed by this key and not expired.
    pub fn verify(&self, cookie: &str, now: DateTime<Utc>) -> Option<Session> {
        let (payload, signature) = cookie.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        if !bool::from(self.mac(payload).ct_eq(&signature)) {
            return None;
        }
        let mut parts = payload.split('.');
        let (Some("v1"), Some(expires), Some(name), Some(nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires_at = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        if expires_at <= now {
            return None;
        }
        Some(Session {
            key_name: String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?,
            expires_at,
            nonce: nonce.to_owned(),
        })
    }

    /// The CSRF token of a session: state-changing requests must carry it.
    pub fn csrf_token(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&format!("csrf.{}", session.nonce)))
    }

    /// Whether `token` is the session's CSRF token.
    pub fn csrf_ok(&self, session: &Session, token: &str) -> bool {
        bool::from(self.csrf_token(session).as_bytes().ct_eq(token.as_bytes()))
    }
}

fn random<const N: usize>() -> Result<[u8; N], PortError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|err| PortError::Transient(format!("no randomness for a session: {err}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &str) -> SessionKey {
        SessionKey::from_secret(Secret::new(value))
    }

    #[test]
    fn a_session_is_valid_until_it_expires() {
        let now = Utc::now();
        let cookie = key("k").open("ci-main", now).unwrap();
        let session = key("k").verify(&cookie, now).unwrap();
        assert_eq!(session.key_name, "ci-main");
        assert!(key("k").verify(&cookie, now + LIFETIME).is_none());
    }

    #[test]
    fn forged_or_altered_cookies_are_refused() {
        let now = Utc::now();
        let cookie = key("k").open("ci-main", now).unwrap();
        assert!(key("other").verify(&cookie, now).is_none());
        let later = format!("v1.{}.{}", (now + LIFETIME * 10).timestamp(), &cookie[14..]);
        assert!(key("k").verify(&later, now).is_none());
        assert!(key("k").verify("v1.1.2.3.4", now).is_none());
        assert!(key("k").verify("", now).is_none());
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let now = Utc::now();
        let k = key("k");
        let one = k.verify(&k.open("a", now).unwrap(), now).unwrap();
        let two = k.verify(&k.open("a", now).unwrap(), now).unwrap();
        assert!(k.csrf_ok(&one, &k.csrf_token(&one)));
        assert!(!k.csrf_ok(&one, &k.csrf_token(&two)));
        assert!(!k.csrf_ok(&one, ""));
    }
}

//! API keys: `Authorization: Bearer <key>` on the API.
//!
//! Keys look like `trk_<id>_<random>`. Only a SHA-256 of each key is kept, in the secret
//! store under `taskrunner-api-key/<id>`, with the key's name; the key itself is shown once,
//! at creation. `TASKRUNNER_API_KEY` adds one static key for development and CI.
//!
//! A running task authenticates with a [`task_token`] instead, scoped to its own children.

pub mod task_token;

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ports::{PortError, SecretStore};
use crate::secret::Secret;
use task_token::TaskTokens;

/// Prefix of stored API key entries in the secret store.
pub const API_KEY_PREFIX: &str = "taskrunner-api-key/";

/// A deployment's signing key kept in the secret store under `name` (32 random bytes, hex):
/// read, or created on first use. Creation is "store if absent" and the stored value is read
/// back, so processes that race to create it (Lambda instances) all sign with the one that won.
pub async fn signing_key(store: &dyn SecretStore, name: &str) -> Result<Secret, PortError> {
    if let Some(key) = store.get(name).await? {
        return Ok(key);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| PortError::Transient(format!("no randomness for {name}: {err}")))?;
    store.create(name, &Secret::new(hex::encode(bytes))).await?;
    store
        .get(name)
        .await?
        .ok_or_else(|| PortError::Transient(format!("{name} vanished after it was written")))
}

/// The stored record of one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The key's id (part of the key, not secret).
    pub id: String,
    /// A name saying who uses it (`ci-main`).
    pub name: String,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key, a malformed header, or a key that matches nothing.
    #[error("{0}")]
    Denied(String),
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] PortError),
}

/// Checks and manages API keys.
#[derive(Clone)]
pub struct ApiKeys {
    store: Arc<dyn SecretStore>,
    static_key: Option<Secret>,
    static_key_secret: Option<String>,
    task_tokens: TaskTokens,
}

impl ApiKeys {
    /// Keys kept in `store`, plus `static_key` if given.
    pub fn new(store: Arc<dyn SecretStore>, static_key: Option<Secret>) -> Self {
        Self {
            task_tokens: TaskTokens::new(Arc::clone(&store)),
            store,
            static_key: static_key.filter(|key| !key.expose().is_empty()),
            static_key_secret: None,
        }
    }

    /// The task tokens signed with this deployment's key (same store as the keys).
    pub fn task_tokens(&self) -> &TaskTokens {
        &self.task_tokens
    }

    /// Also accepts the key held by the secret `name` (read at each check, so a rotated
    /// value takes effect at once): the AWS deployment's counterpart of `TASKRUNNER_API_KEY`.
    pub fn with_key_from_secret(mut self, name: impl Into<String>) -> Self {
        self.static_key_secret = Some(name.into()).filter(|name| !name.is_empty());
        self
    }

    /// Creates a key named `name`; returns the record and the key, which is shown only now.
    pub async fn create(&self, name: &str) -> Result<(ApiKeyRecord, Secret), PortError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(PortError::Permanent(format!(
                "api key name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if self.list().await?.iter().any(|record| record.name == name) {
            return Err(PortError::Permanent(format!(
                "an api key named {name:?} exists; revoke it first or choose another name"
            )));
        }
        let mut id = [0u8; 6];
        let mut random = [0u8; 32];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut random))
            .map_err(|err| PortError::Transient(format!("no randomness for a key: {err}")))?;
        let id = hex::encode(id);
        let key = Secret::new(format!(
            "trk_{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        ));
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            sha256: digest(&key),
            created_at: Utc::now(),
        };
        let stored = serde_json::to_string(&record)
            .map_err(|err| PortError::Permanent(format!("api key record: {err}")))?;
        self.store
            .put(&format!("{API_KEY_PREFIX}{id}"), &Secret::new(stored))
            .await?;
        Ok((record, key))
    }

    /// Every stored key's record.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, PortError> {
        let mut records = Vec::new();
        for entry in self.store.list(API_KEY_PREFIX).await? {
            if let Some(record) = self.read(&entry.name).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Revokes the key with this name or id; `false` when there is none.
    pub async fn revoke(&self, name_or_id: &str) -> Result<bool, PortError> {
        for record in self.list().await? {
            if record.name == name_or_id || record.id == name_or_id {
                return self
                    .store
                    .delete(&format!("{API_KEY_PREFIX}{}", record.id))
                    .await;
            }
        }
        Ok(false)
    }

    /// Whether any key exists at all (static or stored).
    pub async fn any(&self) -> Result<bool, PortError> {
        Ok(self.static_key.is_some()
            || self.static_key_secret.is_some()
            || !self.store.list(API_KEY_PREFIX).await?.is_empty())
    }

    /// Checks an `Authorization` header value; returns the key's name.
    pub async fn check(&self, header: Option<&str>) -> Result<String, AuthError> {
        let Some(header) = header else {
            return Err(AuthError::Denied(
                "missing Authorization header; send `Authorization: Bearer <api key>`".into(),
            ));
        };
        let Some(presented) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
        else {
            return Err(AuthError::Denied(
                "Authorization header must be `Bearer <api key>`".into(),
            ));
        };
        if let Some(expected) = &self.static_key {
            if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
                return Ok("static".into());
            }
        }
        if let Some(name) = &self.static_key_secret {
            if let Some(expected) = self.store.get(name).await? {
                if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
                    return Ok(name.clone());
                }
            }
        }
        let denied = || {
            AuthError::Denied(
                "the API key is not valid (wrong, or revoked); create one with `taskrunner api-key create --name NAME`".into(),
            )
        };
        let id = presented
            .strip_prefix("trk_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(denied)?;
        let record = self
            .read(&format!("{API_KEY_PREFIX}{id}"))
            .await?
            .ok_or_else(denied)?;
        let presented_digest = digest(&Secret::new(presented));
        if bool::from(presented_digest.as_bytes().ct_eq(record.sha256.as_bytes())) {
            Ok(record.name)
        } else {
            Err(denied())
        }
    }

    async fn read(&self, entry: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        let Some(value) = self.store.get(entry).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(value.expose()).ok())
    }
}

fn digest(key: &Secret) -> String {
    hex::encode(Sha256::digest(key.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::secrets::LocalSecretStore;

    fn keys(dir: &std::path::Path, static_key: Option<&str>) -> ApiKeys {
        let store = LocalSecretStore::open_with_key(&dir.join("s.db"), &[7; 32]).unwrap();
        ApiKeys::new(Arc::new(store), static_key.map(Secret::new))
    }

    #[tokio::test]
    async fn created_keys_work_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), None);
        assert!(!keys.any().await.unwrap());
        let (record, key) = keys.create("ci-main").await.unwrap();
        let header = format!("Bearer {}", key.expose());
        assert_eq!(keys.check(Some(&header)).await.unwrap(), "ci-main");
        assert!(
            keys.check(Some("Bearer trk_000000000000_nope"))
                .await
                .is_err()
        );
        assert!(keys.create("ci-main").await.is_err(), "names are unique");
        assert!(keys.revoke(&record.name).await.unwrap());
        assert!(keys.check(Some(&header)).await.is_err());
    }

    #[tokio::test]
    async fn a_key_held_by_a_secret_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), None).with_key_from_secret("api-key");
        assert!(keys.check(Some("Bearer rotated-1")).await.is_err());
        keys.store
            .put("api-key", &Secret::new("rotated-1"))
            .await
            .unwrap();
        assert_eq!(
            keys.check(Some("Bearer rotated-1")).await.unwrap(),
            "api-key"
        );
        assert!(keys.check(Some("Bearer rotated-2")).await.is_err());
    }

    #[tokio::test]
    async fn static_key_and_missing_header() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), Some("dev-key"));
        assert_eq!(keys.check(Some("Bearer dev-key")).await.unwrap(), "static");
        let missing = keys.check(None).await.unwrap_err().to_string();
        assert!(missing.contains("Authorization"), "{missing}");
        assert!(keys.check(Some("Basic abc")).await.is_err());
        assert!(keys.check(Some("Bearer dev-kez")).await.is_err());
    }
}

//! Task tokens: what a running task authenticates with when it starts children.
//!
//! A token is `trt_<task id, base64url>.<expires unix>.<HMAC-SHA256, base64url>`, signed with
//! a key of 32 random bytes kept in the secret store under [`TASK_TOKEN_KEY_SECRET`], so every
//! process of a deployment (Lambda instances included) verifies the same tokens. The worker
//! backend mints one when it starts a task, valid until the task's timeout; the API also
//! refuses it once the task has ended. The token is handed to the task like a secret value
//! (masked in its log) and is never stored: not in state, history or callbacks.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::ports::{PortError, SecretStore};
use crate::secret::Secret;
use crate::task::{TaskId, TaskSpec};

/// Secret store entry holding the task-token signing key (hex).
pub const TASK_TOKEN_KEY_SECRET: &str = "taskrunner-task-token/key";

/// How every task token starts (API keys start `trk_`).
pub const TOKEN_PREFIX: &str = "trt_";

/// A token's verified claims: whose it is and until when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskClaims {
    /// The task the token was minted for.
    pub task_id: TaskId,
    /// When it stops being valid (the task's timeout).
    pub expires_at: DateTime<Utc>,
}

/// Why a task token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Malformed, forged, or signed with another key.
    #[error("the task token is not valid (malformed, or from another deployment)")]
    Invalid,
    /// Past the task's timeout.
    #[error("task ended: the token of task {0:?} expired at its timeout")]
    Expired(String),
    /// The key could not be read.
    #[error("{0}")]
    Store(#[from] PortError),
}

/// Mints and verifies task tokens with the deployment's key.
#[derive(Clone)]
pub struct TaskTokens {
    store: Arc<dyn SecretStore>,
    key: Arc<OnceCell<Secret>>,
}

impl TaskTokens {
    /// Tokens signed with the key kept in `store` (read once, on first use).
    pub fn new(store: Arc<dyn SecretStore>) -> Self {
        Self {
            store,
            key: Arc::new(OnceCell::new()),
        }
    }

    /// Whether `presented` looks like a task token rather than an API key.
    pub fn is_task_token(presented: &str) -> bool {
        presented.starts_with(TOKEN_PREFIX)
    }

    /// The key as a verifier needs it: `None` while none exists (the token is refused).
    async fn stored_key(&self) -> Result<Option<&Secret>, PortError> {
        if let Some(key) = self.key.get() {
            return Ok(Some(key));
        }
        match self.store.get(TASK_TOKEN_KEY_SECRET).await? {
            Some(stored) => Ok(Some(self.key.get_or_init(|| async { stored }).await)),
            None => Ok(None),
        }
    }

    /// The key as minting needs it: created in the store when missing (see
    /// [`super::signing_key`]); within a process one creation runs at a time.
    async fn minting_key(&self) -> Result<&Secret, PortError> {
        self.key
            .get_or_try_init(|| super::signing_key(self.store.as_ref(), TASK_TOKEN_KEY_SECRET))
            .await
    }

    fn sign(key: &Secret, payload: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"task-token.v1.");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `task_id`, valid until `expires_at`.
    pub async fn mint(
        &self,
        task_id: &TaskId,
        expires_at: DateTime<Utc>,
    ) -> Result<Secret, PortError> {
        let key = self.minting_key().await?;
        let payload = format!(
            "{TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(task_id.as_str()),
            expires_at.timestamp()
        );
        let signature = URL_SAFE_NO_PAD.encode(Self::sign(key, &payload));
        Ok(Secret::new(format!("{payload}.{signature}")))
    }

    /// A token for the task `spec`, valid until its timeout (counted from now: the worker
    /// mints it as it starts the task).
    pub async fn mint_for(&self, spec: &TaskSpec) -> Result<Secret, PortError> {
        let timeout = chrono::Duration::seconds(
            i64::try_from(spec.timeout_seconds).unwrap_or(i64::MAX / 1000),
        );
        self.mint(&spec.task_id, Utc::now() + timeout).await
    }

    /// The claims of `presented`, if it is a token signed by this deployment and not expired.
    /// Whether its task still runs is for the caller to check.
    pub async fn verify(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskClaims, TokenError> {
        let (payload, signature) = presented.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Invalid)?;
        let key = self.stored_key().await?.ok_or(TokenError::Invalid)?;
        if !bool::from(Self::sign(key, payload).ct_eq(&signature)) {
            return Err(TokenError::Invalid);
        }
        let (task_id, expires) = payload
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .ok_or(TokenError::Invalid)?;
        let task_id = URL_SAFE_NO_PAD
            .decode(task_id)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|raw| TaskId::parse(&raw).ok())
            .ok_or(TokenError::Invalid)?;
        let expires_at = expires
            .parse()
            .ok()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
            .ok_or(TokenError::Invalid)?;
        if expires_at <= now {
            return Err(TokenError::Expired(task_id.to_string()));
        }
        Ok(TaskClaims {
            task_id,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemorySecretStore;

    fn tokens() -> TaskTokens {
        TaskTokens::new(Arc::new(MemorySecretStore::default()))
    }

    #[tokio::test]
    async fn a_token_names_its_task_until_it_expires() {
        let tokens = tokens();
        let now = Utc::now();
        let id = TaskId::parse("deploy-1.train").unwrap();
        let token = tokens
            .mint(&id, now + chrono::Duration::hours(1))
            .await
            .unwrap();
        assert!(TaskTokens::is_task_token(token.expose()));
        let claims = tokens.verify(token.expose(), now).await.unwrap();
        assert_eq!(claims.task_id, id);
        let later = now + chrono::Duration::hours(2);
        let expired = tokens.verify(token.expose(), later).await.unwrap_err();
        assert!(expired.to_string().starts_with("task ended"), "{expired}");
    }

    /// A store that lets other tasks run at every call, as a real one does.
    #[derive(Default)]
    struct Yielding(MemorySecretStore);

    #[async_trait::async_trait]
    impl SecretStore for Yielding {
        async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
            tokio::task::yield_now().await;
            self.0.get(name).await
        }
        async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
            tokio::task::yield_now().await;
            self.0.put(name, value).await
        }
        async fn delete(&self, name: &str) -> Result<bool, PortError> {
            self.0.delete(name).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::ports::SecretEntry>, PortError> {
            self.0.list(prefix).await
        }
    }

    #[tokio::test]
    async fn tasks_started_at_once_share_one_key() {
        let store: Arc<dyn SecretStore> = Arc::new(Yielding::default());
        let minting = TaskTokens::new(Arc::clone(&store));
        let later = Utc::now() + chrono::Duration::hours(1);
        let (a, b) = (TaskId::parse("a").unwrap(), TaskId::parse("b").unwrap());
        let (one, two) = tokio::join!(minting.mint(&a, later), minting.mint(&b, later));
        let verifying = TaskTokens::new(store);
        for token in [one.unwrap(), two.unwrap()] {
            assert!(verifying.verify(token.expose(), Utc::now()).await.is_ok());
        }
    }

    #[tokio::test]
    async fn forged_or_foreign_tokens_are_refused() {
        let tokens = tokens();
        let now = Utc::now();
        let id = TaskId::parse("a").unwrap();
        let token = tokens
            .mint(&id, now + chrono::Duration::hours(1))
            .await
            .unwrap();
        let other = TaskTokens::new(Arc::new(MemorySecretStore::default()));
        let _ = other.mint(&id, now).await.unwrap();
        assert!(matches!(
            other.verify(token.expose(), now).await,
            Err(TokenError::Invalid)
        ));
        let (payload, signature) = token.expose().rsplit_once('.').unwrap();
        let widened = payload.replace(&URL_SAFE_NO_PAD.encode("a"), &URL_SAFE_NO_PAD.encode("b"));
        assert!(
            tokens
                .verify(&format!("{widened}.{signature}"), now)
                .await
                .is_err()
        );
        assert!(tokens.verify("trt_", now).await.is_err());
        let fresh = TaskTokens::new(Arc::new(MemorySecretStore::default()));
        assert!(
            fresh.verify(token.expose(), now).await.is_err(),
            "no key, no token"
        );
    }
}

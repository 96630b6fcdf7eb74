//! In-memory adapters, for tests and examples: nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use serde_json::Value;

use crate::ports::{PortError, SecretEntry, SecretStore, TaskTokens};
use crate::secret::Secret;

/// A secret store in a map.
#[derive(Default)]
pub struct MemorySecretStore {
    values: Mutex<BTreeMap<String, (Secret, SecretEntry)>>,
}

impl MemorySecretStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Secret, SecretEntry)>> {
        self.values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl SecretStore for MemorySecretStore {
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
        Ok(self.lock().get(name).map(|(value, _)| value.clone()))
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
        let now = Utc::now();
        let mut values = self.lock();
        let created_at = values.get(name).map_or(now, |(_, entry)| entry.created_at);
        let entry = SecretEntry {
            name: name.to_owned(),
            created_at,
            updated_at: now,
        };
        values.insert(name.to_owned(), (value.clone(), entry));
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool, PortError> {
        Ok(self.lock().remove(name).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<SecretEntry>, PortError> {
        Ok(self
            .lock()
            .values()
            .filter(|(_, entry)| entry.name.starts_with(prefix))
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

/// How a kept token was answered.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenAnswer {
    /// Resumed with this output.
    Resumed(Value),
    /// Failed with this error name.
    Failed(String),
}

/// Task tokens in a map: each kept token answers once, and the answers are recorded.
#[derive(Default)]
pub struct MemoryTaskTokens {
    /// Open tokens by task id.
    open: Mutex<BTreeMap<String, String>>,
    /// Answers by task id, in order.
    answers: Mutex<Vec<(String, TokenAnswer)>>,
}

impl MemoryTaskTokens {
    /// The answers given so far: task id and answer, in order.
    pub fn answers(&self) -> Vec<(String, TokenAnswer)> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn answer(&self, task_id: &str, answer: TokenAnswer) -> bool {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(task_id)
            .is_some();
        if open {
            self.answers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((task_id.to_owned(), answer));
        }
        open
    }
}

#[async_trait]
impl TaskTokens for MemoryTaskTokens {
    async fn keep(&self, task_id: &str, token: &str) -> Result<(), PortError> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(task_id.to_owned(), token.to_owned());
        Ok(())
    }

    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError> {
        Ok(self.answer(task_id, TokenAnswer::Resumed(output.clone())))
    }

    async fn fail(&self, task_id: &str, error: &str, _cause: &str) -> Result<bool, PortError> {
        Ok(self.answer(task_id, TokenAnswer::Failed(error.to_owned())))
    }
}

//! In-memory adapters, for tests and examples: nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use crate::ports::{PortError, SecretEntry, SecretStore};
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

//! `LocalSecretStore`: secrets in SQLite, each value sealed with ChaCha20-Poly1305.
//!
//! The 32-byte key comes from `TASKRUNNER_MASTER_KEY` (base64 or hex) or from the key file
//! `master.key` in the data directory, created with mode 0600 on first use. The secret's
//! name is the AEAD's associated data, so a sealed value cannot be moved to another name.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use crate::ports::{PortError, SecretEntry, SecretStore};
use crate::secret::Secret;
use crate::sqlite::Db;

/// Environment variable that supplies the master key instead of the key file.
pub const MASTER_KEY_ENV: &str = "TASKRUNNER_MASTER_KEY";

/// The embedded mode's secret store.
pub struct LocalSecretStore {
    db: Db,
    cipher: ChaCha20Poly1305,
}

impl LocalSecretStore {
    /// Opens `data_dir/secrets.db`, with the key from the environment or `data_dir/master.key`.
    pub fn open(data_dir: &Path) -> Result<Self, PortError> {
        let key = match std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty()) {
            Some(text) => parse_key(&text)
                .map_err(|why| PortError::Permanent(format!("{MASTER_KEY_ENV}: {why}")))?,
            None => load_or_create_key_file(&data_dir.join("master.key"))?,
        };
        Self::open_with_key(&data_dir.join("secrets.db"), &key)
    }

    /// Opens the database at `path` with an explicit key.
    pub fn open_with_key(path: &Path, key: &[u8; 32]) -> Result<Self, PortError> {
        let db = Db::open(path, "secrets-db", |conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS secrets (
                    name TEXT PRIMARY KEY,
                    nonce BLOB NOT NULL,
                    sealed BLOB NOT NULL,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL
                );",
            )
        })
        .map_err(|err| {
            PortError::Permanent(format!(
                "cannot open the secret store {}: {err}",
                path.display()
            ))
        })?;
        let cipher = ChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| PortError::Permanent("master key must be 32 bytes".into()))?;
        Ok(Self { db, cipher })
    }
}

fn db_error(err: rusqlite::Error) -> PortError {
    match err {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            PortError::Transient(format!("secret store is busy: {err}; try again"))
        }
        other => PortError::Permanent(format!("secret store: {other}")),
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|err| err.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "expected 32 bytes as base64 or 64 hex digits".to_owned())?
    };
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("expected 32 bytes, got {}", bytes.len()))
}

fn load_or_create_key_file(path: &PathBuf) -> Result<[u8; 32], PortError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| {
            PortError::Permanent(format!(
                "cannot create data directory {}: {err}",
                dir.display()
            ))
        })?;
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|err| PortError::Permanent(format!("no randomness for a new key: {err}")))?;
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            let text = base64::engine::general_purpose::STANDARD.encode(key);
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|err| {
                    PortError::Permanent(format!("cannot write key file {}: {err}", path.display()))
                })?;
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(|err| PortError::Permanent(format!("key file {}: {err}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(PortError::Permanent(format!(
                    "key file {} is readable by others (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|err| {
                PortError::Permanent(format!("cannot read key file {}: {err}", path.display()))
            })?;
            parse_key(&text)
                .map_err(|why| PortError::Permanent(format!("key file {}: {why}", path.display())))
        }
        Err(err) => Err(PortError::Permanent(format!(
            "cannot create key file {}: {err}",
            path.display()
        ))),
    }
}

fn parse_time(text: String) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&text)
        .map(|time| time.with_timezone(&Utc))
        .unwrap_or_default()
}

#[async_trait]
impl SecretStore for LocalSecretStore {
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
        let key = name.to_owned();
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .db
            .read(move |conn| {
                conn.prepare_cached("SELECT nonce, sealed FROM secrets WHERE name = ?1")?
                    .query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .await
            .map_err(db_error)?;
        let Some((nonce, sealed)) = row else {
            return Ok(None);
        };
        let nonce = nonce.as_slice().try_into().map_err(|_| {
            PortError::Permanent(format!("secret {name:?}: stored nonce is damaged"))
        })?;
        let plain = self
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| {
                PortError::Permanent(format!(
                    "secret {name:?} cannot be decrypted: the master key differs from the one it was stored with; restore the key or store the secret again"
                ))
            })?;
        let text = String::from_utf8(plain)
            .map_err(|_| PortError::Permanent(format!("secret {name:?} is not UTF-8 text")))?;
        Ok(Some(Secret::new(text)))
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce)
            .map_err(|err| PortError::Transient(format!("no randomness for a nonce: {err}")))?;
        let sealed = self
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| PortError::Permanent(format!("secret {name:?} could not be sealed")))?;
        let now = Utc::now().to_rfc3339();
        let name = name.to_owned();
        self.db
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO secrets (name, nonce, sealed, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT(name) DO UPDATE SET nonce = ?2, sealed = ?3, updated_at = ?4",
                )?
                .execute(params![name, nonce.to_vec(), sealed, now])
                .map(drop)
            })
            .await
            .map_err(db_error)
    }

    async fn delete(&self, name: &str) -> Result<bool, PortError> {
        let name = name.to_owned();
        let deleted = self
            .db
            .write_relaxed(move |tx| {
                tx.prepare_cached("DELETE FROM secrets WHERE name = ?1")?
                    .execute(params![name])
            })
            .await
            .map_err(db_error)?;
        Ok(deleted > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<SecretEntry>, PortError> {
        let prefix = prefix.to_owned();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT name, created_at, updated_at FROM secrets
                     WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
                )?
                .query_map(params![prefix], |row| {
                    Ok(SecretEntry {
                        name: row.get(0)?,
                        created_at: parse_time(row.get(1)?),
                        updated_at: parse_time(row.get(2)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_round_trip_and_are_not_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(dir.path()).unwrap();
        store
            .put("GIT_PAT", &Secret::new("canary-4a9f1c"))
            .await
            .unwrap();
        assert_eq!(
            store.get("GIT_PAT").await.unwrap().unwrap().expose(),
            "canary-4a9f1c"
        );
        assert!(store.get("missing").await.unwrap().is_none());
        drop(store);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(13).any(|w| w == b"canary-4a9f1c"),
                "secret value found in clear in a data file"
            );
        }
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn list_shows_names_delete_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(dir.path()).unwrap();
        store.put("b", &Secret::new("1")).await.unwrap();
        store.put("a", &Secret::new("2")).await.unwrap();
        store.put("a", &Secret::new("3")).await.unwrap();
        let names: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(store.get("a").await.unwrap().unwrap().expose(), "3");
        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
        assert_eq!(store.list("a").await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_different_key_cannot_read_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        LocalSecretStore::open_with_key(&path, &[1; 32])
            .unwrap()
            .put("x", &Secret::new("v"))
            .await
            .unwrap();
        let err = LocalSecretStore::open_with_key(&path, &[2; 32])
            .unwrap()
            .get("x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("master key differs"), "{err}");
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([0u8; 32]),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_key_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

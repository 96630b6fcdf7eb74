//! `AwsSecretStore`: the secret store on AWS Secrets Manager.
//!
//! Every name lives under a prefix (callers use `taskrunner/`), so the store sees only its own
//! secrets and the IAM policy can be scoped to `secret:taskrunner/*` (actions GetSecretValue,
//! CreateSecret, PutSecretValue, RestoreSecret, DescribeSecret, DeleteSecret, and ListSecrets on
//! `*`). Values are kept as `SecretString`; they are never logged and never put in an error
//! message.
//!
//! Differences from the local store: `delete` removes the secret without a recovery window,
//! but Secrets Manager applies that asynchronously, so a `get` right after may briefly still
//! see the value. A secret someone else scheduled for deletion (with a recovery window) reads
//! as absent, is not listed, and `put` restores it before storing the new value.

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};

use super::{port_error, utc};
use crate::ports::{PortError, SecretEntry, SecretStore};
use crate::secret::Secret;

/// The secret store on AWS Secrets Manager.
#[derive(Clone, Debug)]
pub struct AwsSecretStore {
    client: Client,
    prefix: String,
}

impl AwsSecretStore {
    /// A store keeping each secret `name` as the Secrets Manager secret `<prefix><name>`.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Stores a new value in an existing secret, restoring it first when someone scheduled
    /// it for deletion.
    async fn put_value(&self, full_name: &str, value: &Secret) -> Result<(), PortError> {
        match self.send_value(full_name, value).await {
            Err(err) if err.as_service_error().is_some_and(marked_for_deletion) => {
                self.restore(full_name).await?;
                self.send_value(full_name, value)
                    .await
                    .map_err(|err| port_error("secretsmanager:PutSecretValue", err))
            }
            result => result.map_err(|err| port_error("secretsmanager:PutSecretValue", err)),
        }
    }

    async fn send_value(
        &self,
        full_name: &str,
        value: &Secret,
    ) -> Result<(), SdkError<PutSecretValueError, HttpResponse>> {
        self.client
            .put_secret_value()
            .secret_id(full_name)
            .secret_string(value.expose())
            .send()
            .await
            .map(|_| ())
    }

    async fn restore(&self, full_name: &str) -> Result<(), PortError> {
        self.client
            .restore_secret()
            .secret_id(full_name)
            .send()
            .await
            .map_err(|err| port_error("secretsmanager:RestoreSecret", err))?;
        Ok(())
    }
}

/// Whether an error says the secret is scheduled for deletion: Secrets Manager answers
/// `InvalidRequestException` for those ("marked for deletion", "marked deleted"), not
/// "not found".
fn marked_for_deletion<E: ProvideErrorMetadata>(err: &E) -> bool {
    err.code() == Some("InvalidRequestException")
        && err
            .message()
            .is_some_and(|m| m.contains("for deletion") || m.contains("marked deleted"))
}

#[async_trait]
impl SecretStore for AwsSecretStore {
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
        let result = self
            .client
            .get_secret_value()
            .secret_id(self.full_name(name))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(err)
                if err.as_service_error().is_some_and(|service| {
                    service.is_resource_not_found_exception() || marked_for_deletion(service)
                }) =>
            {
                return Ok(None);
            }
            Err(err) => return Err(port_error("secretsmanager:GetSecretValue", err)),
        };
        if let Some(text) = output.secret_string() {
            return Ok(Some(Secret::new(text)));
        }
        // A secret written by another tool may hold binary; accept it when it is text.
        match output.secret_binary() {
            Some(blob) => String::from_utf8(blob.clone().into_inner())
                .map(|text| Some(Secret::new(text)))
                .map_err(|_| {
                    PortError::Permanent(format!(
                        "secret {name:?} holds binary data that is not UTF-8 text; store it again as text"
                    ))
                }),
            None => Ok(None),
        }
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
        // The SDK fills in a `ClientRequestToken`, so its own retries of either call
        // do not store a second version.
        if !self.create(name, value).await? {
            self.put_value(&self.full_name(name), value).await?;
        }
        Ok(())
    }

    /// CreateSecret, which Secrets Manager refuses when the name exists: the one atomic
    /// "store if absent" it offers. A secret scheduled for deletion is restored and kept.
    async fn create(&self, name: &str, value: &Secret) -> Result<bool, PortError> {
        let full_name = self.full_name(name);
        let created = self
            .client
            .create_secret()
            .name(&full_name)
            .secret_string(value.expose())
            .send()
            .await;
        let err = match created {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        match err.as_service_error() {
            Some(service) if service.is_resource_exists_exception() => Ok(false),
            Some(service) if marked_for_deletion(service) => {
                self.restore(&full_name).await?;
                Ok(false)
            }
            _ => Err(port_error("secretsmanager:CreateSecret", err)),
        }
    }

    /// DescribeSecret, then DeleteSecret: a forced delete succeeds whether or not the secret
    /// exists, so only the describe can tell `false` from `true`.
    async fn delete(&self, name: &str) -> Result<bool, PortError> {
        let full_name = self.full_name(name);
        let described = self
            .client
            .describe_secret()
            .secret_id(&full_name)
            .send()
            .await;
        let existed = match described {
            // One scheduled for deletion was already absent from this store's point of view.
            Ok(secret) => secret.deleted_date().is_none(),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_resource_not_found_exception()) =>
            {
                return Ok(false);
            }
            Err(err) => return Err(port_error("secretsmanager:DescribeSecret", err)),
        };
        self.client
            .delete_secret()
            .secret_id(&full_name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .map_err(|err| port_error("secretsmanager:DeleteSecret", err))?;
        Ok(existed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<SecretEntry>, PortError> {
        let wanted = self.full_name(prefix);
        let mut request = self.client.list_secrets().max_results(100);
        // An empty filter value is refused by the API; no prefix at all means every secret.
        if !wanted.is_empty() {
            request = request.filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(&wanted)
                    .build(),
            );
        }
        let mut entries = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let output = request
                .clone()
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|err| port_error("secretsmanager:ListSecrets", err))?;
            for secret in output.secret_list() {
                // The name filter matches case-insensitively; the store's names are exact.
                let Some(name) = secret.name().and_then(|n| n.strip_prefix(&wanted)) else {
                    continue;
                };
                if secret.deleted_date().is_some() {
                    continue;
                }
                let created_at = secret.created_date().map(utc).unwrap_or_default();
                entries.push(SecretEntry {
                    name: format!("{prefix}{name}"),
                    created_at,
                    updated_at: secret.last_changed_date().map(utc).unwrap_or(created_at),
                });
            }
            match output.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_secretsmanager::error::ErrorMetadata;
    use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueOutput;
    use aws_sdk_secretsmanager::operation::restore_secret::RestoreSecretOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::adapters::aws::testing::Moto;

    const CANARY: &str = "canary-token-7f3e9b";

    fn names(entries: &[SecretEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[tokio::test]
    async fn put_get_overwrite_list_and_delete_against_moto() {
        let moto = Moto::start();
        let client = moto.secrets_manager();
        let store = AwsSecretStore::new(client.clone(), "taskrunner/");

        assert!(store.get("git/pat").await.unwrap().is_none());
        store.put("git/pat", &Secret::new(CANARY)).await.unwrap();
        let got = store.get("git/pat").await.unwrap().expect("stored");
        assert_eq!(got.expose(), CANARY);

        // Stored under the prefix, as Secrets Manager sees it.
        let raw = client
            .get_secret_value()
            .secret_id("taskrunner/git/pat")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.secret_string(), Some(CANARY));

        store.put("git/pat", &Secret::new("second")).await.unwrap();
        assert_eq!(
            store.get("git/pat").await.unwrap().unwrap().expose(),
            "second"
        );
        store.put("git/pat", &Secret::new("second")).await.unwrap();

        store.put("git/other", &Secret::new("o")).await.unwrap();
        store.put("callback/t1", &Secret::new("c")).await.unwrap();
        // Outside the store's prefix: never listed.
        client
            .create_secret()
            .name("someone-else/git/x")
            .secret_string("x")
            .send()
            .await
            .unwrap();

        let all = store.list("").await.unwrap();
        assert_eq!(names(&all), ["callback/t1", "git/other", "git/pat"]);
        assert!(all.iter().all(|e| e.updated_at >= e.created_at));
        let git = store.list("git/").await.unwrap();
        assert_eq!(names(&git), ["git/other", "git/pat"]);
        assert!(store.list("nothing/").await.unwrap().is_empty());

        assert!(store.delete("git/pat").await.unwrap());
        assert!(!store.delete("git/pat").await.unwrap());
        assert!(store.get("git/pat").await.unwrap().is_none());
        assert_eq!(names(&store.list("git/").await.unwrap()), ["git/other"]);

        // A secret someone scheduled for deletion reads as absent, and can be stored again.
        client
            .delete_secret()
            .secret_id("taskrunner/git/other")
            .recovery_window_in_days(7)
            .send()
            .await
            .unwrap();
        assert!(store.get("git/other").await.unwrap().is_none());
        assert!(store.list("git/").await.unwrap().is_empty());
        assert!(!store.delete("git/other").await.unwrap());
    }

    #[tokio::test]
    async fn create_keeps_what_is_stored_and_racing_processes_share_one_key() {
        let moto = Moto::start();
        let store = AwsSecretStore::new(moto.secrets_manager(), "taskrunner/");
        assert!(store.create("k/first", &Secret::new("one")).await.unwrap());
        assert!(!store.create("k/first", &Secret::new("two")).await.unwrap());
        assert_eq!(store.get("k/first").await.unwrap().unwrap().expose(), "one");

        // Eight Lambda instances creating the signing key at once (each with its own client):
        // every one of them ends up with the same key.
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = AwsSecretStore::new(moto.secrets_manager(), "taskrunner/");
                tokio::spawn(async move {
                    crate::auth::signing_key(&store, "taskrunner-task-token/key")
                        .await
                        .unwrap()
                        .expose()
                        .to_owned()
                })
            })
            .collect();
        let mut keys = Vec::new();
        for racer in racers {
            keys.push(racer.await.unwrap());
        }
        assert!(
            keys.iter().all(|key| key == &keys[0]),
            "{} keys",
            keys.len()
        );
        assert_eq!(keys[0].len(), 64);
    }

    #[tokio::test]
    async fn values_never_reach_debug_output() {
        let moto = Moto::start();
        let store = AwsSecretStore::new(moto.secrets_manager(), "taskrunner/");
        store.put("k", &Secret::new(CANARY)).await.unwrap();
        let got = store.get("k").await.unwrap();
        assert!(!format!("{got:?}").contains(CANARY), "{got:?}");
        assert!(!format!("{store:?}").contains(CANARY));
    }

    fn no_retries(
        builder: aws_sdk_secretsmanager::config::Builder,
    ) -> aws_sdk_secretsmanager::config::Builder {
        builder.retry_config(aws_sdk_secretsmanager::config::retry::RetryConfig::disabled())
    }

    #[tokio::test]
    async fn throttling_is_transient() {
        let throttled = mock!(Client::get_secret_value).then_error(|| {
            GetSecretValueError::generic(
                ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        });
        let client = mock_client!(
            aws_sdk_secretsmanager,
            RuleMode::Sequential,
            [&throttled],
            no_retries
        );
        let err = AwsSecretStore::new(client, "taskrunner/")
            .get("git/pat")
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("ThrottlingException"), "{err}");
    }

    #[tokio::test]
    async fn access_denied_is_permanent_and_names_the_operation() {
        let exists = mock!(Client::create_secret).then_error(|| {
            CreateSecretError::ResourceExistsException(
                aws_sdk_secretsmanager::types::error::ResourceExistsException::builder().build(),
            )
        });
        let denied = mock!(Client::put_secret_value).then_error(|| {
            PutSecretValueError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform secretsmanager:PutSecretValue")
                    .build(),
            )
        });
        let client = mock_client!(
            aws_sdk_secretsmanager,
            RuleMode::Sequential,
            [&exists, &denied],
            no_retries
        );
        let err = AwsSecretStore::new(client, "taskrunner/")
            .put("git/pat", &Secret::new(CANARY))
            .await
            .unwrap_err();
        assert!(!err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("grant the IAM permission secretsmanager:PutSecretValue"),
            "{text}"
        );
        assert!(!text.contains(CANARY), "{text}");
    }

    /// Secrets Manager refuses to create a name scheduled for deletion; `put` restores it.
    /// (moto does not emulate that refusal, hence a mock.)
    #[tokio::test]
    async fn put_restores_a_secret_scheduled_for_deletion() {
        let scheduled = mock!(Client::create_secret)
            .then_error(|| {
                CreateSecretError::generic(
                    ErrorMetadata::builder()
                        .code("InvalidRequestException")
                        .message("You can't create this secret because a secret with this name is already scheduled for deletion.")
                        .build(),
                )
            });
        let restored = mock!(Client::restore_secret)
            .match_requests(|req| req.secret_id() == Some("taskrunner/git/pat"))
            .then_output(|| RestoreSecretOutput::builder().build());
        let stored = mock!(Client::put_secret_value)
            .match_requests(|req| req.secret_string() == Some(CANARY))
            .then_output(|| PutSecretValueOutput::builder().build());
        let client = mock_client!(
            aws_sdk_secretsmanager,
            RuleMode::Sequential,
            [&scheduled, &restored, &stored],
            no_retries
        );
        AwsSecretStore::new(client, "taskrunner/")
            .put("git/pat", &Secret::new(CANARY))
            .await
            .unwrap();
        assert_eq!(restored.num_calls(), 1);
        assert_eq!(stored.num_calls(), 1);
    }
}

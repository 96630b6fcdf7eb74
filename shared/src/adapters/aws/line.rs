//! `DynamoDbGate`: the task line (the [`ConcurrencyGate`]) in one DynamoDB item, so the AWS
//! deployment queues tasks exactly as the embedded mode does: first come first served, at
//! most `per_key` running per `concurrency_key` and `max_running` in all, never refused.
//!
//! The whole line is one item (`pk = "line"`): the entries as JSON, and a version. Every
//! change is a read (strongly consistent) and a conditional write on that version, retried
//! when another function changed the line in between, so concurrent submits, polls and
//! finishes cannot both take the last slot (optimistic locking, the semaphore pattern on
//! DynamoDB). Submit and PollWorker take a slot before the worker starts, FinishAndCallback
//! frees it on every path, and the cleanup sweep frees the slots of executions that ended
//! without reaching it (stopped, timed out, failed in Step Functions itself).
//!
//! Limit: an item holds at most 400 KB, about 3,000 waiting or running tasks.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::port_error;
use crate::adapters::line::{LineEntry, LineLimits, decide};
use crate::ports::{Admission, ConcurrencyGate, PortError};

/// The item's partition key value.
const LINE_KEY: &str = "line";
/// How many times a change is tried when other writers keep winning.
const MAX_ATTEMPTS: u32 = 25;

/// The task line in a DynamoDB table with a string partition key `pk`.
#[derive(Clone, Debug)]
pub struct DynamoDbGate {
    client: Client,
    table: String,
    limits: LineLimits,
}

/// The line as read: its entries and the version to write over.
struct Read {
    entries: Vec<LineEntry>,
    version: Option<u64>,
}

impl DynamoDbGate {
    /// A line in `table` with these limits.
    pub fn new(client: Client, table: impl Into<String>, limits: LineLimits) -> Self {
        Self {
            client,
            table: table.into(),
            limits,
        }
    }

    async fn read(&self) -> Result<Read, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(LINE_KEY.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| port_error("dynamodb:GetItem", err))?;
        let Some(item) = out.item() else {
            return Ok(Read {
                entries: Vec::new(),
                version: None,
            });
        };
        let version = item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok());
        let entries = match item.get("entries").and_then(|v| v.as_s().ok()) {
            Some(json) => serde_json::from_str(json).map_err(|err| {
                PortError::Permanent(format!(
                    "the task line in DynamoDB table {:?} is not readable ({err}); \
                     delete its item pk=\"line\" to start an empty line",
                    self.table
                ))
            })?,
            None => Vec::new(),
        };
        Ok(Read { entries, version })
    }

    /// Writes `entries` if the line is still at `version`; false when someone else wrote first.
    async fn write(&self, entries: &[LineEntry], version: Option<u64>) -> Result<bool, PortError> {
        let json = serde_json::to_string(entries)
            .map_err(|err| PortError::Permanent(format!("cannot encode the task line: {err}")))?;
        let next = version.map_or(1, |v| v + 1);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(LINE_KEY.into()))
            .item("entries", AttributeValue::S(json))
            .item("version", AttributeValue::N(next.to_string()));
        put = match version {
            Some(version) => put
                .condition_expression("version = :seen")
                .expression_attribute_values(":seen", AttributeValue::N(version.to_string())),
            None => put.condition_expression("attribute_not_exists(pk)"),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(port_error("dynamodb:PutItem", err)),
        }
    }

    /// Applies `change` to the line until the write wins; `change` returns its answer and
    /// whether the line changed.
    async fn update<T>(
        &self,
        mut change: impl FnMut(&mut Vec<LineEntry>) -> (T, bool),
    ) -> Result<T, PortError> {
        for attempt in 0..MAX_ATTEMPTS {
            let Read {
                mut entries,
                version,
            } = self.read().await?;
            let (answer, changed) = change(&mut entries);
            if !changed || self.write(&entries, version).await? {
                return Ok(answer);
            }
            // Another writer won: back off a little, with jitter, and read again.
            let jitter = u64::from(getrandom::u32().unwrap_or(0) % 50);
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
        }
        Err(PortError::Transient(format!(
            "the task line in DynamoDB table {:?} kept changing under {MAX_ATTEMPTS} attempts; will retry",
            self.table
        )))
    }
}

#[async_trait]
impl ConcurrencyGate for DynamoDbGate {
    async fn admit(&self, task_id: &str, key: Option<&str>) -> Result<Admission, PortError> {
        let limits = self.limits;
        self.update(|entries| {
            let mut changed = false;
            match entries.iter().find(|e| e.task_id == task_id) {
                Some(entry) if entry.running => return (Admission::Admitted, false),
                Some(_) => {}
                None => {
                    entries.push(LineEntry {
                        task_id: task_id.to_owned(),
                        key: key.map(str::to_owned),
                        running: false,
                    });
                    changed = true;
                }
            }
            let admission = decide(entries, task_id, limits);
            if admission == Admission::Admitted {
                if let Some(entry) = entries.iter_mut().find(|e| e.task_id == task_id) {
                    entry.running = true;
                }
                changed = true;
            }
            (admission, changed)
        })
        .await
    }

    async fn release(&self, task_id: &str) -> Result<(), PortError> {
        self.update(|entries| {
            let before = entries.len();
            entries.retain(|e| e.task_id != task_id);
            ((), entries.len() != before)
        })
        .await
    }

    async fn running_with_key(&self, key: &str) -> Result<Vec<String>, PortError> {
        Ok(self
            .read()
            .await?
            .entries
            .into_iter()
            .filter(|e| e.running && e.key.as_deref() == Some(key))
            .map(|e| e.task_id)
            .collect())
    }

    async fn holders(&self) -> Result<Vec<String>, PortError> {
        Ok(self
            .read()
            .await?
            .entries
            .into_iter()
            .map(|e| e.task_id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::aws::testing::Moto;

    async fn gate(moto: &Moto, per_key: usize, max_running: Option<usize>) -> DynamoDbGate {
        let client = moto.dynamodb();
        client
            .create_table()
            .table_name("line")
            .attribute_definitions(
                aws_sdk_dynamodb::types::AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                aws_sdk_dynamodb::types::KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        DynamoDbGate::new(
            client,
            "line",
            LineLimits {
                max_running,
                per_key,
            },
        )
    }

    #[tokio::test]
    async fn a_key_runs_one_at_a_time_in_order_and_a_release_lets_the_next_in() {
        let moto = Moto::start();
        let gate = gate(&moto, 1, None).await;
        assert_eq!(
            gate.admit("a", Some("prod")).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            gate.admit("b", Some("prod")).await.unwrap(),
            Admission::Queued { ahead: 0 }
        );
        assert_eq!(
            gate.admit("c", Some("prod")).await.unwrap(),
            Admission::Queued { ahead: 1 }
        );
        // Another key and no key are not held up.
        assert_eq!(
            gate.admit("d", Some("staging")).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(gate.admit("e", None).await.unwrap(), Admission::Admitted);
        // Asking again keeps the place; c cannot jump b.
        assert_eq!(
            gate.admit("a", Some("prod")).await.unwrap(),
            Admission::Admitted
        );
        gate.release("a").await.unwrap();
        assert_eq!(
            gate.admit("c", Some("prod")).await.unwrap(),
            Admission::Queued { ahead: 1 }
        );
        assert_eq!(
            gate.admit("b", Some("prod")).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(gate.running_with_key("prod").await.unwrap(), ["b"]);
        assert_eq!(gate.holders().await.unwrap(), ["b", "c", "d", "e"]);
        gate.release("b").await.unwrap();
        gate.release("b").await.unwrap();
        assert_eq!(
            gate.admit("c", Some("prod")).await.unwrap(),
            Admission::Admitted
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_admits_never_take_more_slots_than_the_limit() {
        let moto = Moto::start();
        let gate = gate(&moto, 2, None).await;
        let admits = (0..8).map(|i| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(&format!("t{i}"), Some("k")).await.unwrap() })
        });
        let mut admitted = 0;
        for admit in admits {
            if admit.await.unwrap() == Admission::Admitted {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        assert_eq!(gate.running_with_key("k").await.unwrap().len(), 2);
        assert_eq!(gate.holders().await.unwrap().len(), 8);
    }
}

//! `DynamoDbTaskTokens`: the AWS [`TaskTokens`]. The newest token of each task is an item
//! `pk = "token#<task id>"` of the task line's table, with a TTL attribute `expires_at`
//! (each re-armed wait writes it again, so only abandoned items expire); resuming reads it
//! back (strongly consistent) and calls Step Functions' `SendTaskSuccess` or
//! `SendTaskFailure`. A token that is no longer waited on (`TaskTimedOut`, `InvalidToken`,
//! `TaskDoesNotExist`: a duplicate or late answer) is "no wait open", not an error.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sfn::error::ProvideErrorMetadata;
use serde_json::Value;

use super::port_error;
use crate::ports::{PortError, TaskTokens};

/// Prefix of the items' partition key, apart from the task line's own item.
const KEY_PREFIX: &str = "token#";
/// How long a kept token's item lives without being written again.
const TTL_SECONDS: i64 = 2 * 24 * 3600;
/// Step Functions' limits on `error` and `cause` of SendTaskFailure.
const MAX_ERROR: usize = 256;
const MAX_CAUSE: usize = 32_768;

/// Error codes of `SendTask*` that mean the token no longer opens a wait.
const CLOSED_CODES: &[&str] = &["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"];

/// Task tokens in DynamoDB, answered through Step Functions.
#[derive(Clone, Debug)]
pub struct DynamoDbTaskTokens {
    dynamodb: aws_sdk_dynamodb::Client,
    sfn: aws_sdk_sfn::Client,
    table: String,
}

fn key(task_id: &str) -> AttributeValue {
    AttributeValue::S(format!("{KEY_PREFIX}{task_id}"))
}

fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `Ok(false)` for an SDK error that says the wait is over, else the error.
fn closed_or<E, R>(
    operation: &str,
    err: aws_sdk_sfn::error::SdkError<E, R>,
) -> Result<bool, PortError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let closed = err
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|code| CLOSED_CODES.contains(&code));
    if closed {
        Ok(false)
    } else {
        Err(port_error(operation, err))
    }
}

impl DynamoDbTaskTokens {
    /// Tokens in `table` (string partition key `pk`), answered with `sfn`.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        sfn: aws_sdk_sfn::Client,
        table: impl Into<String>,
    ) -> Self {
        Self {
            dynamodb,
            sfn,
            table: table.into(),
        }
    }

    async fn token(&self, task_id: &str) -> Result<Option<String>, PortError> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", key(task_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| port_error("dynamodb:GetItem", err))?;
        Ok(out
            .item()
            .and_then(|item| item.get("token"))
            .and_then(|token| token.as_s().ok())
            .cloned())
    }
}

#[async_trait]
impl TaskTokens for DynamoDbTaskTokens {
    async fn keep(&self, task_id: &str, token: &str) -> Result<(), PortError> {
        let expires = chrono::Utc::now().timestamp() + TTL_SECONDS;
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", key(task_id))
            .item("token", AttributeValue::S(token.to_owned()))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .send()
            .await
            .map_err(|err| port_error("dynamodb:PutItem", err))?;
        Ok(())
    }

    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError> {
        let Some(token) = self.token(task_id).await? else {
            return Ok(false);
        };
        match self
            .sfn
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) => closed_or("states:SendTaskSuccess", err),
        }
    }

    async fn fail(&self, task_id: &str, error: &str, cause: &str) -> Result<bool, PortError> {
        let Some(token) = self.token(task_id).await? else {
            return Ok(false);
        };
        match self
            .sfn
            .send_task_failure()
            .task_token(token)
            .error(clip(error, MAX_ERROR))
            .cause(clip(cause, MAX_CAUSE))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) => closed_or("states:SendTaskFailure", err),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
    use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
    use aws_sdk_sfn::error::ErrorMetadata;
    use aws_sdk_sfn::operation::send_task_failure::{SendTaskFailureError, SendTaskFailureOutput};
    use aws_sdk_sfn::operation::send_task_success::{SendTaskSuccessError, SendTaskSuccessOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use serde_json::json;

    use super::*;

    fn stored(token: &'static str) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_dynamodb::Client::get_item)
            .match_requests(|req| {
                req.key().and_then(|k| k.get("pk")) == Some(&key("t1"))
                    && req.consistent_read() == Some(true)
            })
            .then_output(move || {
                GetItemOutput::builder()
                    .item("pk", key("t1"))
                    .item("token", AttributeValue::S(token.into()))
                    .build()
            })
    }

    #[tokio::test]
    async fn keep_writes_the_token_under_the_task_id_with_a_ttl() {
        let put = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|req| {
                let item = req.item().expect("item");
                let expires: i64 = item["expires_at"].as_n().expect("n").parse().expect("int");
                item["pk"] == key("t1")
                    && item["token"] == AttributeValue::S("tok".into())
                    && expires > chrono::Utc::now().timestamp()
            })
            .then_output(|| PutItemOutput::builder().build());
        let tokens = DynamoDbTaskTokens::new(
            mock_client!(aws_sdk_dynamodb, [&put]),
            mock_client!(aws_sdk_sfn, []),
            "line",
        );
        tokens.keep("t1", "tok").await.expect("kept");
        assert_eq!(put.num_calls(), 1);
    }

    #[tokio::test]
    async fn resume_sends_the_output_with_the_kept_token() {
        let get = stored("tok");
        let success = mock!(aws_sdk_sfn::Client::send_task_success)
            .match_requests(|req| {
                req.task_token() == Some("tok") && req.output() == Some(r#"{"done":true}"#)
            })
            .then_output(|| SendTaskSuccessOutput::builder().build());
        let tokens = DynamoDbTaskTokens::new(
            mock_client!(aws_sdk_dynamodb, [&get]),
            mock_client!(aws_sdk_sfn, [&success]),
            "line",
        );
        assert!(
            tokens
                .resume("t1", &json!({"done": true}))
                .await
                .expect("resume")
        );
        assert_eq!(success.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_late_or_duplicate_answer_is_no_wait_open_and_other_errors_are_errors() {
        let get = stored("tok");
        let closed = |code: &'static str| {
            mock!(aws_sdk_sfn::Client::send_task_success).then_error(move || {
                SendTaskSuccessError::generic(ErrorMetadata::builder().code(code).build())
            })
        };
        let (timed_out, invalid, gone) = (
            closed("TaskTimedOut"),
            closed("InvalidToken"),
            closed("TaskDoesNotExist"),
        );
        let denied = mock!(aws_sdk_sfn::Client::send_task_failure).then_error(|| {
            SendTaskFailureError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .build(),
            )
        });
        let tokens = DynamoDbTaskTokens::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&get]),
            mock_client!(
                aws_sdk_sfn,
                RuleMode::Sequential,
                [&timed_out, &invalid, &gone, &denied]
            ),
            "line",
        );
        for _ in 0..3 {
            assert!(!tokens.resume("t1", &json!({})).await.expect("closed"));
        }
        let err = tokens
            .fail("t1", "TaskRunner.Cancelled", "cancelled")
            .await
            .expect_err("denied");
        assert!(err.to_string().contains("states:SendTaskFailure"), "{err}");
    }

    #[tokio::test]
    async fn no_kept_token_is_no_wait_open() {
        let missing = mock!(aws_sdk_dynamodb::Client::get_item)
            .then_output(|| GetItemOutput::builder().build());
        let failure = mock!(aws_sdk_sfn::Client::send_task_failure)
            .then_output(|| SendTaskFailureOutput::builder().build());
        let tokens = DynamoDbTaskTokens::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&missing]),
            mock_client!(aws_sdk_sfn, [&failure]),
            "line",
        );
        assert!(!tokens.resume("t1", &json!({})).await.expect("none"));
        assert!(!tokens.fail("t1", "E", "C").await.expect("none"));
        assert_eq!(failure.num_calls(), 0);
    }
}

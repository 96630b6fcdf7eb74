//! AWS adapters (feature `aws`): Secrets Manager as the [`SecretStore`](crate::ports::SecretStore),
//! Step Functions as the [`Orchestrator`](crate::ports::Orchestrator), CodeBuild builds as the
//! [`WorkerBackend`](crate::ports::WorkerBackend) with logs from CloudWatch Logs, and the task
//! line in DynamoDB as the [`ConcurrencyGate`](crate::ports::ConcurrencyGate), and task tokens
//! in the same table as the [`TaskTokens`](crate::ports::TaskTokens).
//!
//! Each adapter takes a ready SDK client, so the caller decides how it is configured (region,
//! credentials, endpoint); the Lambdas build them once from the environment. SDK errors become
//! [`PortError`](crate::ports::PortError)s in one place (`error`), Transient or Permanent
//! with the operation and the AWS error code in the message.

pub mod codebuild;
mod error;
pub mod http_client;
pub mod line;
pub mod secrets;
pub mod sfn;
#[cfg(test)]
mod testing;
pub mod tokens;

pub(crate) use error::port_error;

use chrono::{DateTime, Utc};

/// An SDK timestamp as a `chrono` one (out-of-range values, which AWS never sends, become the epoch).
pub(crate) fn utc(time: &aws_sdk_sfn::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos()).unwrap_or_default()
}

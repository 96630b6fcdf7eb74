//! `taskrunner verify-callback`: check a received callback's Standard Webhooks signature,
//! for receivers that want to try it by hand or from a script.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use taskrunner::secret::Secret;

use crate::client::read_request;

/// Verifies `body` (a file, or `-` for stdin) against the three headers, with the signing
/// secrets from `TASKRUNNER_CALLBACK_SECRET` (several separated by spaces during a rotation).
pub fn verify_callback(
    body: &Path,
    id: &str,
    timestamp: &str,
    signature: &str,
    tolerance_seconds: u64,
) -> Result<ExitCode> {
    let secrets: Vec<Secret> = std::env::var("TASKRUNNER_CALLBACK_SECRET")
        .context("set TASKRUNNER_CALLBACK_SECRET to the whsec_... signing secret (several separated by spaces)")?
        .split_whitespace()
        .map(Secret::new)
        .collect();
    let body = read_request(body)?;
    match taskrunner::callback::verify(
        (id, timestamp, signature),
        &body,
        &secrets,
        chrono::Utc::now(),
        Duration::from_secs(tolerance_seconds),
    ) {
        Ok(()) => {
            println!("valid: signed by a configured secret, webhook-id {id}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("invalid: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

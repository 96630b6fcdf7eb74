//! `POST /webhooks/{github,gitlab,gitea,bitbucket}`: verify, dedupe, match rules, start.
//!
//! No API key: each host signs its deliveries, and a delivery is verified against the raw
//! body before anything else is read. Answers are fast and 2xx for everything but a bad
//! signature (401), because git hosts disable webhooks that keep failing: an ignored event
//! or a push no rule matches is a 202 whose message says why.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AppState, error_response};
use crate::webhooks::providers::{self, Event};
use crate::webhooks::rules::task_id;
use crate::webhooks::{Provider, verify};

/// The answer to a webhook delivery.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WebhookResponse {
    /// False only when a matched rule's task could not be started.
    pub success: bool,
    /// What was done, or why nothing was.
    pub message: String,
    /// The tasks this delivery started (or had started, on a redelivery).
    pub task_ids: Vec<String>,
}

/// `POST /webhooks/github`.
pub async fn github(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(Provider::Github, state, headers, body).await
}

/// `POST /webhooks/gitlab`.
pub async fn gitlab(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(Provider::Gitlab, state, headers, body).await
}

/// `POST /webhooks/gitea` (Gitea and Forgejo).
pub async fn gitea(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(Provider::Gitea, state, headers, body).await
}

/// `POST /webhooks/bitbucket`.
pub async fn bitbucket(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(Provider::Bitbucket, state, headers, body).await
}

fn answer(status: StatusCode, success: bool, message: String, task_ids: Vec<String>) -> Response {
    (
        status,
        Json(WebhookResponse {
            success,
            message,
            task_ids,
        }),
    )
        .into_response()
}

#[tracing::instrument(name = "webhook", skip_all, fields(provider = %provider, delivery))]
async fn receive(
    provider: Provider,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error_response(
                rejection.status(),
                format!("webhook body could not be read: {rejection}"),
            );
        }
    };
    let config = &state.service.config.webhooks;
    let secret_name = config.secret_name(provider);
    let secret = match state.service.secrets.get(secret_name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            tracing::warn!(secret_name, "webhook refused: no secret configured");
            return error_response(
                StatusCode::UNAUTHORIZED,
                format!(
                    "no {provider} webhook secret is configured on this server; store the secret you gave {provider} with `taskrunner secret set {secret_name}`"
                ),
            );
        }
        Err(err) => return crate::service::ApiError::from(err).into_response(),
    };
    if let Err(why) = verify::verify(provider, &headers, &body, &secret) {
        tracing::warn!(reason = %why, "webhook refused");
        return error_response(StatusCode::UNAUTHORIZED, why);
    }
    let delivery = providers::delivery_id(provider, &headers)
        // Without a delivery id, a resend of the same body is the same delivery.
        .unwrap_or_else(|| hex::encode(&Sha256::digest(&body)[..16]));
    tracing::Span::current().record("delivery", delivery.as_str());

    let pushes = match providers::parse(provider, &headers, &body) {
        Ok(Event::Ping) => return answer(StatusCode::OK, true, "pong".into(), Vec::new()),
        Ok(Event::Ignored(reason)) => {
            tracing::info!(%reason, "webhook ignored");
            return answer(StatusCode::ACCEPTED, true, reason, Vec::new());
        }
        Ok(Event::Push(pushes)) => pushes,
        Err(why) => {
            tracing::warn!(reason = %why, "webhook payload unreadable");
            return answer(
                StatusCode::ACCEPTED,
                false,
                format!("{provider} push payload could not be read: {why}; nothing started"),
                Vec::new(),
            );
        }
    };

    let rules = &config.rules;
    let mut skipped = Vec::new();
    let mut matches = Vec::new();
    for (push_index, push) in pushes.iter().enumerate() {
        if push.deleted {
            skipped.push(format!("{} was deleted: ignored", push.git_ref));
            continue;
        }
        for (rule_index, rule) in rules.iter().enumerate() {
            match rule.matches(provider, push) {
                Ok(()) => matches.push((push_index, rule_index)),
                Err(why) => skipped.push(format!("rule {rule_index} does not match: {why}")),
            }
        }
    }
    if matches.is_empty() {
        let reason = if pushes.is_empty() {
            "the push lists no refs: nothing to run".to_owned()
        } else if rules.is_empty() && skipped.is_empty() {
            "no webhook rules are configured; add [[webhooks.rules]] to the config file".to_owned()
        } else {
            format!("nothing to run: {}", skipped.join("; "))
        };
        tracing::info!(%reason, "webhook matched no rule");
        return answer(StatusCode::ACCEPTED, true, reason, Vec::new());
    }

    let mut task_ids = Vec::new();
    let mut refused = Vec::new();
    let several = matches.len() > 1;
    for (push_index, rule_index) in matches {
        let push = &pushes[push_index];
        let rule = &rules[rule_index];
        let suffix = match (pushes.len() > 1, several) {
            (true, _) => format!("-{push_index}-{rule_index}"),
            (false, true) => format!("-{rule_index}"),
            (false, false) => String::new(),
        };
        let id = task_id(provider, &delivery, &suffix);
        let request = match rule.request(provider, push, &id, &delivery) {
            Ok(request) => request,
            Err(why) => {
                refused.push(format!("rule {rule_index}: {why}"));
                continue;
            }
        };
        match state.service.submit(request.to_string().as_bytes()).await {
            Ok(submitted) => {
                tracing::info!(
                    task_id = %submitted.task_id,
                    existing = submitted.existing,
                    rule = rule_index,
                    concurrency_key = rule.concurrency_key.as_deref().unwrap_or(""),
                    "webhook task"
                );
                task_ids.push(submitted.task_id);
            }
            // The store or engine is unavailable: let the host retry; dedupe makes it safe.
            Err(err) if err.status >= 500 => return err.into_response(),
            Err(err) => refused.push(format!("rule {rule_index}: {}", err.message)),
        }
    }
    let mut message = format!("started {} task(s)", task_ids.len());
    if !refused.is_empty() {
        tracing::warn!(refused = %refused.join("; "), "webhook rule could not start its task");
        message.push_str(&format!(
            "; refused (fix the rule in the config file): {}",
            refused.join("; ")
        ));
    }
    answer(StatusCode::ACCEPTED, refused.is_empty(), message, task_ids)
}

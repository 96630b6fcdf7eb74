//! Real-shaped events for the function binaries: an API Gateway HTTP API (v2) request, the
//! state machine's step payloads, an EventBridge scheduled event.

// Shared by several test crates; each uses a part of it.
#![allow(dead_code)]

use serde_json::{Value, json};

/// An API Gateway v2 request event.
pub fn http_request(method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Value {
    let mut headers = json!({
        "content-type": "application/json",
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "x-forwarded-proto": "https",
    });
    if let Some(key) = key {
        headers["authorization"] = json!(format!("Bearer {key}"));
    }
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "curl/8"},
            "requestId": "req-1",
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "30/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1_796_000_000_000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// An API Gateway v2 request event as the template's `$default` route delivers it.
pub fn default_route_request(
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Value {
    let mut event = http_request(method, path, key, body);
    event["routeKey"] = json!("$default");
    event["requestContext"]["routeKey"] = json!("$default");
    event
}

/// A task spec as the state machine's execution input holds it.
pub fn task(task_id: &str, callback_url: Option<&str>) -> Value {
    json!({
        "task_id": task_id,
        "task_file": "job.sh",
        "worker": {"name": "Small", "cpus": 1, "memory_mib": 2048},
        "env": {"STAGE": "test"},
        "secrets": [{"secret": "GIT_PAT", "env": "GIT_PAT"}],
        "git": [{"remote_url": "https://git.example.com/org/repo.git", "secret_name": "GIT_PAT", "username": "x-access-token",
                 "local_path": "repo", "branch": "main", "commit": null, "sparse_checkout_folders": [], "fetch_depth": 1}],
        "startup_script": null, "log_level": null, "modules_log_level": null, "bypass_ssl_verification": false,
        "callback_url": callback_url, "has_callback_token": false, "terminate_on_completion": true,
        "timeout_seconds": 3600, "email": null, "concurrency_key": null, "cancel_in_progress": false
    })
}

/// `$.run` for a worker (a CodeBuild build id).
pub fn run(build_id: &str, ended: Option<Value>) -> Value {
    json!({
        "worker": {"backend": "codebuild", "id": build_id},
        "submitted_at": "2026-11-30T10:00:00Z",
        "phase": if ended.is_some() { "ended" } else { "pending" },
        "done": ended.is_some(),
        "wait_seconds": 5,
        "polls": 1,
        "ended": ended
    })
}

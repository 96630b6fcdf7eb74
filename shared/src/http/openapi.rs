//! `GET /openapi.json`: the API description, its schemas generated from the Rust types.

use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::listing::{DEFAULT_LIMIT, MAX_LIMIT, TaskList};
use crate::model::{CallbackBody, CallbackReceipt, TaskRunnerRequest, TaskRunnerResponse};
use crate::status::TaskStatus;

use super::tasks::{HistoryResponse, LogsResponse};
use super::webhooks::WebhookResponse;

/// The OpenAPI 3.1 document.
pub async fn document() -> Json<Value> {
    Json(build())
}

/// Builds the document.
pub fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let schema = |name: &str, schema: schemars::Schema| (name.to_owned(), schema.to_value());
    let named = [
        schema(
            "TaskRunnerRequest",
            generator.subschema_for::<TaskRunnerRequest>(),
        ),
        schema(
            "TaskRunnerResponse",
            generator.subschema_for::<TaskRunnerResponse>(),
        ),
        schema("TaskStatus", generator.subschema_for::<TaskStatus>()),
        schema("LogsResponse", generator.subschema_for::<LogsResponse>()),
        schema(
            "HistoryResponse",
            generator.subschema_for::<HistoryResponse>(),
        ),
        schema("TaskList", generator.subschema_for::<TaskList>()),
        schema(
            "WebhookResponse",
            generator.subschema_for::<WebhookResponse>(),
        ),
        schema("CallbackBody", generator.subschema_for::<CallbackBody>()),
        schema(
            "CallbackReceipt",
            generator.subschema_for::<CallbackReceipt>(),
        ),
    ];
    let mut schemas: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    for (name, value) in named {
        if value.get("$ref").is_none() {
            schemas.insert(name, value);
        }
    }
    let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let json_body =
        |name: &str| json!({"content": {"application/json": {"schema": reference(name)}}});
    let error = json!({"description": "refused; message says what is wrong and how to fix it", "content": {"application/json": {"schema": reference("TaskRunnerResponse")}}});
    let webhook = |host: &str| {
        json!({"post": {
            "summary": format!("{host} push webhook: verified by its own signature, dedupes on the delivery id, starts the tasks of matching rules"),
            "security": [],
            "responses": {
                "200": {"description": "ping answered", "content": json_body("WebhookResponse")["content"]},
                "202": {"description": "tasks started, or why the delivery was ignored", "content": json_body("WebhookResponse")["content"]},
                "401": error
            }
        }})
    };
    let task_id = json!({"name": "task_id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}$"}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "taskrunner",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run a .py or .sh task on a worker and POST the result to a callback URL."
        },
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "paths": {
            "/task-runner": {"get": {
                "summary": "List tasks, newest first; pass next_cursor as cursor for the next page",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["running", "queued", "succeeded", "failed", "timed_out", "cancelled", "error"]}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "a page of tasks", "content": json_body("TaskList")["content"]}, "400": error, "401": error}
            }, "post": {
                "summary": "Start a task (idempotent per task_id)",
                "requestBody": json_body("TaskRunnerRequest"),
                "responses": {
                    "202": {"description": "accepted (or the same request accepted before)", "content": json_body("TaskRunnerResponse")["content"]},
                    "400": error, "401": error, "409": error, "413": error, "422": error
                },
                "callbacks": {"result": {"{$request.body#/callback_url}": {"post": {
                    "requestBody": json_body("CallbackBody"),
                    "responses": {"200": {"description": "delivered (any 2xx)"}}
                }}}}
            }},
            "/task-runner/{task_id}": {
                "get": {"summary": "Task status", "parameters": [task_id],
                    "responses": {"200": {"description": "status", "content": json_body("TaskStatus")["content"]}, "401": error, "404": error}},
                "delete": {"summary": "Cancel: the worker is terminated, the callback says cancelled", "parameters": [task_id],
                    "responses": {"200": {"description": "cancelling", "content": json_body("TaskStatus")["content"]}, "401": error, "404": error, "409": error}}
            },
            "/task-runner/{task_id}/logs": {"get": {"summary": "Log tail", "parameters": [task_id,
                    {"name": "max_bytes", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": {"description": "log tail", "content": json_body("LogsResponse")["content"]}, "401": error, "404": error}}},
            "/task-runner/{task_id}/history": {"get": {"summary": "State history: states entered and left, failures with error and cause, oldest first", "parameters": [task_id],
                "responses": {"200": {"description": "history", "content": json_body("HistoryResponse")["content"]}, "401": error, "404": error}}},
            "/sample-task-runner-callback": {"post": {"summary": "Sample callback receiver", "security": [],
                "requestBody": json_body("CallbackBody"),
                "responses": {"200": {"description": "received", "content": json_body("CallbackReceipt")["content"]}}}},
            "/webhooks/github": webhook("GitHub"),
            "/webhooks/gitlab": webhook("GitLab"),
            "/webhooks/gitea": webhook("Gitea and Forgejo"),
            "/webhooks/bitbucket": webhook("Bitbucket Cloud"),
            "/healthz": {"get": {"summary": "Health", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/worker-sizes": {"get": {"summary": "Worker sizes", "security": [], "responses": {"200": {"description": "size table"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}

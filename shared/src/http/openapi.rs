//! `GET /openapi.json`: the API description, its schemas generated from the Rust types.

use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::config::WorkerSize;
use crate::listing::{DEFAULT_LIMIT, MAX_LIMIT, TaskList};
use crate::model::{CallbackBody, CallbackReceipt, TaskRunnerRequest, TaskRunnerResponse};
use crate::status::TaskStatus;

use super::tasks::{HistoryResponse, LogsResponse, MAX_AFTER, MAX_LOG_BYTES};
use super::ui::session::COOKIE;
use super::webhooks::WebhookResponse;

/// What a task id is (see [`crate::task::TaskId`]).
pub const TASK_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,80}$";

/// A stored task's id: a request's, or a child's `PARENT.CHILD` (1-80 characters in all).
const PATH_TASK_ID_PATTERN: &str = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$";

/// How the dashboard's pages treat a request without a session: not refused, sent to log in.
const PAGE_SESSION: &str = "Needs the session cookie; without a valid one the browser is redirected (303) to /ui/login rather than refused.";

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
        schema("WorkerSize", generator.subschema_for::<WorkerSize>()),
        schema(
            "TaskView",
            generator.subschema_for::<super::ui::view::TaskView>(),
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
    let answer = |description: &str, name: &str| json!({"description": description, "content": json_body(name)["content"]});
    let error = |description: &str| answer(description, "TaskRunnerResponse");
    let html = |description: &str| json!({"description": description, "content": {"text/html": {"schema": {"type": "string"}}}});
    let redirect = |description: &str| json!({"description": description, "headers": {"Location": {"schema": {"type": "string"}}}});
    let unauthorized = error("no valid API key: missing, wrong or revoked");
    let forbidden = error("a task token used outside its scope (its own children and descendants)");
    let unavailable = error("the store or the orchestrator failed; 503 is worth retrying");
    let bad_id = error("task_id is not 1-80 characters of [A-Za-z0-9_-], or of PARENT.CHILD");
    let no_task = error("no task with this task_id");
    let session = || json!([{"session": []}]);
    let no_session = error("no valid dashboard session; log in at /ui/login");
    let webhook = |host: &str| {
        json!({"post": {
            "summary": format!("{host} push webhook: verified by its own signature, dedupes on the delivery id, starts the tasks of matching rules"),
            "security": [],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {}}}},
            "responses": {
                "200": answer("ping answered", "WebhookResponse"),
                "202": answer("tasks started, or why the delivery was ignored", "WebhookResponse"),
                "400": error("the body could not be read"),
                "401": error("no webhook secret configured, or the signature does not verify"),
                "413": error("the body is larger than the webhook body limit"),
                "5XX": unavailable
            }
        }})
    };
    let task_id = json!({"name": "task_id", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": PATH_TASK_ID_PATTERN, "minLength": 1, "maxLength": 80}});
    let submit = json!({
        "summary": "Start a task (idempotent per task_id)",
        "requestBody": {"required": true, "content": json_body("TaskRunnerRequest")["content"]},
        "responses": {
            "202": answer("accepted (or the same request accepted before)", "TaskRunnerResponse"),
            "400": error("the body is not JSON"),
            "401": unauthorized, "403": forbidden,
            "409": error("task_id is already used by a different request"),
            "413": error("the body is larger than the request body limit"),
            "422": error("a field is wrong; the message names it and says how to fix it"),
            "5XX": unavailable
        },
        "callbacks": {"result": {"{$request.body#/callback_url}": {"post": {
            "requestBody": json_body("CallbackBody"),
            "responses": {"200": {"description": "delivered (any 2xx)"}}
        }}}}
    });
    let list = json!({
        "summary": "List tasks, newest first; pass next_cursor as cursor for the next page",
        "parameters": [
            {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["running", "queued", "succeeded", "failed", "timed_out", "cancelled", "error"]}},
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "prefix", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
            {"name": "cursor", "in": "query", "schema": {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_-]+$"}}
        ],
        "responses": {
            "200": answer("a page of tasks", "TaskList"),
            "400": error("a query parameter is wrong (the message names it), or the cursor was not handed out by this server"),
            "401": unauthorized, "403": forbidden,
            "5XX": unavailable
        }
    });
    let api_paths = json!({
            "/task-runner": {"get": list, "post": submit},
            "/task-runner/": {"get": list, "post": submit},
            "/task-runner/{task_id}": {
                "get": {"summary": "Task status", "parameters": [task_id],
                    "responses": {"200": answer("status", "TaskStatus"), "400": bad_id, "401": unauthorized, "403": forbidden, "404": no_task, "5XX": unavailable}},
                "delete": {"summary": "Cancel: the worker is terminated, the callback says cancelled", "parameters": [task_id],
                    "responses": {"200": answer("cancelling", "TaskStatus"), "400": bad_id, "401": unauthorized, "403": forbidden, "404": no_task,
                        "409": error("the task has already ended"), "5XX": unavailable}}
            },
            "/task-runner/{task_id}/logs": {"get": {"summary": "Log tail, secret values masked", "parameters": [task_id,
                    {"name": "max_bytes", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_BYTES}}],
                "responses": {"200": answer("log tail", "LogsResponse"),
                    "400": error("task_id or max_bytes is wrong; the message names it"),
                    "401": unauthorized, "403": forbidden, "404": no_task, "5XX": unavailable}}},
            "/task-runner/{task_id}/history": {"get": {"summary": "State history: states entered and left, failures with error and cause, oldest first; with after=N only the events after the N-th", "parameters": [task_id,
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AFTER}}],
                "responses": {"200": answer("history", "HistoryResponse"),
                    "400": error("task_id or after is wrong; the message names it"),
                    "401": unauthorized, "403": forbidden, "404": no_task, "5XX": unavailable}}},
            "/sample-task-runner-callback": {"post": {"summary": "Sample callback receiver: logs the callback body it gets", "security": [],
                "requestBody": {"required": true, "content": json_body("CallbackBody")["content"]},
                "responses": {"200": answer("received", "CallbackReceipt"),
                    "400": error("the body is not JSON"),
                    "413": error("the body is larger than the request body limit"),
                    "422": error("the body is not a callback body; the message names the field")}}},
            "/webhooks/github": webhook("GitHub"),
            "/webhooks/gitlab": webhook("GitLab"),
            "/webhooks/gitea": webhook("Gitea and Forgejo"),
            "/webhooks/bitbucket": webhook("Bitbucket Cloud"),
            "/healthz": {"get": {"summary": "Health", "security": [], "responses": {"200": {"description": "ok",
                "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "required": ["status", "version"],
                    "properties": {"status": {"const": "ok"}, "version": {"type": "string"}}}}}}}}},
            "/worker-sizes": {"get": {"summary": "Worker sizes, by name", "security": [], "responses": {"200": {"description": "size table",
                "content": {"application/json": {"schema": {"type": "object", "additionalProperties": reference("WorkerSize")}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    });
    let ui_paths = json!({
            "/ui": {"get": {"summary": "The dashboard: redirects to /ui/", "security": [], "responses": {"303": redirect("to /ui/")}}},
            "/ui/": {"get": {"summary": "Dashboard: the task list", "description": PAGE_SESSION, "security": [],
                "responses": {"200": html("the task list page"), "303": redirect("no valid session: to /ui/login"), "5XX": unavailable}}},
            "/ui/login": {
                "get": {"summary": "Dashboard login page", "security": [],
                    "responses": {"200": html("the login form"), "303": redirect("already logged in: to /ui/")}},
                "post": {"summary": "Log in with an API key: sets the session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS)", "security": [],
                    "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {
                        "type": "object", "required": ["api_key"], "properties": {"api_key": {"type": "string"}}}}}},
                    "responses": {
                        "303": {"description": "logged in: to /ui/, with the session cookie", "headers": {
                            "Location": {"schema": {"type": "string"}}, "Set-Cookie": {"schema": {"type": "string"}}}},
                        "400": html("the form has no api_key"),
                        "401": html("the API key is not valid"),
                        "5XX": unavailable
                    }}
            },
            "/ui/logout": {"post": {"summary": "Log out: clears the session cookie", "description": PAGE_SESSION, "security": [],
                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "properties": {"csrf_token": {"type": "string"}}}}}},
                "responses": {"303": redirect("to /ui/login (also without a valid session)"), "403": error("missing or wrong CSRF token"), "5XX": unavailable}}},
            "/ui/tasks/{task_id}": {"get": {"summary": "Dashboard: a task's page", "description": PAGE_SESSION, "security": [], "parameters": [task_id],
                "responses": {"200": html("the task page"), "303": redirect("no valid session: to /ui/login"),
                    "400": bad_id, "404": html("no task with this task_id"), "5XX": unavailable}}},
            "/ui/assets/app.js": {"get": {"summary": "The dashboard's script", "security": [],
                "responses": {"200": {"description": "script", "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
            "/ui/assets/style.css": {"get": {"summary": "The dashboard's stylesheet", "security": [],
                "responses": {"200": {"description": "stylesheet", "content": {"text/css": {"schema": {"type": "string"}}}}}}},
            "/ui/api/tasks": {"get": {"summary": "Dashboard: a page of GET /task-runner (100 tasks)", "security": session(),
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["all", "running", "queued", "succeeded", "failed", "timed_out", "cancelled", "error"]}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": {"200": answer("a page of tasks", "TaskList"), "400": error("status or cursor is wrong"), "401": no_session, "5XX": unavailable}}},
            "/ui/api/tasks/{task_id}": {"get": {"summary": "Dashboard: status, history events after the after-th, callback attempts", "security": session(),
                "parameters": [task_id, {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AFTER}}],
                "responses": {"200": answer("the task page's data", "TaskView"),
                    "400": error("task_id or after is wrong"), "401": no_session, "404": no_task, "5XX": unavailable}}},
            "/ui/api/tasks/{task_id}/logs": {"get": {"summary": "Dashboard: the log tail", "security": session(), "parameters": [task_id],
                "responses": {"200": answer("log tail", "LogsResponse"), "400": bad_id, "401": no_session, "404": no_task, "5XX": unavailable}}},
            "/ui/api/tasks/{task_id}/cancel": {"post": {"summary": "Dashboard: cancel; needs the page's CSRF token in X-CSRF-Token", "security": session(),
                "parameters": [task_id, {"name": "X-CSRF-Token", "in": "header", "schema": {"type": "string"}}],
                "responses": {"200": answer("cancelling", "TaskStatus"), "400": bad_id, "401": no_session,
                    "403": error("missing or wrong CSRF token"), "404": no_task, "409": error("the task has already ended"), "5XX": unavailable}}}
    });
    let mut paths = api_paths;
    if let (Some(paths), Value::Object(ui)) = (paths.as_object_mut(), ui_paths) {
        paths.extend(ui);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "taskrunner",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run a .py or .sh task on a worker and POST the result to a callback URL. Every error is a JSON TaskRunnerResponse whose message says what is wrong and how to fix it; a method a route does not have answers 405, an unknown path 404."
        },
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key, or the task token a running task is given (it reaches only that task's children and descendants)"},
                "session": {"type": "apiKey", "in": "cookie", "name": COOKIE, "description": "the dashboard's session cookie, set by POST /ui/login"}
            }
        },
        "paths": paths
    })
}

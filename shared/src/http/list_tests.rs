//! `GET /task-runner`: paging, filters and bad queries, through the router.

use std::collections::HashSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::tests::{KEY, app, send};
use crate::config::Config;

async fn get(router: &axum::Router, path: &str) -> (StatusCode, Value) {
    let request = Request::get(path)
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

async fn submit(router: &axum::Router, id: &str) {
    let body = json!({"task_id": id, "task_file_name": "hello.py", "worker_config": {"worker_size": "Small"}});
    let request = Request::post("/task-runner")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, answer) = send(router, request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}

fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .map(|task| task["task_id"].as_str().expect("task_id").to_owned())
        .collect()
}

#[tokio::test]
async fn paging_shows_every_task_once_while_new_ones_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    for i in 0..250 {
        submit(&router, &format!("old-{i:03}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/task-runner?limit=40&cursor={cursor}"),
            None => "/task-runner?limit=40".to_owned(),
        };
        let (status, page) = get(&router, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        // New tasks arrive between pages.
        submit(&router, &format!("new-{pages:03}")).await;
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let old: Vec<&String> = seen.iter().filter(|id| id.starts_with("old-")).collect();
    let unique: HashSet<&&String> = old.iter().collect();
    assert_eq!(old.len(), 250, "every task exactly once");
    assert_eq!(unique.len(), 250, "no task twice");
    assert_eq!(pages, 7);
    // Newest first.
    assert_eq!(seen.first().map(String::as_str), Some("old-249"));
    assert_eq!(seen.last().map(String::as_str), Some("old-000"));
    let (_, first) = get(&router, "/task-runner?limit=1").await;
    let task = &first["tasks"][0];
    assert_eq!(task["task_id"], "new-006");
    assert_eq!(task["task_name"], "hello.py");
    assert_eq!(task["worker_size"], "Small");
    assert_eq!(task["status"], "starting");
    assert!(task["submitted_at"].is_string() && task["duration_seconds"].is_number());
}

#[tokio::test]
async fn filters_narrow_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    for id in ["build-1", "build-2", "deploy-1"] {
        submit(&router, id).await;
    }
    let (_, page) = get(&router, "/task-runner?prefix=build-").await;
    assert_eq!(ids(&page), ["build-2", "build-1"]);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page) = get(&router, "/task-runner?status=running").await;
    assert_eq!(ids(&page).len(), 3);
    let (_, page) = get(&router, "/task-runner?status=succeeded").await;
    assert!(ids(&page).is_empty());
    let (_, page) = get(&router, "/task-runner?since=2999-01-01T00:00:00Z").await;
    assert!(ids(&page).is_empty());
    let (_, page) = get(&router, "/task-runner?since=2000-01-01T00:00:00Z&limit=2").await;
    assert_eq!(ids(&page), ["deploy-1", "build-2"]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, page) = get(&router, &format!("/task-runner?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page), ["build-1"]);
}

#[tokio::test]
async fn bad_queries_are_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
        ("status=done", "status"),
        ("cursor=%21%21", "cursor"),
        ("cursor=bm9uc2Vuc2U", "cursor"),
    ] {
        let (status, body) = get(&router, &format!("/task-runner?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["success"], false);
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{query}: {message}");
    }
    let request = Request::get("/task-runner").body(Body::empty()).unwrap();
    let (status, _) = send(&router, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

//! `GET /task-runner?limit=50` over 100,000 stored tasks: latency of the first page, of the
//! next pages along a cursor walk, and of status-filtered pages, through the real router and
//! SQLite. Nine tasks in ten have ended (as in a store that has run for a while), so
//! `status=running` has to skip past ended ones.
//!
//! `cargo bench -p taskrunner --bench list` (`LIST_BENCH_TASKS` for another store size)

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use taskrunner::clock::SystemClock;
use taskrunner::config::Config;
use taskrunner::embedded::{Embedded, EmbeddedOptions};
use taskrunner::http::{AppState, router};
use taskrunner::ports::Orchestrator;
use taskrunner::secret::Secret;
use tower::ServiceExt;

const KEY: &str = "bench-key";
const ROUNDS: usize = 1000;

async fn get(router: &axum::Router, path: &str) -> (Duration, Value) {
    let request = Request::get(path)
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .expect("request");
    let started = Instant::now();
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let elapsed = started.elapsed();
    assert!(status.is_success(), "{path}: {status}");
    (elapsed, serde_json::from_slice(&bytes).expect("JSON"))
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "| {name} | {:.2} ms | {:.2} ms | {} |",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

/// `ROUNDS` requests along cursor walks from `first` (restarting at the end).
async fn walk(router: &axum::Router, first: &str) -> Vec<Duration> {
    let mut samples = Vec::new();
    let mut cursor: Option<String> = None;
    while samples.len() < ROUNDS {
        let path = match &cursor {
            Some(cursor) => format!("{first}&cursor={cursor}"),
            None => first.to_owned(),
        };
        let (elapsed, page) = get(router, &path).await;
        assert!(page["tasks"].as_array().is_some_and(|t| !t.is_empty()));
        // The first page of each walk is measured apart.
        if cursor.is_some() {
            samples.push(elapsed);
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    samples
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tasks: usize = std::env::var("LIST_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let embedded = Embedded::open(EmbeddedOptions {
        data_dir: data_dir.clone(),
        config: Config::default(),
        supervisor_program: "/bin/false".into(),
        base_dir: dir.path().to_owned(),
        clock: Arc::new(SystemClock),
    })
    .expect("embedded stack");
    let filling = Instant::now();
    for i in 0..tasks {
        let id = format!("bench-{i:06}");
        let input = json!({"task": {"task_id": id, "task_file": "hello.py", "worker": {"name": "X-Small"}}});
        embedded.engine.start(&id, &input).await.expect("start");
    }
    // Nine in ten have ended; the engine's runner is not started, so nothing moves meanwhile.
    let db = rusqlite::Connection::open(data_dir.join("engine.db")).expect("engine.db");
    db.execute(
        "UPDATE executions SET status = 'SUCCEEDED', current_state = 'Done', stopped_at = started_at + 1000 WHERE rowid % 10 != 0",
        [],
    )
    .expect("end nine in ten");
    drop(db);
    println!(
        "{tasks} tasks stored in {:.1} s (one in ten running)\n",
        filling.elapsed().as_secs_f64()
    );
    let state = Arc::new(AppState {
        api_keys: embedded.api_keys(Some(Secret::new(KEY))),
        service: embedded.service.clone(),
        public_url: None,
    });
    let router = router(state);
    // Warm the page cache and the prepared statements.
    for _ in 0..20 {
        get(&router, "/task-runner?limit=50").await;
    }

    println!("| page of 50 | p50 | p99 | requests |\n|---|---|---|---|");
    let mut first = Vec::new();
    for _ in 0..ROUNDS {
        first.push(get(&router, "/task-runner?limit=50").await.0);
    }
    report("first page", first);
    report(
        "next pages along a cursor walk",
        walk(&router, "/task-runner?limit=50").await,
    );
    let mut running = Vec::new();
    for _ in 0..ROUNDS {
        running.push(get(&router, "/task-runner?limit=50&status=running").await.0);
    }
    report("first page, status=running", running);
    report(
        "next pages, status=running",
        walk(&router, "/task-runner?limit=50&status=running").await,
    );
    let mut prefix = Vec::new();
    for _ in 0..ROUNDS {
        prefix.push(
            get(&router, "/task-runner?limit=50&prefix=bench-0999")
                .await
                .0,
        );
    }
    report("first page, prefix=bench-0999 (the newest 100)", prefix);
    // The worst case: the matching tasks are the oldest, below everything else.
    let mut old = Vec::new();
    for _ in 0..ROUNDS / 10 {
        old.push(
            get(&router, "/task-runner?limit=50&prefix=bench-0000")
                .await
                .0,
        );
    }
    report("first page, prefix=bench-0000 (the oldest 100)", old);
}

//! A callback receiver on loopback that records what it is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One received callback.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl Received {
    /// The body as JSON (panics if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("callback body is JSON")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Statuses to answer, in order; 200 once they run out.
    plan: Vec<u16>,
}

/// The receiver.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    /// Its callback URL.
    pub url: String,
}

impl Receiver {
    /// Starts a receiver answering with `plan` first, then 200.
    pub async fn start(plan: Vec<u16>) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            received: Vec::new(),
            plan,
        }));
        let app = Router::new()
            .route("/callback", post(receive))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { inner, url }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// The callbacks received for `task_id`, once there are at least `count`; panics after
    /// `within`.
    pub async fn callbacks_for(
        &self,
        task_id: &str,
        count: usize,
        within: Duration,
    ) -> Vec<Received> {
        super::eventually(
            within,
            &format!("{count} callback(s) for {task_id}"),
            async || {
                let found: Vec<_> = self
                    .received()
                    .into_iter()
                    .filter(|r| r.json()["task_id"] == task_id)
                    .collect();
                (found.len() >= count).then_some(found)
            },
        )
        .await
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut inner = inner.lock().unwrap();
    inner.received.push(Received { headers, body });
    let status = if inner.plan.is_empty() {
        200
    } else {
        inner.plan.remove(0)
    };
    StatusCode::from_u16(status).unwrap()
}

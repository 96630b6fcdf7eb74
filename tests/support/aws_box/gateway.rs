//! An API Gateway HTTP API stand-in: every request becomes a payload-2.0 event on the
//! `$default` route (the template's only route) for the `api` function, and its answer
//! becomes the HTTP response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::lambda::{Answer, Function};

static REQUESTS: AtomicU64 = AtomicU64::new(1);

/// The HTTP API's address on loopback, taken before the functions start so that the
/// `submit` function can be told the URL tasks reach the API at (as the template tells it).
pub struct Gateway {
    listener: tokio::net::TcpListener,
    /// Its base URL (no trailing `/`).
    pub url: String,
}

impl Gateway {
    /// Takes a loopback port.
    pub async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Self { listener, url }
    }

    /// Serves the HTTP API with the `api` function behind it; its base URL.
    pub fn serve(self, api: Arc<Function>) -> String {
        let app = Router::new().fallback(handle).with_state(api);
        let listener = self.listener;
        tokio::spawn(async move { axum::serve(listener, app).await });
        self.url
    }
}

async fn handle(State(api): State<Arc<Function>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 10 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let event = event(&parts, &body);
    match api.invoke(Bytes::from(event.to_string())).await {
        Answer::Response(answer) => response(&answer),
        // What API Gateway answers when the integration fails.
        Answer::Error(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/json")],
            r#"{"message":"Internal Server Error"}"#,
        )
            .into_response(),
    }
}

/// The payload-2.0 event API Gateway sends for this request.
pub fn event(parts: &axum::http::request::Parts, body: &[u8]) -> Value {
    let mut headers: Map<String, Value> = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = value.to_str().unwrap_or_default();
        if name == "cookie" {
            cookies.extend(value.split("; ").map(|c| json!(c)));
            continue;
        }
        // Repeated headers are joined with commas.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), json!(value));
            }
        }
    }
    let domain = "box.execute-api.us-east-1.amazonaws.com";
    headers.insert("host".into(), json!(domain));
    headers.insert("x-forwarded-proto".into(), json!("https"));
    headers.insert("x-forwarded-for".into(), json!("127.0.0.1"));
    let query = parts.uri.query().unwrap_or_default();
    let mut parameters: Map<String, Value> = Map::new();
    let parsed = reqwest::Url::parse(&format!("http://box/?{query}")).unwrap();
    for (key, value) in parsed.query_pairs() {
        match parameters.get_mut(key.as_ref()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                parameters.insert(key.into_owned(), json!(value));
            }
        }
    }
    let (text, base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = chrono::Utc::now();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.uri.path(),
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "box",
            "domainName": domain,
            "domainPrefix": "box",
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": parts.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": format!("box-{}", REQUESTS.fetch_add(1, Ordering::Relaxed)),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": base64,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !parameters.is_empty() {
        event["queryStringParameters"] = json!(parameters);
    }
    if !body.is_empty() {
        event["body"] = json!(text);
    }
    event
}

/// The HTTP response for the function's payload-2.0 answer.
fn response(answer: &[u8]) -> Response {
    let Ok(answer) = serde_json::from_slice::<Value>(answer) else {
        return (
            axum::http::StatusCode::BAD_GATEWAY,
            "the api function's answer is not JSON",
        )
            .into_response();
    };
    let status = answer["statusCode"].as_u64().unwrap_or(200) as u16;
    let mut response = Response::builder().status(status);
    for (name, value) in answer["headers"].as_object().into_iter().flatten() {
        if let Some(value) = value.as_str() {
            response = response.header(name, value);
        }
    }
    for (name, values) in answer["multiValueHeaders"]
        .as_object()
        .into_iter()
        .flatten()
    {
        for value in values
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            response = response.header(name, value);
        }
    }
    for cookie in answer["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        response = response.header("set-cookie", cookie);
    }
    let body = answer["body"].as_str().unwrap_or_default();
    let body = if answer["isBase64Encoded"] == true {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    response.body(Body::from(body)).unwrap()
}

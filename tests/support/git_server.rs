//! A git server over HTTP (`git http-backend` behind axum) that demands a token, the way
//! GitHub or GitLab do: no or wrong credentials get 401.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

struct Config {
    root: PathBuf,
    user_token: String,
}

/// A running git server.
pub struct GitServer {
    /// Base URL; repositories are `{url}/<name>.git`.
    pub url: String,
}

impl GitServer {
    /// Serves the bare repositories under `root`, accepting only `token` as password.
    pub async fn start(root: &Path, token: &str) -> Self {
        let config = Arc::new(Config {
            root: root.to_owned(),
            user_token: token.to_owned(),
        });
        let app = Router::new().fallback(cgi).with_state(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url }
    }
}

/// Creates `root/<name>.git` holding one commit with `files`.
pub fn create_repository(root: &Path, name: &str, files: &[(&str, &str)]) {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    super::sh(&work, "git", &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let path = work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    super::sh(&work, "git", &["add", "-A"]);
    super::sh(&work, "git", &["commit", "-q", "-m", "initial"]);
    super::sh(
        root,
        "git",
        &[
            "clone",
            "-q",
            "--bare",
            &work.to_string_lossy(),
            &format!("{name}.git"),
        ],
    );
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded);
    text.split_once(':')
        .is_some_and(|(_, password)| password == token)
}

async fn cgi(State(config): State<Arc<Config>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !authorized(&parts.headers, &config.user_token) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"git\""),
            )
            .body(Body::from("authentication required"))
            .unwrap();
    }
    let body: Bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &config.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.unwrap();
    let _ = writer.await;
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, gap)) = split else {
        return Response::builder()
            .status(500)
            .body(Body::from("bad CGI output"))
            .unwrap();
    };
    let mut response = Response::builder().status(200);
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("Status") {
                let code = value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500u16);
                response = response.status(code);
            } else {
                response = response.header(name.trim(), value);
            }
        }
    }
    response
        .body(Body::from(raw[end + gap..].to_vec()))
        .unwrap()
}

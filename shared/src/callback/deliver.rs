//! One callback attempt: POST the body, read the status, say whether retrying makes sense.

use std::error::Error as _;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::redirect;
use url::Url;

use super::CallbackPolicy;
use super::guard::check_callback_url;
use super::resolve::{ForbiddenHost, GuardedResolver};
use super::sign::sign;
use crate::model::CallbackBody;
use crate::secret::Secret;

/// The most of a refusing receiver's answer kept in [`DeliveryError::Rejected`].
const BODY_SNIPPET_BYTES: usize = 512;

const USER_AGENT_VALUE: &str = concat!("taskrunner/", env!("CARGO_PKG_VERSION"));

/// One callback to send.
pub struct Delivery<'a> {
    /// The caller's `callback_url`.
    pub url: &'a str,
    /// The task's result, sent as one JSON object.
    pub body: &'a CallbackBody,
    /// Sent as `Authorization: Bearer <token>` when given.
    pub bearer_token: Option<&'a Secret>,
    /// Standard Webhooks `webhook-id`: the same on every retry of this callback.
    pub message_id: &'a str,
    /// `whsec_<base64>` secrets; one signature each (several during a rotation). None: unsigned.
    pub signing_secrets: &'a [Secret],
    /// The attempt's time, sent as `webhook-timestamp`.
    pub timestamp: DateTime<Utc>,
}

/// Why a callback was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The callback cannot be sent as asked (URL or address refused by the SSRF guard,
    /// malformed URL, unusable token or signing secret). Retrying cannot help.
    #[error("callback refused (retrying cannot help): {0}")]
    Refused(String),
    /// The receiver answered, but not with 2xx (3xx included: redirects are never followed).
    #[error(
        "callback receiver answered HTTP {status} instead of a 2xx{hint}; it said: {body:?}",
        hint = redirect_hint(*status)
    )]
    Rejected {
        /// The HTTP status received.
        status: u16,
        /// The start of the receiver's answer, at most 512 bytes.
        body: String,
    },
    /// No answer: connection refused, DNS failure, TLS error or timeout. Worth retrying.
    #[error("callback receiver unreachable (worth retrying): {0}")]
    Unreachable(String),
}

/// Redirects are refused rather than followed, so a 3xx needs a word on what to change.
fn redirect_hint(status: u16) -> &'static str {
    if (300..400).contains(&status) {
        " (redirects are not followed: point callback_url at the final address)"
    } else {
        ""
    }
}

/// The HTTP status a [`DeliveryError::Rejected`] message names, read back from the text the
/// execution history keeps as the failed attempt's cause.
pub fn rejected_status(message: &str) -> Option<u16> {
    let rest = message.split_once("callback receiver answered HTTP ")?.1;
    rest.split(' ').next()?.parse().ok()
}

impl DeliveryError {
    /// True when retrying the same delivery cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Refused(_))
    }
}

/// Sends callbacks through one HTTP client that follows no redirect, uses no proxy and
/// connects only to addresses the [`CallbackPolicy`] allows.
///
/// The client is built at the first callback, not with the sender: building it loads the
/// system's root certificates, which a Lambda function that never calls back (poll-worker,
/// submit) should not pay for at every cold start.
pub struct CallbackSender {
    client: OnceLock<reqwest::Client>,
    policy: Arc<CallbackPolicy>,
}

impl CallbackSender {
    /// A sender enforcing `policy`; its HTTP client is built when first needed.
    pub fn new(policy: CallbackPolicy) -> Self {
        Self {
            client: OnceLock::new(),
            policy: Arc::new(policy),
        }
    }

    /// The HTTP client, built at the first call. Fails only when the TLS backend cannot be
    /// set up (no usable root certificates, for instance); the next call tries again.
    fn client(&self) -> Result<&reqwest::Client, DeliveryError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .timeout(self.policy.timeout)
            .no_proxy()
            .dns_resolver(GuardedResolver::new(Arc::clone(&self.policy)))
            .user_agent(USER_AGENT_VALUE)
            .build()
            .map_err(|e| {
                DeliveryError::Unreachable(format!(
                    "cannot build the callback HTTP client (are the system's root \
                     certificates installed?): {}",
                    chain(&e)
                ))
            })?;
        Ok(self.client.get_or_init(|| client))
    }

    /// The policy this sender enforces.
    pub fn policy(&self) -> &CallbackPolicy {
        &self.policy
    }

    /// Sends one attempt. `Ok` carries the 2xx status received.
    pub async fn deliver(&self, delivery: Delivery<'_>) -> Result<u16, DeliveryError> {
        // Literal addresses never reach the resolver, so the URL itself is checked here too.
        let url = check_callback_url(delivery.url, &self.policy).map_err(DeliveryError::Refused)?;
        let body = serde_json::to_vec(delivery.body).map_err(|e| {
            DeliveryError::Refused(format!("the callback body cannot be serialized: {e}"))
        })?;
        let headers = headers(&delivery, &body)?;
        let target = origin(&url);
        let id = delivery.message_id;

        let response = self
            .client()?
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.send_error(&target, e))?;
        let status = response.status();
        if status.is_success() {
            tracing::info!(url = %target, webhook_id = id, status = status.as_u16(), "callback delivered");
            return Ok(status.as_u16());
        }
        let body = snippet(response).await;
        tracing::warn!(url = %target, webhook_id = id, status = status.as_u16(), "callback rejected by the receiver");
        Err(DeliveryError::Rejected {
            status: status.as_u16(),
            body,
        })
    }

    fn send_error(&self, target: &str, error: reqwest::Error) -> DeliveryError {
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(forbidden) = cause.downcast_ref::<ForbiddenHost>() {
                return DeliveryError::Refused(forbidden.to_string());
            }
            source = cause.source();
        }
        if error.is_timeout() {
            return DeliveryError::Unreachable(format!(
                "{target} did not answer within {} s",
                self.policy.timeout.as_secs_f64()
            ));
        }
        // The URL is left out of the message: its path or query may hold a token.
        DeliveryError::Unreachable(format!("{target}: {}", chain(&error.without_url())))
    }
}

/// The request headers: content type, bearer token and the Standard Webhooks headers.
fn headers(delivery: &Delivery<'_>, body: &[u8]) -> Result<HeaderMap, DeliveryError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    if let Some(token) = delivery.bearer_token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                DeliveryError::Refused(
                    "callback_url_token holds characters not allowed in an HTTP header; \
                     give a token of visible ASCII characters"
                        .to_owned(),
                )
            })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    if delivery.signing_secrets.is_empty() {
        return Ok(headers);
    }
    let timestamp = delivery.timestamp.timestamp();
    let signatures = delivery
        .signing_secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            sign(delivery.message_id, timestamp, body, secret).map_err(|e| {
                DeliveryError::Refused(format!("callback signing secret #{}: {e}", i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = HeaderValue::from_str(delivery.message_id).map_err(|_| {
        DeliveryError::Refused(format!(
            "webhook-id {:?} is not a valid HTTP header value",
            delivery.message_id
        ))
    })?;
    headers.insert("webhook-id", id);
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    let signature = HeaderValue::from_str(&signatures.join(" ")).map_err(|_| {
        DeliveryError::Refused("webhook-signature is not a valid header".to_owned())
    })?;
    headers.insert("webhook-signature", signature);
    Ok(headers)
}

/// `scheme://host:port` of a URL, for messages and logs.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The start of a response body, at most [`BODY_SNIPPET_BYTES`], read no further than that.
async fn snippet(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(BODY_SNIPPET_BYTES);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    // A multi-byte character cut at the limit became U+FFFD, which may push past the limit.
    while text.len() > BODY_SNIPPET_BYTES {
        text.pop();
    }
    text
}

/// An error and its causes, joined with `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Bytes;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{any, post};
    use serde_json::Value;
    use tokio::net::TcpListener;

    use super::*;
    use crate::callback::sign::verify;
    use crate::ports::Outcome;

    const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    async fn serve(router: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    /// A receiver on 127.0.0.1 that records each request and answers `status`.
    async fn receiver(status: StatusCode, answer: &'static str) -> (SocketAddr, Seen) {
        let seen: Seen = Arc::default();
        let record = Arc::clone(&seen);
        let router = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| async move {
                record.lock().unwrap().push((headers, body));
                (status, answer)
            }),
        );
        (serve(router).await, seen)
    }

    fn body() -> CallbackBody {
        let finished_at = DateTime::from_timestamp(1_700_000_060, 0).unwrap();
        CallbackBody {
            task_name: "build.sh".to_owned(),
            task_id: "task-1".to_owned(),
            success: false,
            logs: "line \"one\"\nline two\n".to_owned(),
            status: Outcome::Failed,
            exit_code: Some(2),
            reason: None,
            started_at: DateTime::from_timestamp(1_700_000_000, 0),
            finished_at,
            duration_seconds: Some(60.0),
            logs_truncated: false,
            children: Vec::new(),
        }
    }

    fn sender(policy: CallbackPolicy) -> CallbackSender {
        CallbackSender::new(policy)
    }

    async fn send(
        sender: &CallbackSender,
        url: &str,
        token: Option<&Secret>,
        secrets: &[Secret],
    ) -> Result<u16, DeliveryError> {
        let body = body();
        sender
            .deliver(Delivery {
                url,
                body: &body,
                bearer_token: token,
                message_id: "task-1.callback",
                signing_secrets: secrets,
                timestamp: Utc::now(),
            })
            .await
    }

    fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn delivers_a_signed_json_object_with_the_bearer_token() {
        let (addr, seen) = receiver(StatusCode::OK, r#"{"success": true, "message": "ok"}"#).await;
        let token = Secret::new("callback-token-1");
        let secrets = vec![
            Secret::new(SIGNING_SECRET),
            Secret::new("whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="),
        ];
        let url = format!("http://{addr}/hook");

        let status = send(
            &sender(CallbackPolicy::default()),
            &url,
            Some(&token),
            &secrets,
        )
        .await
        .unwrap();

        assert_eq!(status, 200);
        let seen = seen.lock().unwrap();
        let (headers, raw) = &seen[0];
        let json: Value = serde_json::from_slice(raw).unwrap();
        assert!(json.is_object(), "body must be a JSON object, got {json}");
        assert_eq!(
            serde_json::from_value::<CallbackBody>(json.clone()).unwrap(),
            body()
        );
        assert_eq!(json["task_name"], "build.sh");
        assert_eq!(json["status"], "failed");
        assert_eq!(json["exit_code"], 2);
        assert_eq!(header(headers, "content-type"), "application/json");
        assert_eq!(header(headers, "authorization"), "Bearer callback-token-1");
        assert!(header(headers, "user-agent").starts_with("taskrunner/"));
        assert_eq!(header(headers, "webhook-id"), "task-1.callback");
        let signature = header(headers, "webhook-signature");
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        let received = (
            header(headers, "webhook-id"),
            header(headers, "webhook-timestamp"),
            signature,
        );
        // Each secret alone verifies: a receiver mid-rotation holds either one.
        for secret in &secrets {
            verify(
                received,
                raw,
                std::slice::from_ref(secret),
                Utc::now(),
                Duration::from_secs(60),
            )
            .unwrap();
        }
    }

    #[tokio::test]
    async fn unsigned_delivery_has_no_webhook_headers() {
        let (addr, seen) = receiver(StatusCode::NO_CONTENT, "").await;
        let url = format!("http://{addr}/hook");
        assert_eq!(
            send(&sender(CallbackPolicy::default()), &url, None, &[])
                .await
                .unwrap(),
            204
        );
        let seen = seen.lock().unwrap();
        let headers = &seen[0].0;
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("webhook-signature").is_none());
        assert!(headers.get("webhook-id").is_none());
    }

    #[tokio::test]
    async fn a_server_error_is_rejected_with_its_status_and_a_short_body() {
        let long_answer: &'static str = "x".repeat(2000).leak();
        let (addr, _) = receiver(StatusCode::INTERNAL_SERVER_ERROR, long_answer).await;
        let url = format!("http://{addr}/hook");
        match send(&sender(CallbackPolicy::default()), &url, None, &[]).await {
            Err(e @ DeliveryError::Rejected { status: 500, .. }) => {
                assert!(!e.is_permanent());
                let DeliveryError::Rejected { body, .. } = e else {
                    unreachable!()
                };
                assert_eq!(body.len(), 512);
            }
            other => panic!("expected Rejected 500, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let target_hits = Arc::new(AtomicUsize::new(0));
        let hits = Arc::clone(&target_hits);
        let target = serve(Router::new().route(
            "/{*path}",
            any(move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }),
        ))
        .await;
        let location = format!("http://{target}/elsewhere");
        let redirecting =
            serve(Router::new().route(
                "/hook",
                post(move || async move {
                    (StatusCode::FOUND, [("location", location)]).into_response()
                }),
            ))
            .await;
        let url = format!("http://{redirecting}/hook");

        let result = send(&sender(CallbackPolicy::default()), &url, None, &[]).await;

        assert!(
            matches!(result, Err(DeliveryError::Rejected { status: 302, .. })),
            "{result:?}"
        );
        let message = result.unwrap_err().to_string();
        assert!(message.contains("redirects are not followed"), "{message}");
        assert_eq!(target_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_unreachable() {
        let addr = serve(Router::new().route(
            "/hook",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                StatusCode::OK
            }),
        ))
        .await;
        let policy = CallbackPolicy {
            timeout: Duration::from_millis(200),
            ..CallbackPolicy::default()
        };
        let url = format!("http://{addr}/hook");
        match send(&sender(policy), &url, None, &[]).await {
            Err(e @ DeliveryError::Unreachable(_)) => assert!(!e.is_permanent()),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        // Bind then drop a listener to find a port nothing listens on.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://{addr}/hook?token=query-canary");
        match send(&sender(CallbackPolicy::default()), &url, None, &[]).await {
            Err(DeliveryError::Unreachable(message)) => {
                assert!(!message.contains("query-canary"), "{message}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn literal_loopback_is_refused_before_sending_when_not_allowed() {
        let (addr, seen) = receiver(StatusCode::OK, "").await;
        for url in [
            format!("http://{addr}/hook"),
            format!("http://[::ffff:127.0.0.1]:{}/hook", addr.port()),
        ] {
            match send(&sender(CallbackPolicy::strict()), &url, None, &[]).await {
                Err(e @ DeliveryError::Refused(_)) => {
                    assert!(e.is_permanent());
                    assert!(e.to_string().contains("loopback"), "{e}");
                }
                other => panic!("{url}: expected Refused, got {other:?}"),
            }
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn localhost_is_refused_at_send_time_unless_allowed() {
        let (addr, seen) = receiver(StatusCode::OK, "").await;
        let url = format!("http://localhost:{}/hook", addr.port());
        // The name passes the submit-time check; its addresses are checked when resolved.
        assert!(check_callback_url(&url, &CallbackPolicy::strict()).is_ok());

        match send(&sender(CallbackPolicy::strict()), &url, None, &[]).await {
            Err(e @ DeliveryError::Refused(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains("localhost") && message.contains("loopback"),
                    "{message}"
                );
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert!(seen.lock().unwrap().is_empty());

        let by_name = CallbackPolicy {
            allow_hosts: vec!["LOCALHOST".to_owned()],
            ..CallbackPolicy::strict()
        };
        assert_eq!(send(&sender(by_name), &url, None, &[]).await.unwrap(), 200);
        let by_flag = CallbackPolicy::default();
        assert_eq!(send(&sender(by_flag), &url, None, &[]).await.unwrap(), 200);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bad_urls_tokens_and_secrets_are_refused_as_permanent() {
        let (addr, seen) = receiver(StatusCode::OK, "").await;
        let sender = sender(CallbackPolicy::default());
        let url = format!("http://{addr}/hook");
        let cases = [
            send(&sender, "http://user:pw@example.com/", None, &[]).await,
            send(&sender, "not a url", None, &[]).await,
            send(&sender, &url, Some(&Secret::new("bad\ntoken")), &[]).await,
            send(&sender, &url, None, &[Secret::new("whsec_***")]).await,
        ];
        for result in cases {
            match result {
                Err(e) => assert!(e.is_permanent(), "{e}"),
                Ok(status) => panic!("delivered with {status}"),
            }
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn the_status_is_read_back_from_the_message() {
        let err = DeliveryError::Rejected {
            status: 503,
            body: "busy".into(),
        };
        assert_eq!(rejected_status(&err.to_string()), Some(503));
        let err = DeliveryError::Unreachable("connection refused".into());
        assert_eq!(rejected_status(&err.to_string()), None);
    }
}

//! The web dashboard at `/ui/`: login, the task list, and a page per task with its state
//! machine, events, live log and callback attempts.
//!
//! Served by the same router as the API, so it works under `taskrunner serve` and behind
//! API Gateway. Everything it needs is compiled in; it loads nothing from elsewhere (the
//! Content-Security-Policy says so too). The browser holds a signed session cookie, never
//! the API key ([`session`]); the dashboard's own JSON routes under `/ui/api/` take that
//! cookie, and the one that changes something (cancel) also wants the session's CSRF token
//! in `X-CSRF-Token`.

mod graph;
mod page;
pub mod session;
pub(super) mod view;

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::listing::{ListQuery, RawListQuery};
use crate::secret::Secret;
use crate::service::ApiError;

use super::tasks::{MAX_AFTER, log_tail, query_number};
use super::{AppState, error_response};
use graph::Graph;
use session::{COOKIE, Session, SessionKey};

/// The dashboard's state: the API's, plus the session key once loaded.
struct Ui {
    app: Arc<AppState>,
    key: OnceCell<SessionKey>,
    graph_svg: String,
}

impl Ui {
    async fn key(&self) -> Result<&SessionKey, Response> {
        self.key
            .get_or_try_init(|| SessionKey::load(&*self.app.service.secrets))
            .await
            .map_err(|err| ApiError::from(err).into_response())
    }

    /// The request's session, if its cookie is valid.
    async fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, Response> {
        let Some(cookie) = cookie_value(headers) else {
            return Ok(None);
        };
        Ok(self.key().await?.verify(&cookie, Utc::now()))
    }
}

/// The dashboard's routes, to merge into the API router.
pub fn routes(app: Arc<AppState>) -> Router<Arc<AppState>> {
    let graph_svg = match Graph::from_asl(crate::embedded::STATE_MACHINE) {
        Ok(graph) => graph.svg(),
        Err(err) => format!(r#"<p class="error">{}</p>"#, page::escape(&err)),
    };
    let ui = Arc::new(Ui {
        app,
        key: OnceCell::new(),
        graph_svg,
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(list_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/tasks/{task_id}", get(task_page))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/api/tasks", get(api_list))
        .route("/ui/api/tasks/{task_id}", get(api_task))
        .route("/ui/api/tasks/{task_id}/logs", get(api_logs))
        .route("/ui/api/tasks/{task_id}/cancel", post(api_cancel))
        .with_state(ui)
}

/// A page that needs a session: without one, the browser is sent to the login page.
struct PageSession(Session);

impl FromRequestParts<Arc<Ui>> for PageSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Self, Response> {
        match ui.session(&parts.headers).await? {
            Some(session) => Ok(PageSession(session)),
            None => Err(Redirect::to("/ui/login").into_response()),
        }
    }
}

/// A dashboard JSON route: without a session, 401.
struct ApiSession(Session);

impl FromRequestParts<Arc<Ui>> for ApiSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Self, Response> {
        match ui.session(&parts.headers).await? {
            Some(session) => Ok(ApiSession(session)),
            None => Err(error_response(
                StatusCode::UNAUTHORIZED,
                "no valid dashboard session (missing, expired or not signed by this server); log in at /ui/login".into(),
            )),
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether the browser reached us over HTTPS (directly, or through API Gateway or a proxy).
fn over_https(app: &AppState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok());
    forwarded == Some("https") || app.base_url(headers).starts_with("https://")
}

fn set_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An HTML page, with headers that keep it from loading anything from elsewhere, being framed
/// or cached.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn login_page(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    match ui.session(&headers).await {
        Ok(Some(_)) => Redirect::to("/ui/").into_response(),
        _ => html(StatusCode::OK, page::login(None)),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    api_key: String,
}

async fn login(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            page::login(Some(
                "The form must carry api_key; enter your API key below.",
            )),
        );
    };
    let key = Secret::new(form.api_key.trim());
    let header = format!("Bearer {}", key.expose());
    let name = match ui.app.api_keys.check(Some(&header)).await {
        Ok(name) => name,
        Err(_) => {
            return html(
                StatusCode::UNAUTHORIZED,
                page::login(Some(
                    "That API key is not valid (wrong, or revoked). Check it and try again.",
                )),
            );
        }
    };
    let session_key = match ui.key().await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let cookie = match session_key.open(&name, Utc::now()) {
        Ok(cookie) => cookie,
        Err(err) => return ApiError::from(err).into_response(),
    };
    tracing::info!(api_key = %name, "dashboard login");
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(
            &cookie,
            session::LIFETIME.num_seconds(),
            over_https(&ui.app, &headers),
        ),
    );
    response
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

async fn logout(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    PageSession(session): PageSession,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let key = match ui.key().await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let token = form.map(|Form(form)| form.csrf_token).unwrap_or_default();
    if !key.csrf_ok(&session, &token) {
        return csrf_refused();
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie("", 0, over_https(&ui.app, &headers)),
    );
    response
}

fn csrf_refused() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token; send the page's csrf-token in the X-CSRF-Token header (reload the page to get a fresh one)".into(),
    )
}

async fn list_page(State(ui): State<Arc<Ui>>, PageSession(session): PageSession) -> Response {
    match ui.key().await {
        Ok(key) => html(StatusCode::OK, page::task_list(&key.csrf_token(&session))),
        Err(response) => response,
    }
}

async fn task_page(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Response {
    // A malformed id is refused before the session is looked at: no login makes it valid.
    if let Err(why) = crate::task::TaskId::parse(&task_id) {
        return ApiError::new(400, format!("task_id: {why}")).into_response();
    }
    let session = match ui.session(&headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return Redirect::to("/ui/login").into_response(),
        Err(response) => return response,
    };
    let key = match ui.key().await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let execution = match ui.app.service.orchestrator.describe(&task_id).await {
        Ok(execution) => execution,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let summary = execution.as_ref().and_then(view::request_summary);
    let parent = execution
        .as_ref()
        .and_then(|execution| execution.input.pointer("/task/parent_task_id"))
        .and_then(serde_json::Value::as_str);
    let children = match &execution {
        Some(execution) => {
            match crate::chain::children(ui.app.service.orchestrator.as_ref(), execution).await {
                Ok(children) => children,
                Err(err) => return ApiError::from(err).into_response(),
            }
        }
        None => Vec::new(),
    };
    let status = if execution.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    html(
        status,
        page::task_page(
            &key.csrf_token(&session),
            &task_id,
            summary.as_ref(),
            &ui.graph_svg,
            &page::Family {
                parent,
                children: &children,
            },
        ),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
}

/// How many tasks a page of the list shows.
const LIST_LIMIT: &str = "100";

/// A page of the list API (`GET /task-runner`), for the session instead of an API key.
async fn api_list(
    State(ui): State<Arc<Ui>>,
    _session: ApiSession,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "query string: {}; use status and cursor, each once",
                    rejection.body_text()
                ),
            );
        }
    };
    let raw = RawListQuery {
        status: query.status.filter(|status| status != "all"),
        limit: Some(LIST_LIMIT.to_owned()),
        cursor: query.cursor.filter(|cursor| !cursor.is_empty()),
        ..RawListQuery::default()
    };
    let listed = match ListQuery::parse(&raw) {
        Ok(parsed) => ui.app.service.list(&parsed).await,
        Err(err) => Err(err),
    };
    match listed {
        Ok(page) => Json(page).into_response(),
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct TaskParams {
    after: Option<String>,
}

/// The task page's refresh: the status and only the history events it has not seen.
async fn api_task(
    State(ui): State<Arc<Ui>>,
    _session: ApiSession,
    Path(task_id): Path<String>,
    query: Result<Query<TaskParams>, QueryRejection>,
) -> Response {
    let after = match query_number(query, "after", |q| q.after, 0, MAX_AFTER) {
        Ok(after) => after.unwrap_or(0),
        Err(err) => return err.into_response(),
    };
    let service = &ui.app.service;
    let status = match service.status(&task_id).await {
        Ok(status) => status,
        Err(err) => return err.into_response(),
    };
    let skipped = usize::try_from(after).unwrap_or(usize::MAX);
    let (execution, events) = match tokio::try_join!(
        service.orchestrator.describe(&task_id),
        service.orchestrator.history_after(&task_id, skipped)
    ) {
        Ok((Some(execution), events)) => (execution, events),
        Ok((None, _)) => {
            return ApiError::new(404, format!("no task with task_id {task_id:?}")).into_response();
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    Json(view::task_view(status, &execution, after, &events)).into_response()
}

async fn api_logs(
    State(ui): State<Arc<Ui>>,
    _session: ApiSession,
    Path(task_id): Path<String>,
) -> Response {
    let service = &ui.app.service;
    log_tail(service, task_id, service.config.log_tail_bytes).await
}

async fn api_cancel(
    State(ui): State<Arc<Ui>>,
    ApiSession(session): ApiSession,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Response {
    let key = match ui.key().await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let token = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !key.csrf_ok(&session, token) {
        return csrf_refused();
    }
    tracing::info!(task_id, api_key = %session.key_name, "cancel from the dashboard");
    match ui.app.service.cancel(&task_id).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests;

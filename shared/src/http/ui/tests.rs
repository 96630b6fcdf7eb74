use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::super::tests::{KEY, app};
use crate::config::Config;

async fn get(router: &axum::Router, path: &str, cookie: Option<&str>) -> axum::response::Response {
    let mut request = Request::builder().uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn login(router: &axum::Router, key: &str, proto: &str) -> axum::response::Response {
    let request = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", proto)
        .body(Body::from(format!("api_key={key}")))
        .unwrap();
    router.clone().oneshot(request).await.unwrap()
}

fn session_cookie(response: &axum::response::Response) -> String {
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_login_opens_a_session_that_never_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());

    let response = get(&router, "/ui/", None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/login");
    assert!(
        text(get(&router, "/ui/login", None).await)
            .await
            .contains("API key")
    );

    let refused = login(&router, "wrong", "http").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(header::SET_COOKIE).is_none());

    let response = login(&router, KEY, "http").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(KEY),
        "the cookie must not hold the key: {set}"
    );
    let cookie = session_cookie(&response);
    let page = text(get(&router, "/ui/", Some(&cookie)).await).await;
    assert!(
        page.contains("Tasks") && page.contains("csrf-token"),
        "{page}"
    );
}

#[tokio::test]
async fn the_cookie_is_secure_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    let response = login(&router, KEY, "https").await;
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    let response = login(&router, KEY, "http").await;
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(!set.contains("Secure"), "{set}");
}

#[tokio::test]
async fn forged_cookies_and_cancels_without_the_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    let cookie = session_cookie(&login(&router, KEY, "http").await);

    let forged = format!("{cookie}x");
    let response = get(&router, "/ui/api/tasks", Some(&forged)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(text(response).await.contains("log in"));
    assert_eq!(
        get(&router, "/ui/api/tasks", Some(&cookie)).await.status(),
        StatusCode::OK
    );

    let cancel = |token: Option<&str>| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/ui/api/tasks/t-1/cancel")
            .header(header::COOKIE, &cookie);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        router.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    let response = cancel(None).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(text(response).await.contains("X-CSRF-Token"));
    assert_eq!(
        cancel(Some("nope")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_task_page_refresh_carries_only_the_events_it_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = app(dir.path(), Config::default());
    let submit = Request::builder()
        .method("POST")
        .uri("/task-runner")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from(super::super::tests::valid().to_string()))
        .unwrap();
    let accepted = router.clone().oneshot(submit).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let cookie = session_cookie(&login(&router, KEY, "http").await);
    let json = |response| async move {
        serde_json::from_str::<serde_json::Value>(&text(response).await).unwrap()
    };

    let first = json(get(&router, "/ui/api/tasks/t-1?after=0", Some(&cookie)).await).await;
    let total = first["events_total"].as_u64().unwrap();
    assert!(total >= 1, "{first}");
    assert_eq!(first["events"][0]["id"], 1);
    assert_eq!(first["events"][0]["event_type"], "ExecutionStarted");

    let next = format!("/ui/api/tasks/t-1?after={total}");
    let later = json(get(&router, &next, Some(&cookie)).await).await;
    assert!(later["events_total"].as_u64().unwrap() >= total);
    let ids: Vec<u64> = later["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_u64().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id > total), "{later}");
    assert_eq!(later["status"]["task_id"], "t-1");

    let bad = get(&router, "/ui/api/tasks/t-1?after=x", Some(&cookie)).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

//! Each provider's push payload, reduced to [`Push`]es; its delivery id; its event kind.
//!
//! Payloads are read leniently (only the fields used here), so a host adding fields, or
//! leaving optional ones out, changes nothing.

use axum::http::HeaderMap;
use serde_json::Value;

use super::{Provider, Push, header, is_zero_commit};

/// What a verified delivery asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A connectivity check (GitHub `ping`, Bitbucket `diagnostics:ping`).
    Ping,
    /// An event this server does not act on, and why.
    Ignored(String),
    /// Pushed refs (Bitbucket may report several in one delivery).
    Push(Vec<Push>),
}

/// The delivery's id, as the provider sends it; the same on a redelivery.
pub fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::Github => &["x-github-delivery"],
        Provider::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
        Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        Provider::Bitbucket => &["x-request-uuid"],
    };
    names
        .iter()
        .find_map(|name| header(headers, name))
        .map(str::to_owned)
}

/// Reads a verified delivery. `Err` says why the payload cannot be read.
pub fn parse(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    match provider {
        Provider::Github => {
            let kind = header(headers, "x-github-event").unwrap_or("");
            match kind {
                "ping" => Ok(Event::Ping),
                "push" => github_style(&payload(headers, body)?).map(Event::Push),
                other => Ok(ignored(provider, "X-GitHub-Event", other, "push")),
            }
        }
        Provider::Gitea => {
            let kind = header(headers, "x-gitea-event")
                .or_else(|| header(headers, "x-forgejo-event"))
                .unwrap_or("");
            match kind {
                "push" => github_style(&json(body)?).map(Event::Push),
                other => Ok(ignored(provider, "X-Gitea-Event", other, "push")),
            }
        }
        Provider::Gitlab => {
            let kind = header(headers, "x-gitlab-event").unwrap_or("");
            match kind {
                "Push Hook" | "Tag Push Hook" => gitlab(&json(body)?).map(Event::Push),
                other => Ok(ignored(
                    provider,
                    "X-Gitlab-Event",
                    other,
                    "Push Hook or Tag Push Hook",
                )),
            }
        }
        Provider::Bitbucket => {
            let kind = header(headers, "x-event-key").unwrap_or("");
            match kind {
                "diagnostics:ping" => Ok(Event::Ping),
                "repo:push" => bitbucket(&json(body)?).map(Event::Push),
                other => Ok(ignored(provider, "X-Event-Key", other, "repo:push")),
            }
        }
    }
}

fn ignored(provider: Provider, header: &str, kind: &str, wanted: &str) -> Event {
    let kind = if kind.is_empty() { "(none)" } else { kind };
    Event::Ignored(format!(
        "{provider} event {header}: {kind} is ignored; only {wanted} events start tasks"
    ))
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|err| format!("the payload is not JSON ({err})"))
}

/// GitHub sends JSON, or `payload=<JSON>` form-encoded when the hook's content type is
/// `application/x-www-form-urlencoded`.
fn payload(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let form = header(headers, "content-type")
        .is_some_and(|kind| kind.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return json(body);
    }
    let inner = url::form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| value.into_owned())
        .ok_or("the form-encoded body has no payload field")?;
    json(inner.as_bytes())
}

fn text(value: &Value, path: &[&str]) -> Option<String> {
    let mut value = value;
    for key in path {
        value = value.get(key)?;
    }
    value.as_str().map(str::to_owned).filter(|s| !s.is_empty())
}

fn required(value: &Value, path: &[&str]) -> Result<String, String> {
    text(value, path).ok_or_else(|| format!("the payload has no {}", path.join(".")))
}

/// Added, modified and removed paths of the payload's `commits`, each once, in order.
fn changed_paths(payload: &Value) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for commit in payload
        .get("commits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for kind in ["added", "modified", "removed"] {
            for path in commit
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !paths.iter().any(|seen| seen == path) {
                    paths.push(path.to_owned());
                }
            }
        }
    }
    paths
}

/// GitHub and Gitea/Forgejo push payloads share their shape.
fn github_style(payload: &Value) -> Result<Vec<Push>, String> {
    let commit = required(payload, &["after"])?;
    let deleted =
        payload.get("deleted").and_then(Value::as_bool) == Some(true) || is_zero_commit(&commit);
    Ok(vec![Push {
        repository: required(payload, &["repository", "full_name"])?,
        clone_url: text(payload, &["repository", "clone_url"]),
        git_ref: required(payload, &["ref"])?,
        commit,
        deleted,
        changed_paths: changed_paths(payload),
    }])
}

fn gitlab(payload: &Value) -> Result<Vec<Push>, String> {
    let after = required(payload, &["after"])?;
    let checkout = text(payload, &["checkout_sha"]);
    let deleted = is_zero_commit(&after);
    Ok(vec![Push {
        repository: required(payload, &["project", "path_with_namespace"])?,
        clone_url: text(payload, &["project", "git_http_url"])
            .or_else(|| text(payload, &["repository", "git_http_url"])),
        git_ref: required(payload, &["ref"])?,
        commit: checkout.unwrap_or(after),
        deleted,
        changed_paths: changed_paths(payload),
    }])
}

/// Bitbucket Cloud: one entry in `push.changes` per ref; no file lists.
fn bitbucket(payload: &Value) -> Result<Vec<Push>, String> {
    let repository = required(payload, &["repository", "full_name"])?;
    let clone_url = text(payload, &["repository", "links", "html", "href"])
        .map(|href| format!("{}.git", href.trim_end_matches('/')));
    let changes = payload
        .get("push")
        .and_then(|push| push.get("changes"))
        .and_then(Value::as_array)
        .ok_or("the payload has no push.changes")?;
    let mut pushes = Vec::new();
    for change in changes {
        let side = match change.get("new").filter(|new| !new.is_null()) {
            Some(new) => new,
            // Deleted: the ref survives only in `old`.
            None => change.get("old").unwrap_or(&Value::Null),
        };
        let name = required(side, &["name"])?;
        let prefix = match text(side, &["type"]).as_deref() {
            Some("tag" | "annotated_tag") => "refs/tags/",
            _ => "refs/heads/",
        };
        let deleted = change.get("new").is_none_or(Value::is_null)
            || change.get("closed").and_then(Value::as_bool) == Some(true);
        pushes.push(Push {
            repository: repository.clone(),
            clone_url: clone_url.clone(),
            git_ref: format!("{prefix}{name}"),
            commit: text(side, &["target", "hash"]).unwrap_or_default(),
            deleted,
            changed_paths: Vec::new(),
        });
    }
    Ok(pushes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::webhooks::test_headers as headers;

    const SHA: &str = "1111111111111111111111111111111111111111";

    #[test]
    fn github_json_and_form_payloads_are_the_same_push() {
        let payload = json!({
            "ref": "refs/heads/main", "after": SHA, "deleted": false,
            "repository": {"full_name": "acme/app", "clone_url": "https://github.com/acme/app.git"},
            "commits": [{"added": ["a.py"], "modified": ["src/b.rs"], "removed": []},
                        {"added": [], "modified": ["src/b.rs"], "removed": ["c.txt"]}]
        });
        let json_body = payload.to_string();
        let form_body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &json_body)
            .finish();
        let push = parse(
            Provider::Github,
            &headers(&[("x-github-event", "push")]),
            json_body.as_bytes(),
        )
        .unwrap();
        let form = parse(
            Provider::Github,
            &headers(&[
                ("x-github-event", "push"),
                ("content-type", "application/x-www-form-urlencoded"),
            ]),
            form_body.as_bytes(),
        )
        .unwrap();
        assert_eq!(push, form);
        let Event::Push(pushes) = push else { panic!() };
        assert_eq!(pushes[0].repository, "acme/app");
        assert_eq!(pushes[0].commit, SHA);
        assert_eq!(pushes[0].short_ref(), "main");
        assert_eq!(pushes[0].changed_paths, ["a.py", "src/b.rs", "c.txt"]);
    }

    #[test]
    fn gitlab_pins_checkout_sha_and_sees_deletions() {
        let body = json!({
            "object_kind": "push", "ref": "refs/heads/main",
            "after": SHA, "checkout_sha": SHA,
            "project": {"path_with_namespace": "group/sub/app", "git_http_url": "https://gitlab.com/group/sub/app.git"},
            "commits": []
        });
        let event = parse(
            Provider::Gitlab,
            &headers(&[("x-gitlab-event", "Push Hook")]),
            body.to_string().as_bytes(),
        )
        .unwrap();
        let Event::Push(pushes) = event else { panic!() };
        assert_eq!(pushes[0].repository, "group/sub/app");
        assert!(!pushes[0].deleted);
        let mut deleted = body.clone();
        deleted["after"] = json!("0".repeat(40));
        deleted["checkout_sha"] = Value::Null;
        let Event::Push(pushes) = parse(
            Provider::Gitlab,
            &headers(&[("x-gitlab-event", "Push Hook")]),
            deleted.to_string().as_bytes(),
        )
        .unwrap() else {
            panic!()
        };
        assert!(pushes[0].deleted);
    }

    #[test]
    fn bitbucket_changes_become_refs() {
        let body = json!({
            "repository": {"full_name": "ws/app", "links": {"html": {"href": "https://bitbucket.org/ws/app"}}},
            "push": {"changes": [
                {"new": {"type": "branch", "name": "main", "target": {"hash": SHA}}, "old": null, "closed": false},
                {"new": {"type": "tag", "name": "v1", "target": {"hash": SHA}}, "old": null, "closed": false},
                {"new": null, "old": {"type": "branch", "name": "gone", "target": {"hash": SHA}}, "closed": true}
            ]}
        });
        let Event::Push(pushes) = parse(
            Provider::Bitbucket,
            &headers(&[("x-event-key", "repo:push")]),
            body.to_string().as_bytes(),
        )
        .unwrap() else {
            panic!()
        };
        let refs: Vec<_> = pushes
            .iter()
            .map(|p| (p.git_ref.as_str(), p.deleted))
            .collect();
        assert_eq!(
            refs,
            [
                ("refs/heads/main", false),
                ("refs/tags/v1", false),
                ("refs/heads/gone", true)
            ]
        );
        assert_eq!(
            pushes[0].clone_url.as_deref(),
            Some("https://bitbucket.org/ws/app.git")
        );
    }

    #[test]
    fn other_events_and_delivery_ids() {
        let event = parse(
            Provider::Github,
            &headers(&[("x-github-event", "issues")]),
            b"{}",
        )
        .unwrap();
        assert!(matches!(event, Event::Ignored(reason) if reason.contains("issues")));
        assert_eq!(
            parse(
                Provider::Github,
                &headers(&[("x-github-event", "ping")]),
                b"{}"
            ),
            Ok(Event::Ping)
        );
        assert!(
            parse(
                Provider::Gitea,
                &headers(&[("x-forgejo-event", "push")]),
                b"nope"
            )
            .unwrap_err()
            .contains("not JSON")
        );
        let gitlab = headers(&[("x-gitlab-event-uuid", "u-1"), ("idempotency-key", "k-1")]);
        assert_eq!(
            delivery_id(Provider::Gitlab, &gitlab).as_deref(),
            Some("k-1")
        );
        let forgejo = headers(&[("x-forgejo-delivery", "f-1")]);
        assert_eq!(
            delivery_id(Provider::Gitea, &forgejo).as_deref(),
            Some("f-1")
        );
        assert_eq!(delivery_id(Provider::Bitbucket, &HeaderMap::new()), None);
    }
}

//! The dashboard's HTML: small server-rendered shells; the script in `assets/app.js` fills
//! in what changes, with `textContent` only, so no task data is ever parsed as HTML.

use std::fmt::Write as _;

use super::view::RequestSummary;
use crate::chain::ChildRef;

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, csrf: Option<&str>, body: &str) -> String {
    let (meta, header) = match csrf {
        Some(token) => (
            format!(r#"<meta name="csrf-token" content="{}">"#, escape(token)),
            format!(
                r#"<form method="post" action="/ui/logout" class="logout"><input type="hidden" name="csrf_token" value="{}"><button type="submit" id="logout">Log out</button></form>"#,
                escape(token)
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
{meta}<title>{title} · taskrunner</title><link rel="stylesheet" href="/ui/assets/style.css"></head>
<body><header><a href="/ui/" class="brand">taskrunner</a>{header}</header><main>
{body}
</main><script src="/ui/assets/app.js"></script></body></html>"#,
        title = escape(title)
    )
}

/// The login page, with an error line when a key was refused.
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|message| {
            format!(
                r#"<p class="error" id="login-error">{}</p>"#,
                escape(message)
            )
        })
        .unwrap_or_default();
    layout(
        "Log in",
        None,
        &format!(
            r#"<section class="login" id="login-page"><h1>Log in</h1>
<p>Enter an API key once; the browser then keeps a session cookie (it never holds the key).</p>
{error}<form method="post" action="/ui/login">
<label for="api_key">API key</label>
<input type="password" id="api_key" name="api_key" autocomplete="current-password" required autofocus>
<button type="submit" id="login">Log in</button></form></section>"#
        ),
    )
}

/// Statuses the list can be filtered by.
pub const FILTERS: [&str; 7] = [
    "all",
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
];

/// The task list.
pub fn task_list(csrf: &str) -> String {
    let mut filters = String::new();
    for filter in FILTERS {
        let _ = write!(
            filters,
            r#"<button type="button" class="filter" data-status="{filter}">{}</button>"#,
            filter.replace('_', " ")
        );
    }
    layout(
        "Tasks",
        Some(csrf),
        &format!(
            r#"<section id="task-list-page"><h1>Tasks</h1>
<nav class="filters" aria-label="status filter">{filters}</nav>
<p class="muted" id="list-note">Loading…</p>
<table id="tasks"><thead><tr><th>Task id</th><th>Status</th><th>Task</th><th>Size</th><th>Submitted</th><th>Duration</th></tr></thead><tbody></tbody></table>
<p><a id="older" href="/ui/" hidden>Older tasks →</a></p>
</section>"#
        ),
    )
}

/// The task page: summary (static), graph (static drawing, highlighted by the script),
/// and the parts the script keeps up to date.
pub fn task_page(
    csrf: &str,
    task_id: &str,
    summary: Option<&RequestSummary>,
    graph_svg: &str,
    family: &Family<'_>,
) -> String {
    let family = family_html(family);
    let mut facts = String::new();
    if let Some(summary) = summary {
        let mut row = |name: &str, value: &str| {
            let _ = write!(facts, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(value));
        };
        row("Task file", &summary.task_file);
        row("Worker size", &summary.worker);
        row("Time limit", &format!("{} s", summary.timeout_seconds));
        let none = || "none".to_owned();
        let list = |items: &[String]| {
            if items.is_empty() {
                none()
            } else {
                items.join("\n")
            }
        };
        row("Repositories", &list(&summary.repositories));
        row("Secrets (names)", &list(&summary.secrets));
        row("Environment (names)", &list(&summary.env_names));
        row(
            "Callback",
            &match &summary.callback_url {
                Some(url) if summary.callback_token => format!("{url} (with a bearer token)"),
                Some(url) => url.clone(),
                None => none(),
            },
        );
    }
    layout(
        task_id,
        Some(csrf),
        &format!(
            r#"<section id="task-page" data-task-id="{id}">
<p><a href="/ui/">← all tasks</a></p>
<h1><span>{id}</span> <span class="badge" id="task-status">…</span></h1>
<p id="task-facts" class="muted"></p>
<p><button type="button" id="cancel" class="danger" hidden>Cancel task</button> <span id="action-note" class="muted"></span></p>
<div class="columns">
<div><h2>State machine</h2><div id="graph">{graph_svg}</div></div>
<div><h2>Request</h2><dl id="summary">{facts}</dl>
{family}
<h2>Callback attempts</h2>
<table id="callbacks"><thead><tr><th>Time</th><th>Result</th><th>HTTP status / error</th><th>webhook-id</th></tr></thead><tbody></tbody></table>
<p class="muted" id="callbacks-note"></p></div>
</div>
<h2>Log <span class="muted" id="log-note"></span></h2>
<pre id="log" tabindex="0"></pre>
<h2>Events <span class="muted" id="events-note"></span></h2>
<table id="events"><thead><tr><th>Time</th><th>Event</th><th>State</th><th>Detail</th></tr></thead><tbody></tbody></table>
</section>"#,
            id = escape(task_id)
        ),
    )
}

/// A task's place in a chain: the task that started it and the tasks it started.
#[derive(Default)]
pub struct Family<'a> {
    /// The parent's id, for a child task.
    pub parent: Option<&'a str>,
    /// The children, in the order they were started.
    pub children: &'a [ChildRef],
}

/// The chain as links: up to the parent, down to each child with its status (as of the
/// page's load). Nothing for a task outside any chain.
fn family_html(family: &Family<'_>) -> String {
    let link = |id: &str| format!(r#"<a href="/ui/tasks/{id}">{id}</a>"#, id = escape(id));
    let mut html = String::new();
    if let Some(parent) = family.parent {
        let _ = write!(
            html,
            "<h2>Started by</h2><p id=\"parent\">{}</p>",
            link(parent)
        );
    }
    if !family.children.is_empty() {
        html.push_str("<h2>Children</h2><ul id=\"children\">");
        for child in family.children {
            let _ = write!(
                html,
                r#"<li>{} <span class="badge">{}</span></li>"#,
                link(&child.task_id),
                escape(&child.status)
            );
        }
        html.push_str("</ul>");
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_data_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let page = task_page("t", "<script>", None, "", &Family::default());
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
    }

    #[test]
    fn a_chained_task_links_to_its_parent_and_children() {
        let children = [ChildRef {
            task_id: "deploy-1.train".into(),
            status: "running".into(),
        }];
        let family = Family {
            parent: Some("deploy-1"),
            children: &children,
        };
        let page = task_page("t", "deploy-1.eval", None, "", &family);
        assert!(page.contains(r#"<a href="/ui/tasks/deploy-1">deploy-1</a>"#));
        assert!(page.contains(r#"<a href="/ui/tasks/deploy-1.train">deploy-1.train</a> <span class="badge">running</span>"#));
        let alone = task_page("t", "x", None, "", &Family::default());
        assert!(!alone.contains("Children") && !alone.contains("Started by"));
    }
}

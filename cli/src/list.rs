//! `taskrunner list`: the tasks a server knows, newest first, as an aligned table.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::ApiArgs;
use crate::client::Api;

/// What `taskrunner list` was asked for.
pub struct ListArgs {
    /// Only tasks with this status.
    pub status: Option<String>,
    /// How many tasks.
    pub limit: usize,
    /// Redraw every two seconds until interrupted.
    pub watch: bool,
    /// Print the API's JSON instead of a table.
    pub json: bool,
}

/// `taskrunner list`.
pub async fn list(args: &ListArgs, api: &ApiArgs) -> Result<ExitCode> {
    let api = Api::new(api)?;
    let mut path = format!("/task-runner?limit={}", args.limit);
    if let Some(status) = &args.status {
        path.push_str(&format!("&status={status}"));
    }
    let colour = std::io::stdout().is_terminal();
    loop {
        let page = api.expect_ok(reqwest::Method::GET, &path, None).await?;
        let text = if args.json {
            format!("{}\n", serde_json::to_string_pretty(&page)?)
        } else {
            table(&page, Utc::now(), colour)
        };
        let mut out = std::io::stdout().lock();
        if args.watch && colour {
            // Home the cursor and clear the screen, so the table redraws in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub(crate) fn colour_of(status: &str) -> &'static str {
    match status {
        "succeeded" => "\x1b[32m",
        "failed" | "error" | "timed_out" => "\x1b[31m",
        "cancelled" => "\x1b[90m",
        _ => "\x1b[33m",
    }
}

fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(since) = since else {
        return "-".into();
    };
    span((now - since).num_seconds().max(0) as f64)
}

pub(crate) fn span(seconds: f64) -> String {
    let s = seconds.round() as i64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The list answer as an aligned table: id, status, task, size, age, duration.
fn table(page: &Value, now: DateTime<Utc>, colour: bool) -> String {
    let text = |task: &Value, key: &str| task[key].as_str().unwrap_or("-").to_owned();
    let mut rows = vec![[
        "ID".to_owned(),
        "STATUS".to_owned(),
        "TASK".to_owned(),
        "SIZE".to_owned(),
        "AGE".to_owned(),
        "DURATION".to_owned(),
    ]];
    for task in page["tasks"].as_array().into_iter().flatten() {
        let submitted = task["submitted_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        rows.push([
            text(task, "task_id"),
            text(task, "status"),
            text(task, "task_name"),
            text(task, "worker_size"),
            age(submitted, now),
            task["duration_seconds"]
                .as_f64()
                .map(span)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let pad = widths[column] - cell.chars().count();
            let last = column == row.len() - 1;
            if column == 1 && index > 0 && colour {
                let _ = write!(line, "{}{cell}\x1b[0m", colour_of(cell));
            } else {
                line.push_str(cell);
            }
            if !last {
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("no tasks\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_is_aligned_and_plain_off_a_terminal() {
        let now: DateTime<Utc> = "2026-01-31T10:00:00Z".parse().unwrap();
        let page = json!({"tasks": [
            {"task_id": "build-12", "status": "running", "task_name": "build.sh", "worker_size": "Small",
             "submitted_at": "2026-01-31T09:58:30Z", "duration_seconds": 90.0},
            {"task_id": "t1", "status": "succeeded", "task_name": "hello.py", "worker_size": "Large",
             "submitted_at": "2026-01-30T08:00:00Z", "duration_seconds": 4.2}
        ], "next_cursor": null});
        assert_eq!(
            table(&page, now, false),
            "ID        STATUS     TASK      SIZE   AGE    DURATION\n\
             build-12  running    build.sh  Small  1m30s  1m30s\n\
             t1        succeeded  hello.py  Large  1d2h   4s\n"
        );
        assert!(table(&page, now, true).contains("\x1b[32msucceeded\x1b[0m"));
        assert_eq!(
            table(&json!({"tasks": []}), now, false),
            "ID  STATUS  TASK  SIZE  AGE  DURATION\nno tasks\n"
        );
    }
}

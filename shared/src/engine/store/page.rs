//! Paging through executions, newest first, for the list API.
//!
//! A page token is the position of the page's last execution (`started_at` in milliseconds
//! and the name). The next page starts strictly below it in `(started_at, name)` order, which
//! the `executions_by_start_name` index serves (`executions_by_status_start_name` with a status
//! filter, so a rare status is not found by skipping every other one), so a page costs the same
//! however deep it is, and executions started meanwhile (all above the position) never shift
//! later pages.

use rusqlite::ToSql;

use super::{Store, ms, status_text};
use crate::engine::error::EngineError;
use crate::ports::{ExecutionPage, PageQuery};

/// Where a page stopped.
#[derive(Debug, PartialEq, Eq)]
struct Position {
    started_ms: i64,
    name: String,
}

impl Position {
    fn parse(token: &str) -> Result<Self, EngineError> {
        let invalid = || EngineError::InvalidToken(token.to_owned());
        let (started, name) = token.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            started_ms: started.parse().map_err(|_| invalid())?,
            name: name.to_owned(),
        })
    }

    fn token(&self) -> String {
        format!("{}.{}", self.started_ms, self.name)
    }
}

/// The least text above every text starting with `prefix`: its last character replaced by
/// the next one (names compare as UTF-8 bytes, which is code point order), so `PARENT.`
/// ends at `PARENT/`. None when the last character has no next one.
fn prefix_end(prefix: &str) -> Option<String> {
    let last = prefix.chars().next_back()?;
    let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32)?;
    let mut end = prefix[..prefix.len() - last.len_utf8()].to_owned();
    end.push(next);
    Some(end)
}

impl Store {
    /// One page of executions matching `query`, newest first.
    pub async fn page(&self, query: &PageQuery) -> Result<ExecutionPage, EngineError> {
        let mut conditions: Vec<&str> = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Send>> = Vec::new();
        if let Some(status) = query.status {
            conditions.push("status = ?");
            args.push(Box::new(status_text(status)));
        }
        if let Some(since) = query.since {
            conditions.push("started_at >= ?");
            args.push(Box::new(ms(since)));
        }
        if let Some(prefix) = query.prefix.as_deref().filter(|p| !p.is_empty()) {
            // A range of the name index, not LIKE (`%` and `_` in a prefix stay literal) nor a
            // scan comparing each name's start.
            conditions.push("name >= ?");
            args.push(Box::new(prefix.to_owned()));
            match prefix_end(prefix) {
                Some(end) => {
                    conditions.push("name < ?");
                    args.push(Box::new(end));
                }
                None => {
                    conditions.push("substr(name, 1, ?) = ?");
                    args.push(Box::new(
                        i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX),
                    ));
                    args.push(Box::new(prefix.to_owned()));
                }
            }
        }
        if let Some(token) = &query.token {
            let after = Position::parse(token)?;
            conditions.push("(started_at, name) < (?, ?)");
            args.push(Box::new(after.started_ms));
            args.push(Box::new(after.name));
        }
        let limit = query.limit.max(1);
        // One more than asked tells whether another page follows.
        args.push(Box::new(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let clause = format!("{filter} ORDER BY started_at DESC, name DESC LIMIT ?");
        let mut executions = self.views(clause, args).await?;
        let more = executions.len() > limit;
        executions.truncate(limit);
        let next_token = match executions.last() {
            Some(last) if more => Some(
                Position {
                    started_ms: ms(last.started_at),
                    name: last.name.clone(),
                }
                .token(),
            ),
            _ => None,
        };
        Ok(ExecutionPage {
            executions,
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_a_position() {
        let position = Position::parse("1700000000000.build-1.2").expect("parses");
        assert_eq!(position.started_ms, 1_700_000_000_000);
        assert_eq!(position.name, "build-1.2");
        assert_eq!(position.token(), "1700000000000.build-1.2");
        assert!(Position::parse("nonsense").is_err());
        assert!(Position::parse("x.name").is_err());
    }

    #[test]
    fn a_prefix_ends_before_its_last_character_s_successor() {
        assert_eq!(prefix_end("deploy-1.").as_deref(), Some("deploy-1/"));
        assert_eq!(prefix_end("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_end("x\u{d7ff}").as_deref(), Some("x\u{e000}"));
        assert_eq!(prefix_end("x\u{10ffff}"), None);
    }
}

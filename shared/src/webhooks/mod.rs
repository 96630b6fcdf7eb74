//! Git-host webhooks: a push to GitHub, GitLab, Gitea/Forgejo or Bitbucket starts the tasks
//! that the configured rules map its repository, ref and changed paths to.
//!
//! Each concern is its own module: [`verify`] checks a delivery's signature against the raw
//! body, [`providers`] turns each host's payload into [`Push`]es, and [`rules`] decides
//! which rules a push matches and builds the task request a match starts. The HTTP handler
//! (`http::webhooks`) ties them together; starting goes through the ordinary idempotent
//! submit, so a redelivery finds the task its first delivery started.
//!
//! A rule's `concurrency_key` goes into the request it builds, so pushes to one repository
//! can deploy one at a time. Not here: pull/merge request events and Bitbucket Server (Data
//! Center) payloads.

pub mod providers;
pub mod rules;
pub mod verify;

use serde::{Deserialize, Serialize};

/// A git host whose webhooks are understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub (and GitHub Enterprise Server).
    Github,
    /// GitLab.
    Gitlab,
    /// Gitea, and Forgejo (which sends the same payloads under its own header names).
    #[serde(alias = "forgejo")]
    Gitea,
    /// Bitbucket Cloud.
    Bitbucket,
}

impl Provider {
    /// Every provider, in route order.
    pub const ALL: [Provider; 4] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Bitbucket,
    ];

    /// The lower-case name used in routes, rules and secret names.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
        }
    }

    /// Prefix of the task ids its deliveries start.
    pub fn task_prefix(self) -> &'static str {
        match self {
            Provider::Github => "gh",
            Provider::Gitlab => "gl",
            Provider::Gitea => "gt",
            Provider::Bitbucket => "bb",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pushed ref, as every provider's payload is reduced to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// `owner/name` (GitHub, Gitea, Bitbucket `full_name`; GitLab `path_with_namespace`).
    pub repository: String,
    /// The repository's HTTPS clone URL, when the payload gives one.
    pub clone_url: Option<String>,
    /// The full ref: `refs/heads/main`, `refs/tags/v1.2.0`.
    pub git_ref: String,
    /// The pushed commit (`after`; GitLab `checkout_sha`).
    pub commit: String,
    /// The ref was deleted: nothing to build.
    pub deleted: bool,
    /// Paths added, modified or removed by the pushed commits, as the payload lists them.
    pub changed_paths: Vec<String>,
}

impl Push {
    /// The branch or tag name of the ref (`main` for `refs/heads/main`).
    pub fn short_ref(&self) -> &str {
        self.git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| self.git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(&self.git_ref)
    }
}

/// A header's value, trimmed; `None` when absent, empty or not text.
pub(crate) fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Whether a commit id means "no commit" (all zeros: a created or deleted ref's other side).
pub fn is_zero_commit(commit: &str) -> bool {
    !commit.is_empty() && commit.bytes().all(|b| b == b'0')
}

/// A header map from pairs, for the tests of the webhook modules.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&'static str, &str)]) -> axum::http::HeaderMap {
    let mut map = axum::http::HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, value.parse().expect("a valid header value"));
    }
    map
}

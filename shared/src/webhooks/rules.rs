//! Webhook rules: which pushes start which task, and the task request a match builds.
//!
//! A rule (`[[webhooks.rules]]` in the TOML config) names a repository, a ref glob and
//! optionally changed-path globs; a push matching all of them starts the rule's task with
//! the pushed repository cloned at the pushed commit, as the first of its `git_configs`.
//!
//! Globs: `*` is any run of characters but `/`, `**` any run including `/` (`**/` may also
//! match nothing), `?` one character but `/`; everything else matches itself.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Provider, Push};
use crate::task::TaskFile;

/// One rule of `[[webhooks.rules]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRule {
    /// Only deliveries of this provider (`github`, `gitlab`, `gitea`/`forgejo`,
    /// `bitbucket`); any provider when absent.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// Repository glob, case-insensitive: `acme/app`, `acme/*`.
    pub repository: String,
    /// Ref glob: `refs/heads/main`, `refs/tags/v*`, `refs/heads/**`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Changed-path globs; the rule matches when any added, modified or removed path of the
    /// push matches one. Every push matches when empty.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The task file, as in a request.
    pub task_file_name: String,
    /// The request's `worker_config`, as a TOML table of the same shape.
    #[serde(default)]
    pub worker_config: toml::Table,
    /// Where the result is POSTed.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Task timeout in seconds (the server's default when absent).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Tasks with this key run one at a time, in order (see the request's `concurrency_key`).
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// Secret-store name of the token that clones the pushed repository (none: public).
    #[serde(default)]
    pub git_secret_name: Option<String>,
    /// User name sent with that token (default `x-access-token`).
    #[serde(default)]
    pub git_username: Option<String>,
    /// Clone from here instead of the payload's clone URL (a mirror, or a local path in
    /// the embedded mode).
    #[serde(default)]
    pub clone_url: Option<String>,
}

impl WebhookRule {
    /// Refuses a rule that could never start a task; says which field is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.repository.trim().is_empty() {
            return Err("repository must not be empty; give owner/name or a glob".into());
        }
        if self.git_ref.trim().is_empty() {
            return Err("ref must not be empty; e.g. \"refs/heads/main\"".into());
        }
        TaskFile::parse(&self.task_file_name)
            .map_err(|why| format!("task_file_name {:?} {why}", self.task_file_name))?;
        Ok(())
    }

    /// Whether this rule applies to `push` from `provider`; `Err` says why not.
    pub fn matches(&self, provider: Provider, push: &Push) -> Result<(), String> {
        if let Some(wanted) = self.provider {
            if wanted != provider {
                return Err(format!("it is for {wanted} deliveries"));
            }
        }
        let repository = push.repository.to_ascii_lowercase();
        if !glob_match(&self.repository.to_ascii_lowercase(), &repository) {
            return Err(format!(
                "repository {} does not match {:?}",
                push.repository, self.repository
            ));
        }
        if !glob_match(&self.git_ref, &push.git_ref) {
            return Err(format!(
                "ref {} does not match {:?}",
                push.git_ref, self.git_ref
            ));
        }
        if !self.paths.is_empty() {
            if push.changed_paths.is_empty() {
                return Err(format!(
                    "paths {:?} cannot be checked: the payload lists no changed files",
                    self.paths
                ));
            }
            let hit = push
                .changed_paths
                .iter()
                .any(|path| self.paths.iter().any(|glob| glob_match(glob, path)));
            if !hit {
                return Err(format!(
                    "none of the {} changed files matches paths {:?}",
                    push.changed_paths.len(),
                    self.paths
                ));
            }
        }
        Ok(())
    }

    /// The task request a match starts, in the shape of `POST /task-runner`'s body. The
    /// pushed repository comes first in `git_configs`, pinned to the pushed commit.
    pub fn request(
        &self,
        provider: Provider,
        push: &Push,
        task_id: &str,
        delivery: &str,
    ) -> Result<Value, String> {
        let remote_url = match (&self.clone_url, &push.clone_url) {
            (Some(url), _) => url.clone(),
            // Only network URLs from payloads: a payload never points a clone at a local path.
            (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
                url.clone()
            }
            (None, Some(url)) => {
                return Err(format!(
                    "the payload's clone URL {url:?} is not http(s); set clone_url in the rule"
                ));
            }
            (None, None) => {
                return Err("the payload has no clone URL; set clone_url in the rule".into());
            }
        };
        let mut worker_config: Map<String, Value> = match serde_json::to_value(&self.worker_config)
        {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let mut git = json!({
            "remote_url": remote_url,
            "branch": push.short_ref(),
            "commit": push.commit,
        });
        if let Some(name) = &self.git_secret_name {
            git["secret_name"] = json!(name);
        }
        if let Some(name) = &self.git_username {
            git["username"] = json!(name);
        }
        let mut git_configs = vec![git];
        if let Some(Value::Array(more)) = worker_config.remove("git_configs") {
            git_configs.extend(more);
        }
        worker_config.insert("git_configs".into(), Value::Array(git_configs));
        let env = worker_config
            .entry("env_variables")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(env) = env {
            for (name, value) in [
                ("WEBHOOK_PROVIDER", provider.as_str()),
                ("WEBHOOK_DELIVERY", delivery),
                ("WEBHOOK_REPOSITORY", &push.repository),
                ("WEBHOOK_REF", &push.git_ref),
                ("WEBHOOK_COMMIT", &push.commit),
            ] {
                env.entry(name).or_insert_with(|| json!(value));
            }
        }
        let mut request = json!({
            "task_id": task_id,
            "task_file_name": self.task_file_name,
            "worker_config": worker_config,
        });
        if let Some(url) = &self.callback_url {
            request["callback_url"] = json!(url);
        }
        if let Some(seconds) = self.timeout_seconds {
            request["timeout_seconds"] = json!(seconds);
        }
        if let Some(key) = &self.concurrency_key {
            request["concurrency_key"] = json!(key);
        }
        Ok(request)
    }
}

/// Whether `text` matches the glob `pattern` (see the module docs).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    matches_from(pattern.as_bytes(), text.as_bytes())
}

fn matches_from(pattern: &[u8], text: &[u8]) -> bool {
    match pattern {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => {
            if let [b'/', after @ ..] = rest {
                if matches_from(after, text) {
                    return true;
                }
            }
            (0..=text.len()).any(|start| matches_from(rest, &text[start..]))
        }
        [b'*', rest @ ..] => {
            for start in 0..=text.len() {
                if matches_from(rest, &text[start..]) {
                    return true;
                }
                if text.get(start) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        [b'?', rest @ ..] => {
            matches!(text.first(), Some(c) if *c != b'/') && matches_from(rest, &text[1..])
        }
        [c, rest @ ..] => text.first() == Some(c) && matches_from(rest, &text[1..]),
    }
}

/// The task id a delivery's match gets: `<prefix>-<delivery>`, sanitized to
/// `[A-Za-z0-9_-]` (other characters become `-`), with `suffix` appended; a delivery id
/// too long for the 80-character limit is replaced by a digest of it rather than cut, so
/// long ids that share a prefix stay distinct.
pub fn task_id(provider: Provider, delivery: &str, suffix: &str) -> String {
    use sha2::{Digest, Sha256};
    let clean: String = delivery
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let room = 80 - provider.task_prefix().len() - 1 - suffix.len();
    let body = if clean.len() <= room {
        clean
    } else {
        let digest = hex::encode(Sha256::digest(delivery.as_bytes()));
        digest[..room.min(40)].to_owned()
    };
    format!("{}-{body}{suffix}", provider.task_prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_for_refs_and_paths() {
        assert!(glob_match("refs/heads/main", "refs/heads/main"));
        assert!(!glob_match("refs/heads/main", "refs/heads/main2"));
        assert!(glob_match("refs/tags/v*", "refs/tags/v1.2.0"));
        assert!(!glob_match("refs/tags/v*", "refs/heads/v1"));
        assert!(!glob_match("refs/heads/*", "refs/heads/feature/x"));
        assert!(glob_match("refs/heads/**", "refs/heads/feature/x"));
        assert!(glob_match("src/**/*.rs", "src/main.rs"));
        assert!(glob_match("src/**/*.rs", "src/a/b/lib.rs"));
        assert!(!glob_match("src/**/*.rs", "docs/lib.rs"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("v?", "v1"));
        assert!(!glob_match("v?", "v12"));
    }

    fn push() -> Push {
        Push {
            repository: "Acme/App".into(),
            clone_url: Some("https://github.com/acme/app.git".into()),
            git_ref: "refs/heads/main".into(),
            commit: "2".repeat(40),
            deleted: false,
            changed_paths: vec!["docs/readme.md".into()],
        }
    }

    fn rule() -> WebhookRule {
        toml::from_str(
            "repository = \"acme/app\"\nref = \"refs/heads/main\"\ntask_file_name = \"ci/test.sh\"\n[worker_config]\nworker_size = \"Small\"\nenv_variables = { MODE = \"ci\" }\n",
        )
        .unwrap()
    }

    #[test]
    fn a_rule_says_why_it_does_not_match() {
        let rule = rule();
        assert!(rule.matches(Provider::Github, &push()).is_ok());
        let mut other = push();
        other.git_ref = "refs/heads/dev".into();
        assert!(
            rule.matches(Provider::Github, &other)
                .unwrap_err()
                .contains("refs/heads/dev")
        );
        let mut filtered = rule.clone();
        filtered.paths = vec!["src/**".into()];
        assert!(
            filtered
                .matches(Provider::Github, &push())
                .unwrap_err()
                .contains("paths")
        );
        filtered.paths.push("docs/*.md".into());
        assert!(filtered.matches(Provider::Github, &push()).is_ok());
        let mut gitlab_only = rule.clone();
        gitlab_only.provider = Some(Provider::Gitlab);
        assert!(gitlab_only.matches(Provider::Github, &push()).is_err());
    }

    #[test]
    fn the_request_clones_the_pushed_commit_first() {
        let request = rule()
            .request(Provider::Github, &push(), "gh-abc", "abc")
            .unwrap();
        let git = &request["worker_config"]["git_configs"][0];
        assert_eq!(git["remote_url"], "https://github.com/acme/app.git");
        assert_eq!(git["branch"], "main");
        assert_eq!(git["commit"], "2".repeat(40));
        assert_eq!(request["worker_config"]["worker_size"], "Small");
        assert_eq!(request["worker_config"]["env_variables"]["MODE"], "ci");
        assert_eq!(
            request["worker_config"]["env_variables"]["WEBHOOK_COMMIT"],
            "2".repeat(40)
        );
        let mut local = push();
        local.clone_url = Some("file:///etc".into());
        assert!(
            rule()
                .request(Provider::Github, &local, "gh-x", "x")
                .is_err()
        );
    }

    #[test]
    fn task_ids_are_valid_and_distinct() {
        let id = task_id(Provider::Github, "72d3162e-cc78-11e3-81ab-4c9367dc0958", "");
        assert_eq!(id, "gh-72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let long = task_id(Provider::Gitlab, &"x".repeat(200), "-1");
        assert!(long.len() <= 80 && long.ends_with("-1"), "{long}");
        assert!(crate::task::TaskId::parse(&long).is_ok());
        assert_ne!(
            task_id(Provider::Gitlab, &format!("{}a", "x".repeat(200)), ""),
            task_id(Provider::Gitlab, &format!("{}b", "x".repeat(200)), "")
        );
        assert_eq!(task_id(Provider::Bitbucket, "{a.b}", "-0"), "bb--a-b--0");
    }
}

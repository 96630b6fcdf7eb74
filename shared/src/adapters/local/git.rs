//! Cloning a task's repositories with git, the token handed over out of sight.
//!
//! The token reaches git only through the environment of the git process itself, read by a
//! credential helper given with `-c` on the command line: it never appears in the URL, in
//! argv, in `.git/config`, or in the task's environment.

use std::path::{Component, Path, PathBuf};

use super::spawn::Launch;

use crate::secret::Secret;
use crate::task::GitSource;

/// The credential helper: prints the user and token from the git process's environment.
const CREDENTIAL_HELPER: &str =
    "!f() { echo \"username=$TR_GIT_USER\"; echo \"password=$TR_GIT_TOKEN\"; }; f";

/// Environment variables of the supervisor that git keeps (proxies, certificates, locale).
const GIT_ENV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "USER",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
];

/// One git invocation of a clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitStep {
    /// Arguments after `git` and the `-c` options.
    pub args: Vec<String>,
    /// Where it runs.
    pub cwd: PathBuf,
}

/// A repository to clone, with what the supervisor needs to run and report it.
pub struct RepoClone<'a> {
    /// The source, as requested.
    pub source: &'a GitSource,
    /// Its token, when it needs one.
    pub token: Option<&'a Secret>,
    /// Skip TLS verification.
    pub bypass_ssl_verification: bool,
}

impl RepoClone<'_> {
    /// Where it lands inside `workspace`, or why `local_path` is not acceptable.
    pub fn destination(&self, workspace: &Path) -> Result<PathBuf, String> {
        let local = Path::new(&self.source.local_path);
        let inside = local
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(format!(
                "local_path {:?} must be a relative path inside the workspace, without '..'",
                self.source.local_path
            ));
        }
        Ok(workspace.join(local))
    }

    /// The git invocations, in order.
    pub fn steps(&self, destination: &Path) -> Vec<GitStep> {
        let source = self.source;
        let mut clone = vec!["clone".to_owned()];
        if let Some(depth) = source.fetch_depth {
            clone.push(format!("--depth={depth}"));
        }
        if let Some(branch) = &source.branch {
            clone.push(format!("--branch={branch}"));
        }
        let sparse = !source.sparse_checkout_folders.is_empty();
        if sparse {
            clone.push("--sparse".into());
        }
        clone.extend([
            "--".to_owned(),
            source.remote_url.clone(),
            destination.display().to_string(),
        ]);
        let parent = destination.parent().unwrap_or(destination).to_path_buf();
        let mut steps = vec![GitStep {
            args: clone,
            cwd: parent,
        }];
        let here = |args: Vec<String>| GitStep {
            args,
            cwd: destination.to_path_buf(),
        };
        if sparse {
            let mut set = vec!["sparse-checkout".into(), "set".into(), "--cone".into()];
            set.push("--".into());
            set.extend(source.sparse_checkout_folders.iter().cloned());
            steps.push(here(set));
        }
        if let Some(commit) = &source.commit {
            if let Some(depth) = source.fetch_depth {
                // A shallow clone holds only its branch tip: fetch the commit itself.
                steps.push(here(vec![
                    "fetch".into(),
                    format!("--depth={depth}"),
                    "origin".into(),
                    commit.clone(),
                ]));
            }
            steps.push(here(vec![
                "checkout".into(),
                "--detach".into(),
                commit.clone(),
            ]));
        }
        steps
    }

    /// The command for one step: environment cleared but for git's needs, the token in the
    /// git process's environment only when the remote needs one.
    pub fn command(&self, step: &GitStep) -> Launch {
        let mut command = Launch::new("git");
        for name in GIT_ENV_PASSTHROUGH {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.env("GIT_TERMINAL_PROMPT", "0");
        // Our helper only: an empty value first resets the helpers of the user's config.
        command.args(["-c", "credential.helper=", "-c"]);
        command.arg(format!("credential.helper={CREDENTIAL_HELPER}"));
        if self.bypass_ssl_verification {
            command.args(["-c", "http.sslVerify=false"]);
        }
        if let Some(token) = self.token.filter(|_| self.needs_token()) {
            command.env("TR_GIT_USER", &self.source.username);
            command.env("TR_GIT_TOKEN", token.expose());
        }
        command.args(&step.args).current_dir(&step.cwd);
        command
    }

    /// Whether the remote is reached over the network (a `file://` URL or a path is not).
    fn needs_token(&self) -> bool {
        let url = self.source.remote_url.as_str();
        !(url.starts_with("file://") || url.starts_with('/') || url.starts_with('.'))
    }

    /// The repository as it may be shown: the URL without any credentials in it.
    pub fn display_url(&self) -> String {
        match url::Url::parse(&self.source.remote_url) {
            Ok(mut url) if url.has_host() => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            _ => self.source.remote_url.clone(),
        }
    }

    /// The reason a failed clone gives, naming the repository, the secret and git's error.
    pub fn failure(&self, git_error: &str) -> String {
        let secret = match &self.source.secret_name {
            Some(name) => format!(" (secret {name:?})"),
            None => String::new(),
        };
        let error = if git_error.is_empty() {
            "git gave no error message"
        } else {
            git_error
        };
        format!("cloning {}{secret} failed: {error}", self.display_url())
    }
}

/// The line of git's output that says what went wrong: the last `fatal:`/`error:` line, else
/// the last non-empty one.
pub fn error_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let found = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last())
        .copied()
        .unwrap_or_default();
    found
        .trim_start_matches("fatal: ")
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str) -> GitSource {
        GitSource {
            remote_url: url.into(),
            secret_name: Some("GIT_PAT".into()),
            username: "bot".into(),
            local_path: "repo".into(),
            branch: Some("main".into()),
            commit: Some("abc123".into()),
            sparse_checkout_folders: vec!["src".into()],
            fetch_depth: Some(1),
        }
    }

    #[test]
    fn the_token_is_only_in_the_git_process_environment() {
        let token = Secret::new("canary-token-9876");
        let source = source("https://git.example.com/team/repo.git");
        let clone = RepoClone {
            source: &source,
            token: Some(&token),
            bypass_ssl_verification: true,
        };
        let steps = clone.steps(Path::new("/ws/repo"));
        assert_eq!(steps.len(), 4);
        for step in &steps {
            let command = clone.command(step);
            let argv: Vec<String> = command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert!(!argv.join(" ").contains("canary-token-9876"));
            assert!(argv.contains(&"http.sslVerify=false".to_owned()));
            assert_eq!(
                command.get_env("TR_GIT_TOKEN").unwrap(),
                "canary-token-9876"
            );
        }
        assert_eq!(
            steps[0].args[..4],
            ["clone", "--depth=1", "--branch=main", "--sparse"]
        );
    }

    #[test]
    fn failures_name_the_repository_without_credentials() {
        let source = source("https://user:pw@git.example.com/team/repo.git");
        let clone = RepoClone {
            source: &source,
            token: None,
            bypass_ssl_verification: false,
        };
        let reason = clone.failure(&error_line(
            "Cloning into 'repo'...\nfatal: Authentication failed for 'x'\n",
        ));
        assert_eq!(
            reason,
            "cloning https://git.example.com/team/repo.git (secret \"GIT_PAT\") failed: Authentication failed for 'x'"
        );
    }

    #[test]
    fn local_paths_stay_inside_the_workspace() {
        let mut bad = source("file:///r");
        bad.local_path = "../out".into();
        let clone = RepoClone {
            source: &bad,
            token: None,
            bypass_ssl_verification: false,
        };
        assert!(clone.destination(Path::new("/ws")).is_err());
    }
}

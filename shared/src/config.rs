//! Configuration: defaults, an optional TOML file, and `TASKRUNNER_*` environment variables.
//!
//! Precedence: environment over file over defaults. Every value has a default that works on
//! one machine with no file at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::WorkerResources;
use crate::webhooks::Provider;
use crate::webhooks::rules::WebhookRule;

/// One worker size: local limits and the AWS compute type it maps to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerSize {
    /// CPU cores the task may use (local: CPU affinity).
    pub cpus: u32,
    /// Memory limit in MiB (local: address-space limit).
    pub memory_mib: u64,
    /// CodeBuild compute type in AWS.
    pub codebuild_compute_type: String,
    /// Whether the local worker can provide this size.
    #[serde(default = "yes")]
    pub local: bool,
}

fn yes() -> bool {
    true
}

/// The worker-size table, by canonical name (`X-Small`, `Small`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerSizes(pub BTreeMap<String, WorkerSize>);

impl Default for WorkerSizes {
    fn default() -> Self {
        let size = |cpus, memory_mib, compute: &str, local| WorkerSize {
            cpus,
            memory_mib,
            codebuild_compute_type: compute.to_owned(),
            local,
        };
        Self(BTreeMap::from([
            (
                "X-Small".into(),
                size(1, 1024, "BUILD_GENERAL1_SMALL", true),
            ),
            ("Small".into(), size(1, 2048, "BUILD_GENERAL1_SMALL", true)),
            (
                "Medium".into(),
                size(2, 4096, "BUILD_GENERAL1_MEDIUM", true),
            ),
            ("Large".into(), size(4, 8192, "BUILD_GENERAL1_LARGE", true)),
            (
                "2X-Large".into(),
                size(8, 16384, "BUILD_GENERAL1_XLARGE", true),
            ),
            ("GPU".into(), size(8, 16384, "BUILD_GENERAL1_LARGE", false)),
        ]))
    }
}

impl WorkerSizes {
    /// Looks a size up by name, ignoring case.
    pub fn find(&self, name: &str) -> Option<(&str, &WorkerSize)> {
        self.0
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(known, size)| (known.as_str(), size))
    }

    /// The names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The resources of a size, as the worker applies them.
    pub fn resources(&self, name: &str) -> Option<WorkerResources> {
        self.find(name).map(|(name, size)| WorkerResources {
            name: name.to_owned(),
            cpus: size.cpus,
            memory_mib: size.memory_mib,
        })
    }
}

/// How the state machine watches a worker. The worker's end resumes the waiting execution;
/// the safety net is how long it waits without news before it polls once and waits again
/// (the task's age, within `[safety_seconds, safety_max_seconds]`). The adaptive poll
/// (`fraction` of the age, within `[min, max]`) is the wait of a task queued in line
/// (`min_seconds`) and of state machines that poll with a Wait state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// Shortest wait, seconds.
    pub min_seconds: u64,
    /// Longest wait, seconds.
    pub max_seconds: u64,
    /// Share of the task's age to wait next.
    pub fraction: f64,
    /// Shortest safety-net wait for the worker's end, seconds.
    pub safety_seconds: u64,
    /// Longest safety-net wait, seconds.
    pub safety_max_seconds: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            min_seconds: 5,
            max_seconds: 300,
            fraction: 0.1,
            safety_seconds: 1800,
            safety_max_seconds: 3600,
        }
    }
}

impl PollConfig {
    /// How long to wait before the next poll of a task this old.
    pub fn next_wait(&self, age: Duration) -> u64 {
        let wanted = (age.as_secs_f64() * self.fraction).round() as u64;
        wanted.clamp(self.min_seconds, self.max_seconds.max(self.min_seconds))
    }

    /// How long a task this old waits for its worker's end before it is polled once.
    pub fn safety_net(&self, age: Duration) -> u64 {
        age.as_secs().clamp(
            self.safety_seconds,
            self.safety_max_seconds.max(self.safety_seconds),
        )
    }
}

/// Callback delivery settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// Seconds before a delivery attempt gives up.
    pub timeout_seconds: u64,
    /// Secret-store name of the Standard Webhooks signing secret(s) (`whsec_...`, several
    /// separated by spaces for rotation). Callbacks are signed when it exists.
    pub signing_secret_name: String,
    /// Host names allowed even when they resolve to private addresses.
    pub allow_hosts: Vec<String>,
    /// Address ranges (CIDR) allowed even though private.
    pub allow_cidrs: Vec<String>,
    /// Allow loopback receivers (default true in the embedded mode).
    pub allow_loopback: bool,
    /// Refuse plain `http://` callback URLs.
    pub require_https: bool,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 15,
            signing_secret_name: "callback-signing".into(),
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            allow_loopback: true,
            require_https: false,
        }
    }
}

/// Git-host webhooks: where their secrets are, and the rules that map pushes to tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Secret-store name of GitHub's webhook secret.
    pub github_secret_name: String,
    /// Secret-store name of GitLab's secret token.
    pub gitlab_secret_name: String,
    /// Secret-store name of Gitea's (or Forgejo's) webhook secret.
    pub gitea_secret_name: String,
    /// Secret-store name of Bitbucket's webhook secret.
    pub bitbucket_secret_name: String,
    /// Body limit of webhook deliveries, bytes (GitHub caps payloads at 25 MB).
    pub max_body_bytes: usize,
    /// The rules, tried in order; every matching rule starts its task.
    pub rules: Vec<WebhookRule>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            github_secret_name: "webhook-github".into(),
            gitlab_secret_name: "webhook-gitlab".into(),
            gitea_secret_name: "webhook-gitea".into(),
            bitbucket_secret_name: "webhook-bitbucket".into(),
            max_body_bytes: 25 * 1024 * 1024,
            rules: Vec::new(),
        }
    }
}

impl WebhooksConfig {
    /// The secret-store name of `provider`'s webhook secret.
    pub fn secret_name(&self, provider: Provider) -> &str {
        match provider {
            Provider::Github => &self.github_secret_name,
            Provider::Gitlab => &self.gitlab_secret_name,
            Provider::Gitea => &self.gitea_secret_name,
            Provider::Bitbucket => &self.bitbucket_secret_name,
        }
    }
}

/// Task chaining: how deep children may nest and how many one task may start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// Most levels of children under a task submitted with an API key (`chain.max_depth`,
    /// `TASKRUNNER_CHAIN_MAX_DEPTH`).
    pub max_depth: usize,
    /// Most children one task may start (`chain.max_children`,
    /// `TASKRUNNER_CHAIN_MAX_CHILDREN`).
    pub max_children: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            max_depth: 4,
            max_children: 50,
        }
    }
}

/// Everything configurable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `serve` listens.
    pub listen: String,
    /// Public base URL used in `status_url` (default `http://<listen>`).
    pub public_url: Option<String>,
    /// The tasks directory searched first for task files.
    pub tasks_dir: Option<PathBuf>,
    /// Worker sizes.
    pub worker_sizes: WorkerSizes,
    /// Size used when a request names none.
    pub default_worker_size: String,
    /// Default task timeout, seconds (6 h).
    pub default_timeout_seconds: u64,
    /// Longest timeout a request may ask for, seconds (36 h).
    pub max_timeout_seconds: u64,
    /// Log tail sent in callbacks, bytes.
    pub log_tail_bytes: usize,
    /// How long a kept workspace (`terminate_on_completion: false`) stays, seconds.
    pub keep_workspace_seconds: u64,
    /// How long finished executions are kept, days.
    pub retention_days: u64,
    /// How often `serve` runs the cleanup sweep, seconds.
    pub cleanup_interval_seconds: u64,
    /// Request body limit, bytes.
    pub max_body_bytes: usize,
    /// Most tasks running at once, deployment-wide; more wait in line (`queued`). None: no limit.
    pub max_running_tasks: Option<usize>,
    /// Most tasks running at once per `concurrency_key`.
    pub per_key_limit: usize,
    /// How many nice levels below `serve` the worker host and its tasks run (0 to 19; 0:
    /// the same priority). Taken when the worker host starts.
    pub task_nice: u8,
    /// Adaptive polling.
    pub poll: PollConfig,
    /// Callback delivery.
    pub callback: CallbackConfig,
    /// Git-host webhooks.
    pub webhooks: WebhooksConfig,
    /// Task chaining limits.
    pub chain: ChainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            tasks_dir: None,
            worker_sizes: WorkerSizes::default(),
            default_worker_size: "X-Small".into(),
            default_timeout_seconds: crate::task::DEFAULT_TIMEOUT_SECONDS,
            max_timeout_seconds: 36 * 3600,
            log_tail_bytes: 64 * 1024,
            keep_workspace_seconds: 3600,
            retention_days: 30,
            cleanup_interval_seconds: 300,
            max_body_bytes: 1024 * 1024,
            max_running_tasks: None,
            per_key_limit: 1,
            task_nice: 10,
            poll: PollConfig::default(),
            callback: CallbackConfig::default(),
            webhooks: WebhooksConfig::default(),
            chain: ChainConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then the TOML file if given, then `TASKRUNNER_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    format!("config file {}: cannot read it: {err}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|err| format!("config file {}: {err}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.check()?;
        Ok(config)
    }

    /// Applies `TASKRUNNER_*` variables read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        fn number<T: std::str::FromStr>(name: &str, value: String) -> Result<T, String> {
            value
                .trim()
                .parse()
                .map_err(|_| format!("{name}={value:?}: expected a whole number"))
        }
        fn flag(name: &str, value: String) -> Result<bool, String> {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                _ => Err(format!("{name}={value:?}: expected true or false")),
            }
        }
        fn list(value: String) -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        }
        let get = |name: &str| var(name).filter(|value| !value.is_empty());
        if let Some(v) = get("TASKRUNNER_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("TASKRUNNER_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = get("TASKRUNNER_TASKS_DIR") {
            self.tasks_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("TASKRUNNER_DEFAULT_WORKER_SIZE") {
            self.default_worker_size = v;
        }
        if let Some(v) = get("TASKRUNNER_DEFAULT_TIMEOUT_SECONDS") {
            self.default_timeout_seconds = number("TASKRUNNER_DEFAULT_TIMEOUT_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_LOG_TAIL_BYTES") {
            self.log_tail_bytes = number("TASKRUNNER_LOG_TAIL_BYTES", v)?;
        }
        if let Some(v) = get("TASKRUNNER_KEEP_WORKSPACE_SECONDS") {
            self.keep_workspace_seconds = number("TASKRUNNER_KEEP_WORKSPACE_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_RETENTION_DAYS") {
            self.retention_days = number("TASKRUNNER_RETENTION_DAYS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CLEANUP_INTERVAL_SECONDS") {
            self.cleanup_interval_seconds = number("TASKRUNNER_CLEANUP_INTERVAL_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_MAX_CONCURRENT_WORKERS") {
            let limit: usize = number("TASKRUNNER_MAX_CONCURRENT_WORKERS", v)?;
            self.max_running_tasks = (limit > 0).then_some(limit);
        }
        if let Some(v) = get("TASKRUNNER_POLL_MIN_SECONDS") {
            self.poll.min_seconds = number("TASKRUNNER_POLL_MIN_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_POLL_MAX_SECONDS") {
            self.poll.max_seconds = number("TASKRUNNER_POLL_MAX_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_POLL_SAFETY_SECONDS") {
            self.poll.safety_seconds = number("TASKRUNNER_POLL_SAFETY_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_POLL_SAFETY_MAX_SECONDS") {
            self.poll.safety_max_seconds = number("TASKRUNNER_POLL_SAFETY_MAX_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_TIMEOUT_SECONDS") {
            self.callback.timeout_seconds = number("TASKRUNNER_CALLBACK_TIMEOUT_SECONDS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_SIGNING_SECRET_NAME") {
            self.callback.signing_secret_name = v;
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_ALLOW_HOSTS") {
            self.callback.allow_hosts = list(v);
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_ALLOW_CIDRS") {
            self.callback.allow_cidrs = list(v);
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_ALLOW_LOOPBACK") {
            self.callback.allow_loopback = flag("TASKRUNNER_CALLBACK_ALLOW_LOOPBACK", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CALLBACK_REQUIRE_HTTPS") {
            self.callback.require_https = flag("TASKRUNNER_CALLBACK_REQUIRE_HTTPS", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CHAIN_MAX_DEPTH") {
            self.chain.max_depth = number("TASKRUNNER_CHAIN_MAX_DEPTH", v)?;
        }
        if let Some(v) = get("TASKRUNNER_TASK_NICE") {
            self.task_nice = number("TASKRUNNER_TASK_NICE", v)?;
        }
        if let Some(v) = get("TASKRUNNER_CHAIN_MAX_CHILDREN") {
            self.chain.max_children = number("TASKRUNNER_CHAIN_MAX_CHILDREN", v)?;
        }
        Ok(())
    }

    /// Refuses settings that cannot work together.
    pub fn check(&self) -> Result<(), String> {
        if self.worker_sizes.find(&self.default_worker_size).is_none() {
            return Err(format!(
                "default_worker_size {:?} is not in worker_sizes; known sizes: {}",
                self.default_worker_size,
                self.worker_sizes.names().join(", ")
            ));
        }
        if self.task_nice > 19 {
            return Err(format!(
                "task_nice ({}) must be between 0 and 19 (nice values end at 19); 10, the default, runs tasks behind `serve`, 0 beside it",
                self.task_nice
            ));
        }
        if self.per_key_limit == 0 || self.max_running_tasks == Some(0) {
            return Err("per_key_limit and max_running_tasks must be at least 1".into());
        }
        if self.poll.min_seconds == 0 || self.poll.min_seconds > self.poll.max_seconds {
            return Err(format!(
                "poll.min_seconds ({}) must be at least 1 and at most poll.max_seconds ({})",
                self.poll.min_seconds, self.poll.max_seconds
            ));
        }
        if self.poll.safety_seconds == 0 || self.poll.safety_seconds > self.poll.safety_max_seconds
        {
            return Err(format!(
                "poll.safety_seconds ({}) must be at least 1 and at most poll.safety_max_seconds ({})",
                self.poll.safety_seconds, self.poll.safety_max_seconds
            ));
        }
        for (index, rule) in self.webhooks.rules.iter().enumerate() {
            rule.check()
                .map_err(|why| format!("webhooks.rules[{index}]: {why}"))?;
        }
        if self.default_timeout_seconds == 0
            || self.default_timeout_seconds > self.max_timeout_seconds
        {
            return Err(format!(
                "default_timeout_seconds ({}) must be between 1 and max_timeout_seconds ({})",
                self.default_timeout_seconds, self.max_timeout_seconds
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_wait_is_a_tenth_of_the_age_within_bounds() {
        let poll = PollConfig::default();
        assert_eq!(poll.next_wait(Duration::from_secs(0)), 5);
        assert_eq!(poll.next_wait(Duration::from_secs(600)), 60);
        assert_eq!(poll.next_wait(Duration::from_secs(36 * 3600)), 300);
        assert_eq!(poll.safety_net(Duration::from_secs(0)), 1800);
        assert_eq!(poll.safety_net(Duration::from_secs(2700)), 2700);
        assert_eq!(poll.safety_net(Duration::from_secs(36 * 3600)), 3600);
    }

    #[test]
    fn sizes_are_found_regardless_of_case() {
        let sizes = WorkerSizes::default();
        assert_eq!(sizes.find("small").map(|(name, _)| name), Some("Small"));
        assert_eq!(
            sizes.find("2x-large").map(|(name, _)| name),
            Some("2X-Large")
        );
        assert!(sizes.find("huge").is_none());
    }

    #[test]
    fn environment_overrides_and_bad_values_are_named() {
        let mut config = Config::default();
        config
            .apply_env(|name| (name == "TASKRUNNER_POLL_MAX_SECONDS").then(|| "120".into()))
            .unwrap();
        assert_eq!(config.poll.max_seconds, 120);
        let err = config
            .apply_env(|name| (name == "TASKRUNNER_RETENTION_DAYS").then(|| "lots".into()))
            .unwrap_err();
        assert!(err.contains("TASKRUNNER_RETENTION_DAYS"), "{err}");
    }

    #[test]
    fn task_nice_is_read_and_a_value_past_19_is_refused_by_name() {
        let mut config = Config::default();
        assert_eq!(config.task_nice, 10);
        config
            .apply_env(|name| (name == "TASKRUNNER_TASK_NICE").then(|| "0".into()))
            .unwrap();
        assert_eq!(config.task_nice, 0);
        config.check().unwrap();
        config.task_nice = 20;
        let err = config.check().unwrap_err();
        assert!(err.contains("task_nice (20)"), "{err}");
    }

    #[test]
    fn webhook_rules_load_from_toml_and_are_checked() {
        let config: Config = toml::from_str(
            "[webhooks]\ngithub_secret_name = \"gh-hook\"\n[[webhooks.rules]]\nprovider = \"forgejo\"\nrepository = \"acme/app\"\nref = \"refs/tags/v*\"\npaths = [\"src/**\"]\ntask_file_name = \"ci/release.sh\"\nconcurrency_key = \"release\"\n[webhooks.rules.worker_config]\nworker_size = \"Small\"\n",
        )
        .unwrap();
        assert!(config.check().is_ok());
        assert_eq!(config.webhooks.secret_name(Provider::Github), "gh-hook");
        assert_eq!(
            config.webhooks.secret_name(Provider::Gitlab),
            "webhook-gitlab"
        );
        let rule = &config.webhooks.rules[0];
        assert_eq!(rule.provider, Some(Provider::Gitea));
        assert_eq!(rule.worker_config["worker_size"].as_str(), Some("Small"));
        let mut bad = config.clone();
        bad.webhooks.rules[0].task_file_name = "../x.py".into();
        assert!(bad.check().unwrap_err().contains("webhooks.rules[0]"));
        assert!(toml::from_str::<Config>("[[webhooks.rules]]\nrepository = \"a/b\"\nref = \"x\"\ntask_file_name = \"a.sh\"\nbranchez = 1\n").is_err());
    }

    #[test]
    fn the_example_webhook_config_loads() {
        let config: Config = toml::from_str(include_str!("../../examples/webhooks.toml")).unwrap();
        assert!(config.check().is_ok());
        assert_eq!(config.webhooks.rules.len(), 2);
        assert_eq!(config.webhooks.rules[1].paths.len(), 2);
    }

    #[test]
    fn toml_file_sets_sizes_and_limits() {
        let config: Config = toml::from_str(
            "default_worker_size = \"Tiny\"\n[worker_sizes.Tiny]\ncpus = 1\nmemory_mib = 256\ncodebuild_compute_type = \"BUILD_GENERAL1_SMALL\"\n",
        )
        .unwrap();
        assert!(config.check().is_ok());
        assert_eq!(
            config.worker_sizes.resources("tiny").unwrap().memory_mib,
            256
        );
    }
}

//! `infra/runner.sh` (the script the buildspec embeds) run for real: bash, git and python3,
//! on a `file://` repository made here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use super::phases::LogHints;
use crate::task::{GitSource, TaskFile, TaskId, TaskSpec, WorkerResources};

const RUNNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/runner.sh");
const TOKEN: &str = "canary-token-5150";

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
}

/// A repository with `jobs/task.py`, which reports what it sees and exits with `EXIT_WITH`.
fn origin(root: &Path) -> PathBuf {
    let repo = root.join("origin");
    std::fs::create_dir_all(repo.join("jobs")).unwrap();
    std::fs::write(
        repo.join("jobs/task.py"),
        "import os, sys\n\
         print('task ran in', os.path.basename(os.getcwd()))\n\
         print('token visible:', any(k.startswith('TASKRUNNER_GIT_TOKEN') for k in os.environ))\n\
         print('stage:', os.environ.get('STAGE'))\n\
         sys.exit(int(os.environ.get('EXIT_WITH', '0')))\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "task"]);
    repo
}

fn spec(remote_url: String) -> TaskSpec {
    TaskSpec {
        git: vec![GitSource {
            remote_url,
            secret_name: Some("GIT_PAT".into()),
            username: "bot".into(),
            local_path: "app".into(),
            branch: Some("main".into()),
            commit: None,
            sparse_checkout_folders: vec![],
            fetch_depth: Some(1),
        }],
        startup_script: Some("echo startup-ran > startup.txt".into()),
        timeout_seconds: 60,
        ..TaskSpec::new(
            TaskId::parse("runner-test").unwrap(),
            TaskFile::parse("jobs/task.py").unwrap(),
            WorkerResources {
                name: "Small".into(),
                cpus: 1,
                memory_mib: 2048,
            },
        )
    }
}

/// A workspace, a state dir, and a `git` on PATH that records its argv before running git.
struct Worker {
    root: PathBuf,
    spec: TaskSpec,
    env: Vec<(String, String)>,
}

impl Worker {
    fn new(root: &Path, spec: TaskSpec) -> Self {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real_git = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v git"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let wrapper = bin.join("git");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec {} \"$@\"\n",
                root.join("git-argv.log").display(),
                real_git.trim()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH".into(), path),
            ("HOME".into(), root.display().to_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("TASKRUNNER_GIT_TOKEN_0".into(), TOKEN.into()),
            ("TASKRUNNER_KEEP_SECONDS".into(), "0".into()),
            (
                "TASKRUNNER_WORKSPACE".into(),
                root.join("ws").display().to_string(),
            ),
            (
                "TASKRUNNER_STATE_DIR".into(),
                root.join("state").display().to_string(),
            ),
        ];
        Self {
            root: root.to_path_buf(),
            spec,
            env,
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.push((name.into(), value.into()));
    }

    /// `runner.sh <phase>` with the environment CodeBuild would give it.
    fn phase(&self, phase: &str) -> Output {
        let spec = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&self.spec).unwrap());
        Command::new("bash")
            .arg(RUNNER)
            .arg(phase)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TASKRUNNER_SPEC", spec)
            .current_dir(&self.root)
            .output()
            .unwrap()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_runner_clones_prepares_and_runs_the_task_without_exposing_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let mut worker = Worker::new(tmp.path(), spec(format!("file://{}", repo.display())));
    worker.set("STAGE", "prod");

    let prepared = worker.phase("prepare");
    assert!(prepared.status.success(), "{}", text(&prepared));
    assert!(text(&prepared).contains("[taskrunner] prepared"));
    let ws = tmp.path().join("ws");
    assert_eq!(
        std::fs::read_to_string(ws.join("startup.txt")).unwrap(),
        "startup-ran\n"
    );
    assert!(ws.join("app/jobs/task.py").is_file());

    let ran = worker.phase("run");
    let log = text(&ran);
    assert!(ran.status.success(), "{log}");
    assert!(log.contains("task ran in app"), "{log}");
    assert!(log.contains("token visible: False"), "{log}");
    assert!(log.contains("stage: prod"), "{log}");
    assert_eq!(LogHints::parse(&log).exit_code, Some(0));

    // The token reached git through the helper's environment only.
    let argv = std::fs::read_to_string(tmp.path().join("git-argv.log")).unwrap();
    assert!(argv.contains("credential.helper=!f()"), "{argv}");
    assert!(argv.contains("$TASKRUNNER_GIT_TOKEN_0"), "{argv}");
    assert!(!argv.contains(TOKEN), "{argv}");
    // And that helper does hand the token to git for an https remote.
    let start = argv.find("credential.helper=!f()").unwrap();
    let end = start + argv[start..].find("}; f").unwrap() + "}; f".len();
    let mut fill = Command::new("git")
        .args(["-c", "credential.helper=", "-c", &argv[start..end]])
        .args(["credential", "fill"])
        .env("TASKRUNNER_GIT_TOKEN_0", TOKEN)
        .env("TASKRUNNER_GIT_USER", "bot")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = fill.stdin.take().unwrap();
        stdin
            .write_all(b"protocol=https\nhost=git.example.com\n\n")
            .unwrap();
    }
    let filled = String::from_utf8(fill.wait_with_output().unwrap().stdout).unwrap();
    assert!(filled.contains("username=bot\n"), "{filled}");
    assert!(filled.contains(&format!("password={TOKEN}\n")), "{filled}");
    let config = Command::new("git")
        .args(["config", "--list", "--show-origin"])
        .current_dir(ws.join("app"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(config.status.success());
    assert!(!String::from_utf8_lossy(&config.stdout).contains(TOKEN));
    assert!(!String::from_utf8_lossy(&config.stdout).contains("credential"));
    assert!(!log.contains(TOKEN) && !text(&prepared).contains(TOKEN));
}

#[test]
fn a_failing_task_fails_the_phase_with_its_exit_code_and_can_be_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let mut spec = spec(format!("file://{}", repo.display()));
    spec.terminate_on_completion = false;
    let mut worker = Worker::new(tmp.path(), spec);
    worker.set("EXIT_WITH", "3");
    worker.set("TASKRUNNER_KEEP_SECONDS", "1");
    worker.set("TASKRUNNER_KEEP_POLL_SECONDS", "0.1");
    assert!(worker.phase("prepare").status.success());

    let ran = worker.phase("run");
    assert_eq!(ran.status.code(), Some(3), "{}", text(&ran));
    assert_eq!(LogHints::parse(&text(&ran)).exit_code, Some(3));
    assert!(tmp.path().join("state/keep").is_file());

    let kept = worker.phase("keep");
    assert!(kept.status.success(), "{}", text(&kept));
    assert!(text(&kept).contains("keep time over"), "{}", text(&kept));
}

#[test]
fn a_failed_clone_fails_preparation_with_a_reason_naming_repo_and_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-repo");
    let worker = Worker::new(tmp.path(), spec(format!("file://{}", missing.display())));
    let prepared = worker.phase("prepare");
    assert_eq!(prepared.status.code(), Some(1));
    let hints = LogHints::parse(&text(&prepared));
    let error = hints.error.expect("an error line");
    assert!(error.starts_with("cloning file://"), "{error}");
    assert!(error.contains("(secret \"GIT_PAT\") failed: "), "{error}");
    // The startup script did not run.
    assert!(!tmp.path().join("ws/startup.txt").exists());
}

#[test]
fn a_missing_token_or_task_file_is_reported_before_the_task_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let mut worker = Worker::new(tmp.path(), spec(format!("file://{}", repo.display())));
    worker.env.retain(|(k, _)| k != "TASKRUNNER_GIT_TOKEN_0");
    let error = LogHints::parse(&text(&worker.phase("prepare")))
        .error
        .unwrap();
    assert!(error.contains("did not reach the worker"), "{error}");

    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let mut spec = spec(format!("file://{}", repo.display()));
    spec.task_file = TaskFile::parse("jobs/absent.sh").unwrap();
    let worker = Worker::new(tmp.path(), spec);
    let prepared = worker.phase("prepare");
    assert!(!prepared.status.success());
    let error = LogHints::parse(&text(&prepared)).error.unwrap();
    assert!(error.contains("\"jobs/absent.sh\" not found"), "{error}");
}

#[test]
fn the_tasks_directory_comes_first_then_the_checkout_with_the_local_workers_error() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let tasks = tmp.path().join("tasks-source");
    std::fs::create_dir_all(tasks.join("jobs")).unwrap();
    std::fs::write(
        tasks.join("jobs/task.py"),
        "import os\nprint('from the tasks directory in', os.path.basename(os.getcwd()))\n",
    )
    .unwrap();
    let mut worker = Worker::new(tmp.path(), spec(format!("file://{}", repo.display())));
    worker.set("CODEBUILD_SRC_DIR_tasks", &tasks.display().to_string());
    assert!(worker.phase("prepare").status.success());
    let ran = text(&worker.phase("run"));
    assert!(
        ran.contains("from the tasks directory in tasks-source"),
        "{ran}"
    );

    // Not in the tasks directory: the checkout's copy runs.
    std::fs::remove_file(tasks.join("jobs/task.py")).unwrap();
    let ran = text(&worker.phase("run"));
    assert!(ran.contains("task ran in app"), "{ran}");

    // In neither: the embedded worker's message, naming both places.
    worker.spec.task_file = TaskFile::parse("jobs/absent.sh").unwrap();
    let error = LogHints::parse(&text(&worker.phase("run"))).error.unwrap();
    assert_eq!(
        error,
        format!(
            "task file \"jobs/absent.sh\" not found: looked in the tasks directory ({}/jobs/absent.sh) \
             and in the checkout of git_configs[0] ({}/ws/app/jobs/absent.sh)",
            tasks.display(),
            tmp.path().display()
        )
    );
}

#[test]
fn the_shipped_cli_is_first_on_the_tasks_path_without_its_file_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let tasks = tmp.path().join("tasks-source");
    std::fs::create_dir_all(tasks.join("jobs")).unwrap();
    std::fs::write(
        tasks.join("jobs/task.py"),
        "import subprocess\nsubprocess.run(['taskrunner', 'submit', 'child.json', '--wait'], check=True)\n",
    )
    .unwrap();
    // As CodeBuild copies it from S3: a plain file, not executable.
    let cli = tmp.path().join("cli-source");
    std::fs::create_dir_all(&cli).unwrap();
    std::fs::write(
        cli.join("taskrunner"),
        "#!/bin/sh\necho \"shipped taskrunner at $0: $*\"\n",
    )
    .unwrap();
    let mut worker = Worker::new(tmp.path(), spec(format!("file://{}", repo.display())));
    worker.set("CODEBUILD_SRC_DIR_tasks", &tasks.display().to_string());
    worker.set("CODEBUILD_SRC_DIR_cli", &cli.display().to_string());
    assert!(worker.phase("prepare").status.success());
    let run = worker.phase("run");
    let ran = text(&run);
    assert!(run.status.success(), "{ran}");
    assert!(
        ran.contains(&format!(
            "shipped taskrunner at {}/state/bin/taskrunner: submit child.json --wait",
            tmp.path().display()
        )),
        "{ran}"
    );
}

//! The local worker end to end: a real worker host (this test binary, run as a detached
//! process), real git, real task processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::ports::SecretEntry;
use crate::task::{GitSource, SecretEnv, TaskFile, WorkerResources};

const ENTRY: &str = "adapters::local::worker::tests::host_entry";
const DIR_VAR: &str = "TR_TEST_HOST_DATA_DIR";

/// Not a test: the worker host's `main` when this binary is started by a test below.
#[test]
#[ignore = "runs only as the worker host process of the other tests"]
fn host_entry() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    std::process::exit(crate::adapters::local::run_host(Path::new(&dir), 0));
}

#[derive(Default)]
struct MemorySecrets(Mutex<HashMap<String, Secret>>);

#[async_trait]
impl SecretStore for MemorySecrets {
    async fn get(&self, name: &str) -> Result<Option<Secret>, PortError> {
        Ok(self.0.lock().unwrap().get(name).cloned())
    }
    async fn put(&self, name: &str, value: &Secret) -> Result<(), PortError> {
        self.0.lock().unwrap().insert(name.into(), value.clone());
        Ok(())
    }
    async fn delete(&self, name: &str) -> Result<bool, PortError> {
        Ok(self.0.lock().unwrap().remove(name).is_some())
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<SecretEntry>, PortError> {
        Ok(Vec::new())
    }
}

struct Fixture {
    root: tempfile::TempDir,
    worker: LocalWorker,
}

impl Fixture {
    /// A worker whose host is this test binary; `tasks` are written to its tasks dir.
    fn new(tasks: &[(&str, &str)], secrets: &[(&str, &str)]) -> Self {
        Self::with_host_env(tasks, secrets, "")
    }

    fn with_host_env(tasks: &[(&str, &str)], secrets: &[(&str, &str)], env: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let tasks_dir = root.path().join("tasks");
        std::fs::create_dir_all(&tasks_dir).unwrap();
        for (name, body) in tasks {
            std::fs::write(tasks_dir.join(name), body).unwrap();
        }
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "{DIR_VAR}=\"$2\" {env} exec '{}' {ENTRY} --exact --ignored --nocapture -q",
            exe.display()
        );
        let mut config = LocalWorkerConfig::new(root.path().join("data"), "/bin/sh");
        config.supervisor_args = vec!["-c".into(), script, "sh".into()];
        config.tasks_dir = Some(tasks_dir);
        let store = MemorySecrets::default();
        for (name, value) in secrets {
            store
                .0
                .lock()
                .unwrap()
                .insert((*name).into(), Secret::new(*value));
        }
        let worker = LocalWorker::new(config, Arc::new(store));
        Self { root, worker }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    async fn run(&self, spec: &TaskSpec) -> (TaskEnd, String) {
        let handle = self.worker.start(spec).await.unwrap();
        let end = self.wait_end(&handle).await;
        let log = self.worker.log_tail(&handle, 1 << 20).await.unwrap().text;
        (end, log)
    }

    async fn wait_end(&self, handle: &WorkerHandle) -> TaskEnd {
        for _ in 0..600 {
            if let TaskPhase::Ended(end) = self.worker.status(handle).await.unwrap().task {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the task did not end in 30 s");
    }

    async fn wait_for_log(&self, handle: &WorkerHandle, text: &str) {
        for _ in 0..600 {
            let log = self.worker.log_tail(handle, 1 << 20).await.unwrap().text;
            if log.contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{text:?} never showed in the log");
    }

    fn task_group(&self, task_id: &str) -> i32 {
        task_group(&WorkerDir::new(self.data().join("workers").join(task_id))).unwrap()
    }
}

fn spec(task_id: &str, task_file: &str) -> TaskSpec {
    TaskSpec {
        timeout_seconds: 60,
        ..TaskSpec::new(
            TaskId::parse(task_id).unwrap(),
            TaskFile::parse(task_file).unwrap(),
            WorkerResources {
                name: "Small".into(),
                cpus: 1,
                memory_mib: 4096,
            },
        )
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = StdCommand::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A repository with `main` (one commit) and `feature` (two commits, folders `a` and `b`).
fn make_repo(root: &Path) -> PathBuf {
    let repo = root.join("origin");
    std::fs::create_dir_all(repo.join("a")).unwrap();
    std::fs::create_dir_all(repo.join("b")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a/one.txt"), "one").unwrap();
    std::fs::write(repo.join("b/two.txt"), "two").unwrap();
    std::fs::write(
        repo.join("run.sh"),
        "echo branch-file=$(cat marker.txt 2>/dev/null)\n\
         echo commits=$(git rev-list --count HEAD)\n\
         ls a b 2>&1 | sed 's/^/ls:/'\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("marker.txt"), "feature").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "second"]);
    git(&repo, &["checkout", "-q", "main"]);
    repo
}

fn source(url: String) -> GitSource {
    GitSource {
        remote_url: url,
        secret_name: None,
        username: "bot".into(),
        local_path: "repo".into(),
        branch: None,
        commit: None,
        sparse_checkout_folders: Vec::new(),
        fetch_depth: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_shell_tasks_succeed_with_their_output_in_the_log() {
    let fx = Fixture::new(
        &[
            (
                "hello.py",
                "import os\nprint('hello from python', os.getcwd())\n",
            ),
            ("hello.sh", "echo hello from bash; echo to stderr >&2\n"),
        ],
        &[],
    );
    let (end, log) = fx.run(&spec("py-task", "hello.py")).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    assert_eq!(end.exit_code, Some(0));
    assert!(end.started_at.is_some());
    assert!(log.contains("hello from python"), "{log}");
    assert!(
        log.contains("workspaces/py-task/tasks"),
        "runs from the tasks copy: {log}"
    );

    let (end, log) = fx.run(&spec("sh-task", "hello.sh")).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    assert!(
        log.contains("hello from bash\n") && log.contains("to stderr\n"),
        "{log}"
    );

    let handle = fx.worker.handle_for(&TaskId::parse("sh-task").unwrap());
    assert_eq!(handle.backend, "local");
    fx.worker
        .terminate(&handle, TerminateReason::Completed)
        .await
        .unwrap();
    assert!(!fx.data().join("workspaces/sh-task").exists());
    assert!(fx.data().join("logs/sh-task.log").exists());
    let status = fx.worker.status(&handle).await.unwrap();
    assert!(!status.worker_alive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_fails_with_its_code() {
    let fx = Fixture::new(&[("fail.sh", "echo about to fail\nexit 1\n")], &[]);
    let (end, log) = fx.run(&spec("fail-task", "fail.sh")).await;
    assert_eq!(end.outcome, Outcome::Failed, "{end:?}");
    assert_eq!(end.exit_code, Some(1));
    assert!(log.contains("about to fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_and_the_task_sees_only_its_own_environment() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_repo(root.path());
    let task = "import os\n\
                print('secret=' + os.environ['MY_SECRET'])\n\
                print('token_in_env=' + str(any('git-token-5678' in v for v in os.environ.values())))\n\
                print('names=' + ','.join(sorted(os.environ)))\n\
                print('custom=' + os.environ['CUSTOM'])\n";
    let fx = Fixture::with_host_env(
        &[("env.py", task)],
        &[
            ("MY_TOKEN", "canary-secret-1234"),
            ("GIT_PAT", "git-token-5678"),
        ],
        "TASKRUNNER_API_KEY=host-only-key",
    );
    let mut spec = spec("env-task", "env.py");
    spec.secrets = vec![SecretEnv {
        secret: "MY_TOKEN".into(),
        env: "MY_SECRET".into(),
    }];
    spec.env.insert("CUSTOM".into(), "value".into());
    spec.log_level = Some("DEBUG".into());
    let mut git_source = source(format!("file://{}", repo.display()));
    git_source.secret_name = Some("GIT_PAT".into());
    spec.git = vec![git_source];
    let (end, log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    assert!(log.contains("secret=***\n"), "{log}");
    assert!(!log.contains("canary-secret-1234"), "{log}");
    assert!(log.contains("token_in_env=False"), "{log}");
    assert!(log.contains("custom=value"), "{log}");
    let names = log.lines().find(|l| l.starts_with("names=")).unwrap();
    for expected in [
        "HOME",
        "LOG_LEVEL",
        "MY_SECRET",
        "TASKRUNNER_TASK_ID",
        "TMPDIR",
    ] {
        assert!(names.contains(expected), "{names}");
    }
    for leaked in [
        "TASKRUNNER_API_KEY",
        "TR_GIT_TOKEN",
        "TR_TEST_SUPERVISE_DIR",
    ] {
        assert!(!names.contains(leaked), "{names}");
    }
    let git_config =
        std::fs::read_to_string(fx.data().join("workspaces/env-task/repo/.git/config"));
    assert!(!git_config.unwrap().contains("git-token-5678"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_a_branch_shallow_and_sparse_into_its_local_path() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_repo(root.path());
    let fx = Fixture::new(&[], &[]);
    let mut spec = spec("clone-task", "run.sh");
    let mut git_source = source(format!("file://{}", repo.display()));
    git_source.branch = Some("feature".into());
    git_source.fetch_depth = Some(1);
    git_source.sparse_checkout_folders = vec!["a".into()];
    git_source.local_path = "src/checkout".into();
    spec.git = vec![git_source];
    let (end, log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    assert!(log.contains("branch-file=feature"), "{log}");
    assert!(log.contains("commits=1"), "{log}");
    assert!(log.contains("ls:one.txt"), "{log}");
    assert!(log.contains("ls:ls: cannot access 'b'"), "sparse: {log}");
    assert!(
        fx.data()
            .join("workspaces/clone-task/src/checkout/run.sh")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_out_a_given_commit_of_a_shallow_clone() {
    let root = tempfile::tempdir().unwrap();
    let repo = make_repo(root.path());
    let first = git(&repo, &["rev-parse", "feature~1"]);
    let fx = Fixture::new(&[], &[]);
    let mut spec = spec("commit-task", "run.sh");
    let mut git_source = source(format!("file://{}", repo.display()));
    git_source.branch = Some("feature".into());
    git_source.fetch_depth = Some(1);
    git_source.commit = Some(first);
    spec.git = vec![git_source];
    let (end, log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    assert!(
        log.contains("branch-file=\n"),
        "the first commit has no marker: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_failure_is_an_error_naming_the_repository() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-repo");
    let fx = Fixture::new(&[], &[("GIT_PAT", "git-token-5678")]);
    let mut spec = spec("clone-fails", "run.sh");
    let mut git_source = source(format!("file://{}", missing.display()));
    git_source.secret_name = Some("GIT_PAT".into());
    spec.git = vec![git_source];
    let (end, _log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Error);
    let reason = end.reason.unwrap();
    let expected = format!(
        "cloning file://{} (secret \"GIT_PAT\") failed: ",
        missing.display()
    );
    assert!(reason.starts_with(&expected), "{reason}");
    assert!(
        reason.len() > expected.len(),
        "git's error is missing: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_task_file_says_where_it_looked() {
    let fx = Fixture::new(&[], &[]);
    let (end, _log) = fx.run(&spec("no-file", "absent.py")).await;
    assert_eq!(end.outcome, Outcome::Error);
    let reason = end.reason.unwrap();
    assert!(
        reason.contains("tasks directory") && reason.contains("git"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_permanent_and_names_the_fix() {
    let fx = Fixture::new(&[("x.sh", "true\n")], &[]);
    let mut spec = spec("no-secret", "x.sh");
    spec.secrets = vec![SecretEnv {
        secret: "MY_TOKEN".into(),
        env: "T".into(),
    }];
    let error = fx.worker.start(&spec).await.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "personal/shared secret \"MY_TOKEN\" is not in the secret store; add it with `taskrunner secret set MY_TOKEN`"
    );
    spec.secrets.clear();
    spec.git = vec![source("https://git.example.com/r.git".into())];
    spec.git[0].secret_name = Some("GIT_PAT".into());
    let error = fx.worker.start(&spec).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("git_configs[0].secret_name \"GIT_PAT\" is not")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_ends_the_task_and_kills_its_process_group() {
    let fx = Fixture::new(&[("sleep.sh", "echo sleeping\nsleep 30\n")], &[]);
    let mut spec = spec("slow-task", "sleep.sh");
    spec.timeout_seconds = 1;
    let (end, log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::TimedOut, "{end:?}\n{log}");
    assert!(end.reason.unwrap().contains("timeout of 1 seconds"));
    assert!(log.contains("sleeping"));
    assert!(!group_exists(fx.task_group("slow-task")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_its_process_group() {
    let fx = Fixture::new(&[("sleep.sh", "echo started\nsleep 30\n")], &[]);
    let spec = spec("cancel-task", "sleep.sh");
    let handle = fx.worker.start(&spec).await.unwrap();
    fx.wait_for_log(&handle, "started").await;
    assert!(matches!(
        fx.worker.status(&handle).await.unwrap().task,
        TaskPhase::Running { .. }
    ));
    let pgid = fx.task_group("cancel-task");
    assert!(group_exists(pgid));
    fx.worker
        .terminate(&handle, TerminateReason::Cancelled)
        .await
        .unwrap();
    let end = fx.wait_end(&handle).await;
    assert_eq!(end.outcome, Outcome::Cancelled, "{end:?}");
    let ps = StdCommand::new("ps")
        .args(["-eo", "pid,ppid,pgid,stat,comm"])
        .output()
        .unwrap();
    assert!(
        !group_exists(pgid),
        "{pgid}\n{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    assert!(!fx.data().join("workspaces/cancel-task").exists());
    // Idempotent.
    fx.worker
        .terminate(&handle, TerminateReason::Cancelled)
        .await
        .unwrap();
    assert!(fx.worker.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_before_its_start_never_starts() {
    let fx = Fixture::new(&[("x.sh", "echo ran\n")], &[]);
    let spec = spec("early-cancel", "x.sh");
    let handle = fx.worker.handle_for(&spec.task_id);
    assert_eq!(
        fx.worker.status(&handle).await.unwrap().task,
        TaskPhase::Pending
    );
    fx.worker
        .terminate(&handle, TerminateReason::Cancelled)
        .await
        .unwrap();
    fx.worker.start(&spec).await.unwrap();
    let end = fx.wait_end(&handle).await;
    assert_eq!(end.outcome, Outcome::Cancelled);
    assert!(!fx.data().join("workers/early-cancel/started").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_workspace_stays_until_the_cleanup() {
    let fx = Fixture::new(&[("x.sh", "echo kept > kept.txt\n")], &[]);
    let mut spec = spec("kept-task", "x.sh");
    spec.terminate_on_completion = false;
    let (end, _) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Succeeded);
    let handle = fx.worker.handle_for(&spec.task_id);
    fx.worker
        .terminate(&handle, TerminateReason::Completed)
        .await
        .unwrap();
    assert!(
        fx.data()
            .join("workspaces/kept-task/tasks/kept.txt")
            .exists()
    );
    assert!(fx.worker.status(&handle).await.unwrap().worker_alive);
    let listed = fx.worker.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let keep_until = listed[0].keep_until.unwrap();
    assert!(keep_until > end.finished_at + chrono::Duration::minutes(59));
    fx.worker
        .terminate(&handle, TerminateReason::Cleanup)
        .await
        .unwrap();
    assert!(!fx.data().join("workspaces/kept-task").exists());
    assert!(fx.worker.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_cuts_on_a_character_boundary() {
    let fx = Fixture::new(&[], &[]);
    let logs = fx.data().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("tail-task.log"), "first line\nzwei: äöü\n").unwrap();
    let handle = fx.worker.handle_for(&TaskId::parse("tail-task").unwrap());
    let tail = fx.worker.log_tail(&handle, 6).await.unwrap();
    assert!(tail.truncated);
    // 6 bytes back lands inside "ä"; the tail starts at the next character.
    assert_eq!(tail.text, "öü\n");
    let whole = fx.worker.log_tail(&handle, 1000).await.unwrap();
    assert!(!whole.truncated);
    assert_eq!(whole.text, "first line\nzwei: äöü\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_hook_fires_when_a_task_ends() {
    let mut fx = Fixture::new(&[("x.sh", "true\n")], &[]);
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    fx.worker.on_task_end(Arc::new(move |id: &str| {
        let _ = sender.send(id.to_owned());
    }));
    fx.worker.start(&spec("hook-task", "x.sh")).await.unwrap();
    let id = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("hook-task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_share_one_host_and_a_killed_host_ends_them_as_vanished() {
    let mut fx = Fixture::new(
        &[
            ("sleep.sh", "echo started\nsleep 30\n"),
            ("ok.sh", "true\n"),
        ],
        &[],
    );
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    fx.worker.on_task_end(Arc::new(move |id: &str| {
        let _ = sender.send(id.to_owned());
    }));
    let mut handles = Vec::new();
    for id in ["hosted-1", "hosted-2"] {
        let handle = fx.worker.start(&spec(id, "sleep.sh")).await.unwrap();
        fx.wait_for_log(&handle, "started").await;
        handles.push(handle);
    }
    let host = read_pid(&fx.data().join("worker-host.pid")).unwrap();
    for id in ["hosted-1", "hosted-2"] {
        let worker = fx.data().join("workers").join(id);
        assert_eq!(supervisor_pid(&WorkerDir::new(worker)), Some(host));
    }
    assert!(signal_ok(host, libc::SIGKILL));
    let mut woken = Vec::new();
    for _ in 0..2 {
        let id = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
            .await
            .unwrap();
        woken.extend(id);
    }
    woken.sort();
    assert_eq!(woken, ["hosted-1", "hosted-2"]);
    for (handle, id) in handles.iter().zip(["hosted-1", "hosted-2"]) {
        let end = fx.wait_end(handle).await;
        assert_eq!(end.outcome, Outcome::Error, "{end:?}");
        assert!(end.reason.unwrap().contains("vanished"));
        // What the dead host left running goes with the terminate.
        let pgid = fx.task_group(id);
        fx.worker
            .terminate(handle, TerminateReason::Completed)
            .await
            .unwrap();
        assert!(!group_exists(pgid));
    }
    // The next task starts a new host.
    let (end, log) = fx.run(&spec("after-host", "ok.sh")).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}\n{log}");
    let new_host = read_pid(&fx.data().join("worker-host.pid")).unwrap();
    assert_ne!(new_host, host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cut_short_by_a_killed_server_is_sent_again_and_runs_once() {
    let fx = Fixture::new(
        &[
            ("ok.sh", "true\n"),
            ("count.sh", "echo run >> \"$RUNS\"\nsleep 0.3\n"),
        ],
        &[],
    );
    // The host is up, as it stays when the server is killed.
    fx.run(&spec("first", "ok.sh")).await;
    let host = read_pid(&fx.data().join("worker-host.pid")).unwrap();
    let runs = fx.root.path().join("runs");
    let mut spec = spec("cut-short", "count.sh");
    spec.env.insert("RUNS".into(), runs.display().to_string());
    // What a start killed before its host had the task leaves: the lock, nothing else.
    let worker = WorkerDir::new(fx.data().join("workers/cut-short"));
    std::fs::create_dir_all(&worker.dir).unwrap();
    let record = StartRecord {
        pid: host,
        spec: spec.clone(),
    };
    std::fs::write(worker.start_lock(), serde_json::to_vec(&record).unwrap()).unwrap();

    // Started again, twice at once (as a retried step may be): the task runs, once.
    let (first, second) = tokio::join!(fx.worker.start(&spec), fx.worker.start(&spec));
    let handle = first.unwrap();
    second.unwrap();
    let end = fx.wait_end(&handle).await;
    assert_eq!(end.outcome, Outcome::Succeeded, "{end:?}");
    // Once it has ended, a start does nothing.
    fx.worker.start(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_startup_script_is_an_error_and_the_task_never_runs() {
    let fx = Fixture::new(&[("x.sh", "echo task ran\n")], &[]);
    let mut spec = spec("startup-fails", "x.sh");
    spec.startup_script = Some("echo preparing in $PWD; exit 3".into());
    let (end, log) = fx.run(&spec).await;
    assert_eq!(end.outcome, Outcome::Error, "{end:?}");
    assert_eq!(
        end.reason.as_deref(),
        Some("the startup script failed (exited with code 3)")
    );
    assert!(
        log.contains("preparing in") && log.contains("workspaces/startup-fails"),
        "{log}"
    );
    assert!(!log.contains("task ran"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_reattach_still_reports_the_end() {
    let fx = Fixture::new(&[("x.sh", "sleep 0.5\n")], &[]);
    let spec = spec("reattached", "x.sh");
    fx.worker.start(&spec).await.unwrap();
    // A second backend over the same data directory plays the restarted server.
    let mut restarted =
        LocalWorker::new(fx.worker.config.clone(), Arc::new(MemorySecrets::default()));
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    restarted.on_task_end(Arc::new(move |id: &str| {
        let _ = sender.send(id.to_owned());
    }));
    restarted.reattach();
    let id = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("reattached"));
    let handle = restarted.handle_for(&spec.task_id);
    let status = restarted.status(&handle).await.unwrap();
    assert!(matches!(
        status.task,
        TaskPhase::Ended(TaskEnd {
            outcome: Outcome::Succeeded,
            ..
        })
    ));
}

#[tokio::test]
async fn a_supervisor_that_vanished_is_reported_as_an_error() {
    let root = tempfile::tempdir().unwrap();
    let worker = WorkerDir::new(root.path());
    let mut gone = StdCommand::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(worker.start_lock(), "").unwrap();
    super::super::layout::write_pid(&worker.supervisor_pid(), pid).unwrap();
    let TaskPhase::Ended(end) = task_phase(&worker, &Started::read(&worker)) else {
        panic!("not ended");
    };
    assert_eq!(end.outcome, Outcome::Error);
    assert!(end.reason.unwrap().contains("vanished"));
}

#[tokio::test]
async fn a_delivery_is_recorded_in_the_worker_records() {
    let fixture = Fixture::new(&[], &[]);
    let handle = fixture
        .worker
        .handle_for(&TaskId::parse("delivered").unwrap());
    assert_eq!(
        fixture.worker.recorded_delivery(&handle).await.unwrap(),
        None
    );
    let record = DeliveryRecord {
        webhook_id: "msg_delivered".into(),
        status_code: 204,
        signed: true,
    };
    fixture
        .worker
        .record_delivery(&handle, &record)
        .await
        .unwrap();
    assert_eq!(
        fixture.worker.recorded_delivery(&handle).await.unwrap(),
        Some(record)
    );
}

//! Test support: a `taskrunner serve` child process, a callback receiver, and a git server
//! over HTTP that demands a token; for the ASL cross-check, a scripted worker, the steps
//! behind a Lambda-like HTTP endpoint and the Node harness. Everything listens on 127.0.0.1 only.

#![allow(dead_code)]

pub mod asl_harness;
pub mod aws_box;
pub mod git_server;
pub mod moto;
pub mod receiver;
pub mod scripted_worker;
pub mod server;
pub mod step_server;

use std::path::Path;
use std::time::{Duration, Instant};

/// The `taskrunner` binary under test.
pub fn taskrunner_bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskrunner")
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap_or_else(|err| panic!("{program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stores a secret with `taskrunner secret set NAME --data-dir DIR`, the value on stdin.
pub fn set_secret(data_dir: &Path, name: &str, value: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(taskrunner_bin())
        .args(["secret", "set", name, "--data-dir"])
        .arg(data_dir)
        .env_remove("TASKRUNNER_MASTER_KEY")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a tasks directory with the scripts the tests run.
pub fn write_tasks(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files: &[(&str, &str)] = &[
        (
            "ok.py",
            "import os\nprint('python says hi', os.environ.get('GREETING'))\n",
        ),
        ("ok.sh", "echo \"bash says hi $GREETING\"\n"),
        (
            "fail.sh",
            "echo 'about to fail'\necho 'bad things' >&2\nexit 3\n",
        ),
        (
            "sleep.sh",
            "echo started\nsleep \"${SLEEP_SECONDS:-30}\"\necho slept\n",
        ),
        (
            "spawn.sh",
            "sleep 300 &\necho \"child $!\"\necho \"group $(ps -o pgid= $$ | tr -d ' ')\"\nwait\n",
        ),
        (
            "track.sh",
            "echo \"start $TASKRUNNER_TASK_ID $(date +%s%N)\" >> \"$TRACK_FILE\"\nsleep 1\necho \"end $TASKRUNNER_TASK_ID $(date +%s%N)\" >> \"$TRACK_FILE\"\n",
        ),
        (
            "tally.sh",
            "echo \"ran $TASKRUNNER_TASK_ID\" >> \"$TRACK_FILE\"\nsleep \"${SLEEP_SECONDS:-0}\"\n",
        ),
        (
            "leak.py",
            "import os\nprint('token is', os.environ.get('MY_TOKEN'))\nprint('env has git token:', any('canary' in v for k, v in os.environ.items() if k != 'MY_TOKEN'))\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

//! Runs `tests/asl/run.mjs`: the state machine on aws-local-stepfunctions (Node 22, both
//! installed by `npm ci --prefix tests/asl`), its Task states calling a [`StepServer`].
//!
//! [`StepServer`]: super::step_server::StepServer

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// How long one run may take; every Wait and retry pause is zero there.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What the harness printed.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// `SUCCEEDED` or `FAILED`.
    pub status: String,
    /// The execution output, when it succeeded.
    pub output: Option<Value>,
    /// The error name, when it failed.
    pub error: Option<String>,
    /// The error cause, when it failed.
    pub cause: Option<String>,
    /// The states entered, in order.
    pub states: Vec<String>,
}

fn asl_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/asl"))
}

/// The Node 22 binary the `node` npm package installs. The first call installs the pinned
/// packages (`npm ci --prefix tests/asl`) when they are missing, so `cargo test --workspace`
/// needs nothing else; it panics, saying how to install them, when that fails.
pub fn node() -> PathBuf {
    static INSTALL: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = asl_dir();
    let node = dir.join("node_modules/node/bin/node");
    let library = dir.join("node_modules/aws-local-stepfunctions/package.json");
    INSTALL.get_or_init(|| {
        if node.is_file() && library.is_file() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status();
        if let Err(err) = status {
            eprintln!("npm could not be run ({err}); install Node.js with npm");
        }
    });
    assert!(
        node.is_file() && library.is_file(),
        "the ASL cross-check needs Node 22 and aws-local-stepfunctions under {}: \
         run `npm ci --prefix tests/asl` from the repository root first",
        dir.display()
    );
    node
}

/// Runs the harness on `definition_path` with `input`, its Tasks calling `endpoint`, the
/// definition's placeholders mapped to steps by `substitutions`.
pub async fn run(
    definition_path: &str,
    endpoint: &str,
    substitutions: &std::collections::HashMap<String, String>,
    input: &Value,
) -> Report {
    let node = node();
    let mut mappings: Vec<String> = substitutions
        .iter()
        .map(|(placeholder, step)| format!("{placeholder}={step}"))
        .collect();
    mappings.sort();
    let mut child = tokio::process::Command::new(&node)
        .arg(asl_dir().join("run.mjs"))
        .arg(definition_path)
        .arg(endpoint)
        .args(&mappings)
        .current_dir(asl_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("{}: {err}", node.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("write the execution input");
    drop(stdin);
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("run.mjs did not finish within {RUN_LIMIT:?}"))
        .expect("run.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("run.mjs printed {line:?}, not a report: {err}\n{stderr}"))
}

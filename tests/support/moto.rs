//! `moto` on loopback, with the resources a deployment's template would create: a state
//! machine, a CodeBuild project and its log group. The AWS SDK in a function binary reaches
//! it through `AWS_ENDPOINT_URL`.

// Shared by several test crates; each uses a part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server, killed when dropped.
pub struct Moto {
    _server: Server,
    /// Its endpoint URL.
    pub endpoint: String,
    /// The state machine created in it.
    pub state_machine_arn: String,
}

/// The CodeBuild project and log group created in moto.
pub const PROJECT: &str = "taskrunner-workers";
/// The workers' log group.
pub const LOG_GROUP: &str = "/taskrunner/workers";

impl Moto {
    /// Starts moto (installing it from PyPI when `python3` cannot import it) and creates the
    /// deployment's resources.
    pub fn start() -> Self {
        let (server, endpoint) = spawn(&[]);
        let arn = boto3(
            &endpoint,
            "moto setup",
            &format!(
                r#"
import json
sfn = boto3.client("stepfunctions", **kw)
arn = sfn.create_state_machine(name="taskrunner", roleArn="arn:aws:iam::123456789012:role/sfn",
    definition=json.dumps({{"StartAt": "Done", "States": {{"Done": {{"Type": "Succeed"}}}}}}))["stateMachineArn"]
boto3.client("codebuild", **kw).create_project(name="{PROJECT}", source={{"type": "S3", "location": "bucket/source.zip"}},
    artifacts={{"type": "NO_ARTIFACTS"}}, environment={{"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
    "computeType": "BUILD_GENERAL1_SMALL"}}, serviceRole="arn:aws:iam::123456789012:role/cb")
boto3.client("logs", **kw).create_log_group(logGroupName="{LOG_GROUP}")
print(arn)
"#
            ),
        );
        Self {
            _server: server,
            endpoint,
            state_machine_arn: arn,
        }
    }

    /// Starts a build of the project directly (as a worker started earlier would be); its id.
    pub fn start_build(&self) -> String {
        self.boto3(&format!(
            r#"print(boto3.client("codebuild", **kw).start_build(projectName="{PROJECT}")["build"]["id"])"#
        ))
    }

    /// Runs Python `code` with boto3 imported and `kw` holding the client arguments for this
    /// moto; what it printed, trimmed.
    pub fn boto3(&self, code: &str) -> String {
        boto3(&self.endpoint, code, code)
    }

    /// The environment a function gets in the template, pointed at this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            (
                "TASKRUNNER_STATE_MACHINE_ARN",
                self.state_machine_arn.clone(),
            ),
            ("TASKRUNNER_CODEBUILD_PROJECT", PROJECT.into()),
            ("TASKRUNNER_CODEBUILD_LOG_GROUP", LOG_GROUP.into()),
            ("TASKRUNNER_SECRET_PREFIX", "taskrunner/".into()),
            ("TASKRUNNER_API_KEY", "lambda-test-key".into()),
        ]
    }
}

/// The moto release the tests are written against (`.ci/run` installs the same).
pub const MOTO_PIN: &str = "moto[server]==5.2.6";

/// Starts `moto.server` on a free loopback port with `env` added (installing moto from PyPI
/// when `python3` cannot import it) and waits until it answers; the child and its endpoint.
pub fn spawn(env: &[(&str, &str)]) -> (Server, String) {
    let importable = Command::new("python3")
        .args(["-c", "import moto.server, boto3, yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !importable {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", MOTO_PIN])
            .status();
    }
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("moto: {err}; pip install '{MOTO_PIN}'"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_err()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("moto did not start on {endpoint}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (Server(child), endpoint)
}

/// A moto process, killed when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `code` under `python3` with boto3 clients' arguments for `endpoint` in `kw`; its
/// trimmed output. `what` names the step when it fails.
fn boto3(endpoint: &str, what: &str, code: &str) -> String {
    let script = format!(
        "import boto3\nkw = dict(endpoint_url=\"{endpoint}\", region_name=\"us-east-1\", aws_access_key_id=\"test\", aws_secret_access_key=\"test\")\n{code}\n"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

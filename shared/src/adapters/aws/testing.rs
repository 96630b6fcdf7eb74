//! Test support: a `moto_server` child process on 127.0.0.1, and SDK clients pointed at it.
//!
//! moto answers the Secrets Manager and Step Functions APIs over real HTTP, so the adapters are
//! tested through the real SDK clients (serialization, error codes, pagination). It is run as
//! `python3 -m moto.server`; when the module is missing it is installed from PyPI first, and
//! when that fails the test fails rather than skipping: a skipped test proves nothing.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get `moto_server` when it is missing.
const INSTALL: &str = "pip install 'moto[server]==5.2.6'";

/// Installs moto once per test run when `python3` cannot import it.
fn ensure_installed() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let importable = |module: &str| {
            Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if !importable("moto.server") {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "moto[server]==5.2.6"])
                .stdout(Stdio::null())
                .status();
        }
    });
}

/// A running `moto_server`, killed when dropped.
pub(crate) struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Starts `moto_server` on a free port of 127.0.0.1 and waits until it accepts connections.
    pub(crate) fn start() -> Moto {
        ensure_installed();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start moto_server ({err}); install it with: {INSTALL}")
            });
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start-up ({status}); reinstall it with: {INSTALL}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {} within 30 s",
                moto.endpoint
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A Secrets Manager client for this server.
    pub(crate) fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// A DynamoDB client for this server.
    pub(crate) fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// A Step Functions client for this server.
    pub(crate) fn step_functions(&self) -> aws_sdk_sfn::Client {
        use aws_sdk_sfn::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_sfn::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        aws_sdk_sfn::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

//! `taskrunner serve` and `taskrunner cleanup`: the embedded mode as a server.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use taskrunner::clock::SystemClock;
use taskrunner::config::Config;
use taskrunner::embedded::{Embedded, EmbeddedOptions};
use taskrunner::http::{AppState, router};
use taskrunner::secret::Secret;

use crate::EmbeddedArgs;
use crate::settings;

/// Builds the embedded stack for `data_dir`.
/// Takes the data directory's lock first: one owner per data directory.
pub fn open_embedded(data_dir: &Path, config: Config) -> Result<Embedded> {
    crate::lock::own_data_dir(data_dir)?;
    let supervisor_program = std::env::current_exe()
        .context("cannot find the taskrunner binary to supervise workers")?;
    let base_dir = std::env::current_dir().context("cannot read the current directory")?;
    Embedded::open(EmbeddedOptions {
        data_dir: data_dir.to_owned(),
        config,
        supervisor_program,
        base_dir,
        clock: Arc::new(SystemClock),
    })
    .map_err(|err| {
        anyhow::anyhow!(
            "cannot open the data directory {}: {err}",
            data_dir.display()
        )
    })
}

/// `taskrunner serve`.
pub async fn serve(listen: Option<String>, args: &EmbeddedArgs) -> Result<ExitCode> {
    let data_dir = settings::data_dir(&args.data)?;
    let mut config = settings::config(args)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    raise_open_file_limit();
    let embedded = open_embedded(&data_dir, config.clone())?;
    let static_key = std::env::var("TASKRUNNER_API_KEY").ok().map(Secret::new);
    let api_keys = embedded.api_keys(static_key);
    if !api_keys.any().await? {
        tracing::warn!(
            "no API key is configured: every API call will be refused with 401; set TASKRUNNER_API_KEY or run `taskrunner api-key create --name NAME`"
        );
    }
    if config.callback.allow_loopback {
        tracing::info!(
            "callbacks to loopback addresses are allowed (embedded default); set TASKRUNNER_CALLBACK_ALLOW_LOOPBACK=false to refuse them"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                config.listen
            )
        })?;
    let address = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"))
        .trim_end_matches('/')
        .to_owned();

    embedded.serve_tasks_at(task_api_url(address));
    let scheduler = embedded.start();
    let embedded = Arc::new(embedded);
    let sweeper = {
        let embedded = Arc::clone(&embedded);
        let every = Duration::from_secs(config.cleanup_interval_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = embedded.cleanup().await {
                    tracing::warn!(error = %err, "cleanup sweep failed; it will run again");
                }
            }
        })
    };
    let state = Arc::new(AppState {
        service: embedded.service.clone(),
        api_keys,
        public_url: Some(public_url.clone()),
    });
    tracing::info!(%address, data_dir = %data_dir.display(), "taskrunner listening");
    println!("taskrunner listening on {public_url}");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server stopped")?;
    sweeper.abort();
    scheduler.abort();
    tracing::info!("stopped; running tasks go on and are picked up by the next `taskrunner serve`");
    Ok(ExitCode::SUCCESS)
}

/// The URL tasks reach this server at: the listening address, with a wildcard address
/// (`0.0.0.0`, `::`) replaced by loopback.
pub fn task_api_url(address: std::net::SocketAddr) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{address}")
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

/// `taskrunner cleanup`.
pub async fn cleanup_once(args: &EmbeddedArgs) -> Result<ExitCode> {
    let data_dir = settings::data_dir(&args.data)?;
    let embedded = open_embedded(&data_dir, settings::config(args)?)?;
    let report = embedded.cleanup().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Each running task holds a process handle; lift the soft open-file limit to the hard one
/// so a thousand tasks in flight do not hit the common default of 1,024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(limit = limit.rlim_cur, "open-file limit raised");
            }
        }
    }
}

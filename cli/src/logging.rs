//! Logging: pretty on a terminal, JSON for machines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Multi-line, coloured.
    Pretty,
    /// One line per event.
    Compact,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    match format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Compact
    }) {
        LogFormat::Pretty => builder.pretty().init(),
        LogFormat::Compact => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

//! Resolving the data directory and configuration from flags and the environment.

use std::path::PathBuf;

use anyhow::{Context, Result};
use taskrunner::config::Config;

use crate::{DataArgs, EmbeddedArgs};

/// The data directory: `--data-dir`, `TASKRUNNER_DATA_DIR`, `$XDG_DATA_HOME/taskrunner`,
/// or `~/.local/share/taskrunner`.
pub fn data_dir(args: &DataArgs) -> Result<PathBuf> {
    if let Some(dir) = &args.data_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("taskrunner"));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("cannot pick a data directory: HOME is not set; pass --data-dir or set TASKRUNNER_DATA_DIR")?;
    Ok(PathBuf::from(home).join(".local/share/taskrunner"))
}

/// The configuration: file, environment, then flags.
pub fn config(args: &EmbeddedArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(dir) = &args.tasks_dir {
        config.tasks_dir = Some(dir.clone());
    }
    if config.tasks_dir.is_none() {
        let default = PathBuf::from("tasks");
        if default.is_dir() {
            config.tasks_dir = Some(default);
        }
    }
    if let Some(dir) = &config.tasks_dir {
        let absolute = dir
            .canonicalize()
            .with_context(|| format!("tasks directory {} cannot be read", dir.display()))?;
        config.tasks_dir = Some(absolute);
    }
    Ok(config)
}

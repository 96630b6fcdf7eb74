//! `taskrunner secret ...` and `taskrunner api-key ...`: local administration.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use taskrunner::adapters::local::secrets::LocalSecretStore;
use taskrunner::auth::ApiKeys;
use taskrunner::ports::SecretStore;
use taskrunner::secret::Secret;

use crate::DataArgs;
use crate::settings::data_dir;

/// `taskrunner secret`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Store a secret; the value is read from a no-echo prompt, or from stdin when it is not a terminal.
    Set {
        /// The secret's name (letters, digits and _-./+=@).
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List secret names and ages (never values).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a secret.
    Delete {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `taskrunner api-key`.
#[derive(Debug, clap::Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; it is printed once and only its hash is kept.
    Create {
        /// Who uses it, e.g. `ci-main`.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List keys (names, ids, ages).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key by name or id.
    Revoke {
        /// Name or id.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// Which secret store a `secret` command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Use AWS Secrets Manager (default credentials and region) instead of the local store.
    #[arg(long)]
    aws: bool,
    /// Name prefix in Secrets Manager, as the deployment's `SecretPrefix`.
    #[arg(long, env = "TASKRUNNER_SECRET_PREFIX", default_value = "taskrunner/")]
    secret_prefix: String,
}

async fn open_secret_store(store: &StoreArgs) -> Result<Arc<dyn SecretStore>> {
    if store.aws {
        return aws_store(&store.secret_prefix).await;
    }
    Ok(Arc::new(open_store(&store.data)?))
}

#[cfg(feature = "aws")]
async fn aws_store(prefix: &str) -> Result<Arc<dyn SecretStore>> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    Ok(Arc::new(
        taskrunner::adapters::aws::secrets::AwsSecretStore::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            prefix,
        ),
    ))
}

#[cfg(not(feature = "aws"))]
async fn aws_store(_prefix: &str) -> Result<Arc<dyn SecretStore>> {
    bail!(
        "this taskrunner was built without AWS support; install it with `cargo install --path cli --features aws`"
    )
}

fn open_store(data: &DataArgs) -> Result<LocalSecretStore> {
    let dir = data_dir(data)?;
    LocalSecretStore::open(&dir)
        .map_err(|err| anyhow::anyhow!("secret store in {}: {err}", dir.display()))
}

fn age(since: chrono::DateTime<Utc>) -> String {
    let seconds = (Utc::now() - since).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Runs a `secret` command.
pub async fn secret(command: SecretCommand) -> Result<ExitCode> {
    match command {
        SecretCommand::Set { name, store } => {
            taskrunner::validate::check_secret_name("NAME", &name)
                .map_err(|err| anyhow::anyhow!(err.message))?;
            let value = read_value(&name)?;
            open_secret_store(&store).await?.put(&name, &value).await?;
            eprintln!("secret {name} stored");
        }
        SecretCommand::List { store } => {
            let entries = open_secret_store(&store).await?.list("").await?;
            let user: Vec<_> = entries
                .into_iter()
                .filter(|entry| !entry.name.starts_with("taskrunner-"))
                .collect();
            if user.is_empty() {
                eprintln!("no secrets; add one with `taskrunner secret set NAME`");
            }
            for entry in user {
                println!("{}\tupdated {} ago", entry.name, age(entry.updated_at));
            }
        }
        SecretCommand::Delete { name, store } => {
            if !open_secret_store(&store).await?.delete(&name).await? {
                bail!("no secret named {name:?}; `taskrunner secret list` shows the names");
            }
            eprintln!("secret {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_value(name: &str) -> Result<Secret> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        read_without_echo(&format!("value for {name}: "))?
    } else {
        let mut value = String::new();
        stdin
            .lock()
            .read_to_string(&mut value)
            .context("cannot read the value from stdin")?;
        value
    };
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        bail!("the value is empty; nothing stored");
    }
    Ok(Secret::new(value))
}

/// Prompts on the terminal with echo turned off.
fn read_without_echo(prompt: &str) -> Result<String> {
    use std::io::Write;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut original: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
        bail!("cannot read terminal settings; pipe the value on stdin instead");
    }
    let mut silent = original;
    silent.c_lflag &= !libc::ECHO;
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    // SAFETY: same fd, a copy of its own settings with ECHO cleared.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &silent) };
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    eprintln!();
    read.context("cannot read the value")?;
    Ok(line)
}

/// Runs an `api-key` command.
pub async fn api_key(command: ApiKeyCommand) -> Result<ExitCode> {
    let keys = |data: &DataArgs| -> Result<ApiKeys> {
        Ok(ApiKeys::new(Arc::new(open_store(data)?), None))
    };
    match command {
        ApiKeyCommand::Create { name, data } => {
            let (record, key) = keys(&data)?.create(&name).await?;
            eprintln!(
                "api key {} (id {}) created; it is shown only now:",
                record.name, record.id
            );
            println!("{}", key.expose());
        }
        ApiKeyCommand::List { data } => {
            let records = keys(&data)?.list().await?;
            if records.is_empty() {
                eprintln!("no api keys; create one with `taskrunner api-key create --name NAME`");
            }
            for record in records {
                println!(
                    "{}\t{}\tcreated {} ago",
                    record.name,
                    record.id,
                    age(record.created_at)
                );
            }
        }
        ApiKeyCommand::Revoke { name, data } => {
            if !keys(&data)?.revoke(&name).await? {
                bail!("no api key with name or id {name:?}; `taskrunner api-key list` shows them");
            }
            eprintln!("api key {name} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

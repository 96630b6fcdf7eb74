//! The embedded (one machine) adapters: SQLite secret store, local process workers, task
//! tokens answered by the embedded engine.

pub mod gate;
pub mod git;
pub mod host;
pub mod layout;
pub mod limits;
pub mod link;
pub mod mask;
pub mod priority;
pub mod records;
pub mod secrets;
pub mod spawn;
pub mod supervisor;
pub mod tokens;
pub mod worker;
pub mod workspace;

pub use host::run_host;
pub use worker::{LocalWorker, LocalWorkerConfig};

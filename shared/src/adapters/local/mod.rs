//! The embedded (one machine) adapters: SQLite secret store, local process workers, task
//! tokens answered by the embedded engine.

pub mod gate;
pub mod git;
pub mod layout;
pub mod limits;
pub mod mask;
pub mod secrets;
pub mod supervisor;
pub mod tokens;
pub mod worker;

pub use supervisor::supervise_from_stdin;
pub use worker::{LocalWorker, LocalWorkerConfig};

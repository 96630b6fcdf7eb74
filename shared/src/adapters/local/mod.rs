//! The embedded (one machine) adapters: SQLite secret store, local process workers.

pub mod secrets;

//! Adapters: implementations of the ports. `local` runs on one machine with embedded state.

pub mod local;

//! Adapters: implementations of the ports. `local` runs on one machine with embedded state;
//! `memory` keeps everything in the process, for tests.

pub mod local;
pub mod memory;

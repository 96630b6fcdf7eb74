//! Adapters: implementations of the ports. `local` runs on one machine with embedded state;
//! `memory` keeps everything in the process, for tests; `aws` (feature `aws`) talks to AWS.

#[cfg(feature = "aws")]
pub mod aws;
pub mod line;
pub mod local;
pub mod memory;

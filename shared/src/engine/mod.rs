//! The embedded engine: runs `infra/state-machine.asl.json` with state kept in SQLite.
//!
//! An Amazon States Language interpreter (JSONPath only) with the semantics of Step
//! Functions Standard workflows for Task, Wait, Choice, Pass, Succeed and Fail states.

pub mod choice;
pub mod definition;
pub mod error;
pub mod intrinsic;
pub mod path;
pub mod payload;
pub mod retry;

pub use error::{EngineError, StateError};

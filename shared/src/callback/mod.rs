//! Callback delivery: POST a task's result to the caller's `callback_url`.
//!
//! - [`sign`]: Standard Webhooks signatures, for our sender and for receivers verifying it.

pub mod sign;

pub use sign::{sign, verify};

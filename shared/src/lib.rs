//! taskrunner: run a `.py` or `.sh` task on a worker, watch it without holding the wait in
//! memory, and POST the result to the caller's callback URL.
//!
//! This crate holds everything but the binaries: the request model and its validation, the
//! ports (traits) and their adapters, the steps of the state machine, the embedded engine
//! that runs `infra/state-machine.asl.json`, and the HTTP router served both by
//! `taskrunner serve` and by the `api` Lambda.

pub mod adapters;
pub mod auth;
pub mod callback;
pub mod chain;
pub mod clock;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod listing;
pub mod model;
pub mod ports;
pub mod secret;
pub mod service;
pub mod sqlite;
pub mod status;
pub mod steps;
pub mod task;
pub mod validate;
pub mod webhooks;

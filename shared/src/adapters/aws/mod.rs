//! AWS adapters.

pub mod codebuild;

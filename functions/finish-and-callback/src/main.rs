//! The `finish-and-callback` Lambda: terminates the worker and POSTs the callback.

use taskrunner::steps::Step;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_step(Step::Finish).await
}

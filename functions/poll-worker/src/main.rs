//! The `poll-worker` Lambda: the state machine's PollWorker step.

use taskrunner::steps::Step;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_step(Step::Poll).await
}

//! The `submit` Lambda: the state machine's Submit step (starts the CodeBuild worker).

use taskrunner::steps::Step;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_step(Step::Submit).await
}

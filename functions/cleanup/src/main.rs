//! The `cleanup` Lambda: the sweep, on an EventBridge schedule.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_cleanup().await
}

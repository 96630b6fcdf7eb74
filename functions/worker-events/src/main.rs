//! The `worker-events` Lambda: the EventBridge rule on CodeBuild's events invokes it when a
//! worker ends, and it resumes the execution waiting for that worker.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_worker_events().await
}

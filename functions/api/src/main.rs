//! The `api` Lambda: the HTTP API (the same router as `taskrunner serve`) behind API Gateway.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    taskrunner::lambda::init_tracing();
    taskrunner::lambda::run_api().await
}

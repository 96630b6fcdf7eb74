//! One place that turns an AWS SDK error into a [`PortError`], for every AWS adapter.
//!
//! Transient (worth retrying later): throttling, timeouts, failures to reach the service,
//! unreadable responses and server-side (5xx) errors. Everything else is Permanent, with a
//! message that names the operation, the AWS error code and what to change.

use std::any::Any;

use aws_sdk_sfn::config::http::HttpResponse;
use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::ports::PortError;

/// Error codes AWS services use for throttling and for failures on their side.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServiceError",
    "InternalServiceErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Error codes that mean the caller's identity or its permissions are wrong.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "NotAuthorized",
];

/// Error codes that mean the credentials themselves are missing, wrong or expired.
const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
];

/// Turns an SDK error from `operation` into a [`PortError`].
///
/// `operation` is the IAM action, `service:Operation` (`secretsmanager:GetSecretValue`), so
/// that a permission error can say which permission is missing. The message carries the
/// AWS error code and message, never the request: secret values cannot leak through it.
pub(crate) fn port_error<E, R>(operation: &str, err: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => PortError::Transient(format!(
            "AWS {operation} timed out; try again ({})",
            DisplayErrorContext(&err)
        )),
        SdkError::DispatchFailure(_) => PortError::Transient(format!(
            "AWS {operation}: could not reach the service ({}); check the network or endpoint and try again",
            DisplayErrorContext(&err)
        )),
        SdkError::ResponseError(_) => PortError::Transient(format!(
            "AWS {operation}: the response could not be read ({}); try again",
            DisplayErrorContext(&err)
        )),
        SdkError::ConstructionFailure(_) => PortError::Permanent(format!(
            "AWS {operation}: the request could not be built ({}); check the AWS configuration (region, credentials, endpoint)",
            DisplayErrorContext(&err)
        )),
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or("UnknownError");
            let message = err.message().unwrap_or("no message");
            let status = http_status(service.raw());
            let described = match status {
                Some(status) => {
                    format!("AWS {operation} failed: {code} (HTTP {status}): {message}")
                }
                None => format!("AWS {operation} failed: {code}: {message}"),
            };
            if TRANSIENT_CODES.contains(&code) || status.is_some_and(|s| s >= 500) {
                PortError::Transient(format!("{described}; try again later"))
            } else if ACCESS_CODES.contains(&code) {
                PortError::Permanent(format!(
                    "{described}; grant the IAM permission {operation} to the role taskrunner runs as"
                ))
            } else if CREDENTIAL_CODES.contains(&code) {
                PortError::Permanent(format!(
                    "{described}; check the AWS credentials (missing, wrong or expired) and the region"
                ))
            } else {
                PortError::Permanent(format!(
                    "{described}; retrying will not help until the request or the AWS resources change"
                ))
            }
        }
        // `SdkError` is non-exhaustive.
        _ => PortError::Permanent(format!(
            "AWS {operation} failed: {}",
            DisplayErrorContext(&err)
        )),
    }
}

/// The HTTP status of a raw response, when it is the SDK's own response type.
fn http_status<R: 'static>(raw: &R) -> Option<u16> {
    (raw as &dyn Any)
        .downcast_ref::<HttpResponse>()
        .map(|response| response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use aws_sdk_sfn::error::ErrorMetadata;
    use aws_sdk_sfn::operation::describe_execution::DescribeExecutionError;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn service_error(code: &str) -> SdkError<DescribeExecutionError, ()> {
        SdkError::service_error(
            DescribeExecutionError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("it went wrong")
                    .build(),
            ),
            (),
        )
    }

    #[test]
    fn throttling_and_server_side_codes_are_transient() {
        for code in [
            "ThrottlingException",
            "ServiceUnavailable",
            "InternalFailure",
        ] {
            let err = port_error("states:DescribeExecution", service_error(code));
            assert!(err.is_transient(), "{code}: {err}");
            assert!(err.to_string().contains(code), "{err}");
        }
    }

    #[test]
    fn access_denied_is_permanent_and_names_the_permission() {
        let err = port_error(
            "states:DescribeExecution",
            service_error("AccessDeniedException"),
        );
        assert!(!err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(text.contains("AccessDeniedException"), "{text}");
        assert!(
            text.contains("grant the IAM permission states:DescribeExecution"),
            "{text}"
        );
    }

    #[test]
    fn other_client_errors_are_permanent() {
        let err = port_error("states:DescribeExecution", service_error("InvalidArn"));
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("InvalidArn"), "{err}");
        let err = port_error(
            "states:DescribeExecution",
            service_error("UnrecognizedClientException"),
        );
        assert!(
            err.to_string().contains("check the AWS credentials"),
            "{err}"
        );
    }

    #[test]
    fn timeouts_and_unreachable_endpoints_are_transient() {
        let timeout: SdkError<DescribeExecutionError, ()> = SdkError::timeout_error("slow");
        assert!(port_error("states:DescribeExecution", timeout).is_transient());
        let dispatch: SdkError<DescribeExecutionError, ()> = SdkError::dispatch_failure(
            aws_sdk_sfn::error::ConnectorError::io("connection refused".into()),
        );
        assert!(port_error("states:DescribeExecution", dispatch).is_transient());
        let construction: SdkError<DescribeExecutionError, ()> =
            SdkError::construction_failure("no region");
        assert!(!port_error("states:DescribeExecution", construction).is_transient());
    }

    /// A 5xx without a known code is transient: the status comes from the raw response.
    #[tokio::test]
    async fn a_server_error_status_is_transient() {
        let unavailable = mock!(aws_sdk_sfn::Client::describe_execution)
            .sequence()
            .http_status(503, None)
            .build();
        let client = mock_client!(aws_sdk_sfn, RuleMode::Sequential, [&unavailable], |c| c
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()));
        let err = client
            .describe_execution()
            .execution_arn("arn:aws:states:us-east-1:123456789012:execution:m:t")
            .send()
            .await
            .unwrap_err();
        let err = port_error("states:DescribeExecution", err);
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
    }
}

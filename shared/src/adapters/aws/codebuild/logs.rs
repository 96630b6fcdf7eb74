//! The tail of a build's log, read backwards from CloudWatch Logs.

use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};

use super::sdk_error;
use crate::ports::{LogTail, PortError};

/// Most GetLogEvents pages one tail reads (each up to 1 MB or 10,000 events).
const MAX_PAGES: usize = 50;

/// The last `max_bytes` of the stream, starting on a UTF-8 boundary; `truncated` when earlier
/// output exists. A stream that does not exist (yet) is an empty log.
pub async fn tail(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    max_bytes: usize,
) -> Result<LogTail, PortError> {
    // Pages newest first; each page's events are oldest first.
    let mut pages: Vec<String> = Vec::new();
    let mut gathered = 0usize;
    let mut token: Option<String> = None;
    let mut more = false;
    for _ in 0..MAX_PAGES {
        let sent = token.clone();
        let page = match client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(false)
            .set_next_token(sent.clone())
            .send()
            .await
        {
            Ok(page) => page,
            Err(SdkError::ServiceError(e))
                if e.err().code() == Some("ResourceNotFoundException") =>
            {
                break;
            }
            Err(e) => return Err(sdk_error("GetLogEvents", e)),
        };
        let mut text = String::new();
        for event in page.events() {
            let message = event.message().unwrap_or_default();
            text.push_str(message);
            if !message.ends_with('\n') {
                text.push('\n');
            }
        }
        gathered += text.len();
        pages.push(text);
        // The same token back means the start of the stream was reached.
        let next = page.next_backward_token().map(str::to_owned);
        let exhausted = next.is_none() || next == sent;
        if exhausted {
            more = false;
            break;
        }
        more = true;
        if gathered > max_bytes {
            break;
        }
        token = next;
    }
    let mut text = String::with_capacity(gathered);
    for page in pages.iter().rev() {
        text.push_str(page);
    }
    Ok(cut(&text, max_bytes, more))
}

/// The last `max_bytes` of `text`, moved forward to a character boundary.
fn cut(text: &str, max_bytes: usize, more_before: bool) -> LogTail {
    if text.len() <= max_bytes {
        return LogTail {
            text: text.to_owned(),
            truncated: more_before,
        };
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    LogTail {
        text: text[start..].to_owned(),
        truncated: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        let tail = cut("aé€z", 4, false);
        // "€" is 3 bytes and "z" one: the cut lands inside "é" and moves past it.
        assert_eq!(tail.text, "€z");
        assert!(tail.truncated);
        let whole = cut("abc", 10, false);
        assert_eq!(whole.text, "abc");
        assert!(!whole.truncated);
    }
}

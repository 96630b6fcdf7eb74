//! Standard Webhooks signatures (symmetric `v1`): HMAC-SHA256 over `{id}.{timestamp}.{body}`,
//! keyed with the base64 part of a `whsec_` secret, sent base64-encoded as `v1,<signature>`.
//!
//! [`sign`] is what the sender uses; [`verify`] is for receivers (and our tests), so a
//! receiver written in Rust needs no other library.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The `webhook-signature` entry (`v1,<base64>`) for one message and one secret.
///
/// The secret is `whsec_<base64>` (the prefix may be left out). The error says why the
/// secret is unusable and never contains it.
pub fn sign(
    message_id: &str,
    timestamp_secs: i64,
    body: &[u8],
    secret: &Secret,
) -> Result<String, String> {
    let key = decode_secret(secret)?;
    let mac = mac(&key, message_id, timestamp_secs, body);
    Ok(format!("v1,{}", STANDARD.encode(mac)))
}

/// Checks a received webhook: `headers` are the values of `webhook-id`, `webhook-timestamp`
/// and `webhook-signature`. Accepted when the timestamp is within `tolerance` of `now` and
/// any `v1` signature of the header matches the body under any of `secrets` (rotation).
pub fn verify(
    headers: (&str, &str, &str),
    body: &[u8],
    secrets: &[Secret],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), String> {
    let (message_id, timestamp, signatures) = headers;
    if secrets.is_empty() {
        return Err("no signing secret is configured to verify the webhook with".to_owned());
    }
    let timestamp_secs: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp:?} is not a unix time in seconds"))?;
    let skew = now.timestamp().abs_diff(timestamp_secs);
    if skew > tolerance.as_secs() {
        return Err(format!(
            "webhook-timestamp {timestamp_secs} is {skew} s away from now, beyond the tolerance of \
             {} s: a replayed message, or the clocks of sender and receiver disagree",
            tolerance.as_secs()
        ));
    }
    let expected = secrets
        .iter()
        .map(|secret| {
            Ok(mac(
                &decode_secret(secret)?,
                message_id,
                timestamp_secs,
                body,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let received: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|signature| STANDARD.decode(signature).ok())
        .collect();
    if received.is_empty() {
        return Err("webhook-signature holds no v1 signature".to_owned());
    }
    let matched = received
        .iter()
        .any(|got| expected.iter().any(|want| bool::from(want[..].ct_eq(got))));
    if matched {
        Ok(())
    } else {
        Err(
            "no signature in webhook-signature matches the body with the configured secrets"
                .to_owned(),
        )
    }
}

/// The key bytes of a `whsec_<base64>` secret.
fn decode_secret(secret: &Secret) -> Result<Vec<u8>, String> {
    let value = secret.expose();
    let encoded = value.strip_prefix("whsec_").unwrap_or(value);
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "signing secret is not whsec_ followed by base64".to_owned())?;
    if key.is_empty() {
        return Err(
            "signing secret is empty; give whsec_ followed by base64 of random bytes".to_owned(),
        );
    }
    Ok(key)
}

fn mac(key: &[u8], message_id: &str, timestamp_secs: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector of the Standard Webhooks reference libraries' tests.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn secrets() -> Vec<Secret> {
        vec![Secret::new(SECRET)]
    }

    #[test]
    fn signs_the_published_vector() {
        assert_eq!(
            sign(ID, TIMESTAMP, BODY, &Secret::new(SECRET)).unwrap(),
            SIGNATURE
        );
        // Reference libraries also accept the secret without its prefix.
        let bare = Secret::new(SECRET.trim_start_matches("whsec_"));
        assert_eq!(sign(ID, TIMESTAMP, BODY, &bare).unwrap(), SIGNATURE);
    }

    #[test]
    fn verifies_the_published_vector() {
        let headers = (ID, "1614265330", SIGNATURE);
        verify(headers, BODY, &secrets(), at(TIMESTAMP + 10), TOLERANCE).unwrap();
    }

    #[test]
    fn a_flipped_body_byte_fails() {
        let mut body = BODY.to_vec();
        body[3] ^= 0x01;
        let headers = (ID, "1614265330", SIGNATURE);
        assert!(verify(headers, &body, &secrets(), at(TIMESTAMP), TOLERANCE).is_err());
    }

    #[test]
    fn a_changed_id_or_timestamp_fails() {
        let now = at(TIMESTAMP);
        assert!(
            verify(
                ("msg_other", "1614265330", SIGNATURE),
                BODY,
                &secrets(),
                now,
                TOLERANCE
            )
            .is_err()
        );
        assert!(
            verify(
                (ID, "1614265331", SIGNATURE),
                BODY,
                &secrets(),
                now,
                TOLERANCE
            )
            .is_err()
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let headers = (ID, "1614265330", SIGNATURE);
        for now in [at(TIMESTAMP + 301), at(TIMESTAMP - 301)] {
            let message = verify(headers, BODY, &secrets(), now, TOLERANCE).unwrap_err();
            assert!(message.contains("tolerance"), "{message}");
        }
        let message = verify(
            (ID, "yesterday", SIGNATURE),
            BODY,
            &secrets(),
            at(TIMESTAMP),
            TOLERANCE,
        )
        .unwrap_err();
        assert!(message.contains("webhook-timestamp"), "{message}");
    }

    #[test]
    fn any_of_several_signatures_and_secrets_is_accepted() {
        let other = Secret::new("whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=");
        let header = format!(
            "v1a,bm90LW91cnM= v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {}",
            sign(ID, TIMESTAMP, BODY, &other).unwrap()
        );
        let secrets = vec![Secret::new(SECRET), other];
        verify(
            (ID, "1614265330", &header),
            BODY,
            &secrets,
            at(TIMESTAMP),
            TOLERANCE,
        )
        .unwrap();
        let only_first = &secrets[..1];
        assert!(
            verify(
                (ID, "1614265330", &header),
                BODY,
                only_first,
                at(TIMESTAMP),
                TOLERANCE
            )
            .is_err()
        );
    }

    #[test]
    fn truncated_or_missing_signatures_fail() {
        let now = at(TIMESTAMP);
        for header in [
            "",
            "v1,",
            "v1,g0hM9SsE",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert!(
                verify((ID, "1614265330", header), BODY, &secrets(), now, TOLERANCE).is_err(),
                "{header:?}"
            );
        }
    }

    #[test]
    fn unusable_secrets_are_reported_without_their_value() {
        let message = sign(
            ID,
            TIMESTAMP,
            BODY,
            &Secret::new("whsec_not base64 canary!"),
        )
        .unwrap_err();
        assert!(message.contains("base64"), "{message}");
        assert!(!message.contains("canary"), "{message}");
        assert!(sign(ID, TIMESTAMP, BODY, &Secret::new("whsec_")).is_err());
    }
}

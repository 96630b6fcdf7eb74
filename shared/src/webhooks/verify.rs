//! Signature checks of webhook deliveries, over the raw body, in constant time.
//!
//! | provider | header | value |
//! |---|---|---|
//! | GitHub | `X-Hub-Signature-256` | `sha256=` + hex HMAC-SHA256 of the body |
//! | GitLab | `X-Gitlab-Token` | the shared token itself |
//! | Gitea / Forgejo | `X-Gitea-Signature` / `X-Forgejo-Signature` | bare hex HMAC-SHA256 |
//! | Bitbucket | `X-Hub-Signature` | `sha256=` + hex HMAC-SHA256 |

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Provider, header};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `body` under `secret`.
fn mac(secret: &Secret, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Checks a hex signature (after its `prefix`) against the body's HMAC.
fn check_hmac(
    name: &str,
    value: Option<&str>,
    prefix: &str,
    body: &[u8],
    secret: &Secret,
) -> Result<(), String> {
    let value = value.ok_or_else(|| {
        format!("the {name} header is missing; set the webhook's secret in the git host's webhook settings")
    })?;
    let received = value
        .trim()
        .strip_prefix(prefix)
        .and_then(|hex_part| hex::decode(hex_part).ok())
        .ok_or_else(|| format!("the {name} header is not {prefix}<hex HMAC-SHA256>"))?;
    if bool::from(mac(secret, body)[..].ct_eq(&received)) {
        Ok(())
    } else {
        Err(format!(
            "the {name} signature does not match the body under the configured secret"
        ))
    }
}

/// Checks a delivery's signature or token. The error says what is wrong, never the secret.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &Secret,
) -> Result<(), String> {
    match provider {
        Provider::Github => check_hmac(
            "X-Hub-Signature-256",
            header(headers, "x-hub-signature-256"),
            "sha256=",
            body,
            secret,
        ),
        Provider::Bitbucket => check_hmac(
            "X-Hub-Signature",
            header(headers, "x-hub-signature"),
            "sha256=",
            body,
            secret,
        ),
        Provider::Gitea => {
            let (name, value) = match header(headers, "x-gitea-signature") {
                Some(value) => ("X-Gitea-Signature", Some(value)),
                None => (
                    "X-Forgejo-Signature",
                    header(headers, "x-forgejo-signature"),
                ),
            };
            check_hmac(name, value, "", body, secret)
        }
        Provider::Gitlab => {
            let token = header(headers, "x-gitlab-token").ok_or_else(|| {
                "the X-Gitlab-Token header is missing; set the webhook's secret token in GitLab's webhook settings".to_owned()
            })?;
            // Digests first, so the comparison takes the same time whatever the lengths.
            let want = Sha256::digest(secret.expose().as_bytes());
            let got = Sha256::digest(token.as_bytes());
            if bool::from(want[..].ct_eq(&got[..])) {
                Ok(())
            } else {
                Err("the X-Gitlab-Token does not match the configured secret token".to_owned())
            }
        }
    }
}

/// The header a provider would send for `body` under `secret`: name and value. For clients
/// and tests that play the git host.
pub fn signature_header(
    provider: Provider,
    secret: &Secret,
    body: &[u8],
) -> (&'static str, String) {
    let hex_mac = || hex::encode(mac(secret, body));
    match provider {
        Provider::Github => ("x-hub-signature-256", format!("sha256={}", hex_mac())),
        Provider::Bitbucket => ("x-hub-signature", format!("sha256={}", hex_mac())),
        Provider::Gitea => ("x-gitea-signature", hex_mac()),
        Provider::Gitlab => ("x-gitlab-token", secret.expose().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::webhooks::test_headers as headers;

    /// GitHub's published example ("Validating webhook deliveries", docs.github.com).
    #[test]
    fn githubs_published_vector() {
        let secret = Secret::new("It's a Secret to Everybody");
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            signature_header(Provider::Github, &secret, b"Hello, World!").1,
            expected
        );
        let good = headers(&[("x-hub-signature-256", expected)]);
        assert!(verify(Provider::Github, &good, b"Hello, World!", &secret).is_ok());
        assert!(verify(Provider::Github, &good, b"Hello, World?", &secret).is_err());
        let other = Secret::new("It's a Secret to Everybody!");
        assert!(verify(Provider::Github, &good, b"Hello, World!", &other).is_err());
        // The same HMAC, as Bitbucket and Gitea carry it.
        let bitbucket = headers(&[("x-hub-signature", expected)]);
        assert!(verify(Provider::Bitbucket, &bitbucket, b"Hello, World!", &secret).is_ok());
        let gitea = headers(&[("x-forgejo-signature", &expected[7..])]);
        assert!(verify(Provider::Gitea, &gitea, b"Hello, World!", &secret).is_ok());
    }

    #[test]
    fn every_flipped_byte_and_missing_header_is_refused() {
        let secret = Secret::new("s3cret");
        let body = br#"{"ref":"refs/heads/main"}"#;
        for provider in Provider::ALL {
            let (name, value) = signature_header(provider, &secret, body);
            assert!(verify(provider, &headers(&[(name, &value)]), body, &secret).is_ok());
            let mut tampered = body.to_vec();
            tampered[3] ^= 1;
            let verdict = verify(provider, &headers(&[(name, &value)]), &tampered, &secret);
            assert_eq!(verdict.is_err(), provider != Provider::Gitlab, "{provider}");
            let mut flipped = value.clone().into_bytes();
            let last = flipped.len() - 1;
            flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
            let flipped = String::from_utf8(flipped).unwrap();
            let err = verify(provider, &headers(&[(name, &flipped)]), body, &secret).unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
            let err = verify(provider, &HeaderMap::new(), body, &secret).unwrap_err();
            assert!(err.contains("missing"), "{provider}: {err}");
        }
    }
}

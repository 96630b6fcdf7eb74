//! Callback delivery: POST a task's result to the caller's `callback_url`.
//!
//! - [`deliver`]: [`CallbackSender`] sends one attempt (JSON object body, bearer token,
//!   Standard Webhooks headers) and classifies the outcome; retrying is the state machine's
//!   job, not this module's.
//! - [`guard`]: the SSRF guard. URLs are checked at submit time ([`check_callback_url`]) and
//!   host names again at send time, by a DNS resolver that hands the connection only
//!   addresses it checked.
//! - [`sign`]: Standard Webhooks signatures, for our sender and for receivers verifying it.

pub mod deliver;
pub mod guard;
mod resolve;
pub mod sign;

use std::time::Duration;

pub use deliver::{CallbackSender, Delivery, DeliveryError};
pub use guard::{check_callback_url, is_forbidden};
pub use ipnet::IpNet;
pub use sign::{sign, verify};

/// Where callbacks may go and how long one attempt may take.
#[derive(Clone, Debug)]
pub struct CallbackPolicy {
    /// Time allowed for one attempt, from connecting to reading the answer (default 15 s).
    pub timeout: Duration,
    /// Host names always allowed, whatever they resolve to (exact match, case-insensitive).
    pub allow_hosts: Vec<String>,
    /// Address ranges always allowed, even when private or loopback.
    pub allow_cidrs: Vec<IpNet>,
    /// Whether loopback addresses are allowed (true in the embedded mode, so a receiver on
    /// the same machine works).
    pub allow_loopback: bool,
    /// Whether only `https://` callback URLs are accepted.
    pub require_https: bool,
}

impl Default for CallbackPolicy {
    /// The embedded mode's policy: 15 s timeout, loopback allowed, http accepted.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            allow_loopback: true,
            require_https: false,
        }
    }
}

impl CallbackPolicy {
    /// The policy for a shared deployment (AWS): like the default, but loopback refused.
    pub fn strict() -> Self {
        Self {
            allow_loopback: false,
            ..Self::default()
        }
    }

    /// Whether `host` (a URL host or a name being resolved) is in `allow_hosts`.
    pub(crate) fn host_is_allowed(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.allow_hosts
            .iter()
            .any(|allowed| normalize_host(allowed).eq_ignore_ascii_case(host))
    }
}

/// A host as compared with the allow-list: without IPv6 brackets or a trailing dot.
fn normalize_host(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

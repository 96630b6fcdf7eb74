//! The DNS resolver of the callback client: resolves with tokio and keeps only the addresses
//! the policy allows, so the connection goes to an address that was checked. Resolving once
//! here, instead of checking a separate lookup, leaves no window for DNS rebinding.

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::CallbackPolicy;
use super::guard::{how_to_allow, refused_class};

/// Resolves callback hosts, dropping forbidden addresses.
pub(crate) struct GuardedResolver {
    policy: Arc<CallbackPolicy>,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<CallbackPolicy>) -> Self {
        Self { policy }
    }
}

/// Every address a host resolved to is forbidden: the delivery is refused, not retried.
#[derive(Debug)]
pub(crate) struct ForbiddenHost(pub(crate) String);

impl fmt::Display for ForbiddenHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for ForbiddenHost {}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0 is replaced by the URL's port (or the scheme's default) by reqwest.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = allowed_addrs(&host, resolved, &policy)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses of `host` the policy allows, or why there are none.
pub(crate) fn allowed_addrs(
    host: &str,
    resolved: Vec<SocketAddr>,
    policy: &CallbackPolicy,
) -> Result<Vec<SocketAddr>, Box<dyn Error + Send + Sync>> {
    if resolved.is_empty() {
        return Err(format!("callback host {host} resolved to no address").into());
    }
    if policy.host_is_allowed(host) {
        return Ok(resolved);
    }
    let mut refused = Vec::new();
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match refused_class(addr.ip(), policy) {
            Some(class) => {
                refused.push((addr.ip(), class));
                false
            }
            None => true,
        })
        .collect();
    if !allowed.is_empty() {
        if !refused.is_empty() {
            tracing::warn!(
                host,
                ?refused,
                "callback host also resolves to forbidden addresses; skipped them"
            );
        }
        return Ok(allowed);
    }
    let listed: Vec<String> = refused
        .iter()
        .map(|(ip, class)| format!("{ip} ({class})"))
        .collect();
    let hint = refused
        .first()
        .map(|(_, class)| how_to_allow(class))
        .unwrap_or_default();
    Err(Box::new(ForbiddenHost(format!(
        "callback host {host} resolves only to forbidden addresses: {}; callbacks to them are \
         refused to protect internal services. {hint}",
        listed.join(", ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 0)
    }

    #[test]
    fn forbidden_addresses_are_dropped_and_public_ones_kept() {
        let policy = CallbackPolicy::strict();
        let kept = allowed_addrs(
            "mixed.test",
            vec![addr("10.0.0.1"), addr("93.184.216.34"), addr("::1")],
            &policy,
        )
        .unwrap();
        assert_eq!(kept, vec![addr("93.184.216.34")]);
    }

    #[test]
    fn a_host_with_only_forbidden_addresses_is_refused_with_a_reason() {
        let policy = CallbackPolicy::strict();
        let err = allowed_addrs(
            "internal.test",
            vec![addr("169.254.169.254"), addr("fd00::1")],
            &policy,
        )
        .unwrap_err();
        assert!(err.is::<ForbiddenHost>());
        let message = err.to_string();
        assert!(message.contains("169.254.169.254 (link-local"), "{message}");
        assert!(message.contains("fd00::1 (unique-local)"), "{message}");
    }

    #[test]
    fn allowed_hosts_keep_all_their_addresses() {
        let mut policy = CallbackPolicy::strict();
        policy.allow_hosts = vec!["Internal.Test".to_owned()];
        let kept = allowed_addrs("internal.test.", vec![addr("10.0.0.1")], &policy).unwrap();
        assert_eq!(kept, vec![addr("10.0.0.1")]);
    }

    #[tokio::test]
    async fn localhost_is_resolved_and_filtered_by_the_loopback_flag() {
        let name: Name = "localhost".parse().unwrap();
        let refused = GuardedResolver::new(Arc::new(CallbackPolicy::strict()))
            .resolve(name)
            .await;
        let err = refused.err().expect("loopback must be refused");
        assert!(err.to_string().contains("loopback"), "{err}");

        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = GuardedResolver::new(Arc::new(CallbackPolicy::default()))
            .resolve(name)
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}

//! The SSRF guard: which callback URLs and addresses may be contacted.
//!
//! A callback URL is chosen by whoever submits a task, so without a guard it could point
//! the service at its own internal network or the cloud metadata endpoint. Checking the URL
//! at submit time catches literal addresses early; host names are checked when they are
//! resolved, just before connecting (see the resolver in `resolve.rs`), so a name cannot
//! pass one lookup and connect to another address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use super::CallbackPolicy;

/// Checks a callback URL: http(s) scheme, no credentials, a host, and no literal address
/// the policy forbids. Host names are not resolved here; they are checked at send time.
///
/// The error says what is wrong and how to fix it, and never repeats a password.
pub fn check_callback_url(url: &str, policy: &CallbackPolicy) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| {
        format!(
            "callback_url is not a valid absolute URL ({e}); give one like https://example.com/hook"
        )
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("callback_url must not carry credentials (user:password@host); \
                    send a token with callback_url_token instead, it goes in the Authorization header"
            .to_owned());
    }
    match parsed.scheme() {
        "https" => {}
        "http" if !policy.require_https => {}
        "http" => {
            return Err(format!(
                "callback_url {parsed}: only https:// callback URLs are accepted here; use https"
            ));
        }
        other => {
            return Err(format!(
                "callback_url {parsed}: scheme {other:?} is not supported; use http:// or https://"
            ));
        }
    }
    let host = match parsed.host() {
        Some(host) => host,
        None => return Err(format!("callback_url {parsed}: has no host")),
    };
    let ip = match host {
        Host::Domain(_) => return Ok(parsed),
        Host::Ipv4(ip) => IpAddr::V4(ip),
        Host::Ipv6(ip) => IpAddr::V6(ip),
    };
    if let Some(host) = parsed.host_str()
        && policy.host_is_allowed(host)
    {
        return Ok(parsed);
    }
    if let Some(class) = refused_class(ip, policy) {
        return Err(format!(
            "callback_url {parsed}: address {ip} is {class}; callbacks to it are refused to protect \
             internal services. {}",
            how_to_allow(class)
        ));
    }
    Ok(parsed)
}

/// The class of an address callbacks must not reach by default, or `None` for a public one.
///
/// IPv4 addresses embedded in IPv6 (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they carry.
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

/// The class of `ip` when the policy refuses it, after the allow-list's exceptions.
/// Host names in `allow_hosts` are handled by the callers, which know the name.
pub(crate) fn refused_class(ip: IpAddr, policy: &CallbackPolicy) -> Option<&'static str> {
    let class = is_forbidden(ip)?;
    let canonical = ip.to_canonical();
    if policy
        .allow_cidrs
        .iter()
        .any(|net| net.contains(&ip) || net.contains(&canonical))
    {
        return None;
    }
    if class == LOOPBACK && policy.allow_loopback {
        return None;
    }
    Some(class)
}

/// The sentence telling an operator how to open an exception for a class.
pub(crate) fn how_to_allow(class: &str) -> &'static str {
    if class == LOOPBACK {
        "To allow it, enable allow_loopback or add the host or address range to the callback allow-list."
    } else {
        "To allow it, add the host or address range to the callback allow-list."
    }
}

const LOOPBACK: &str = "loopback";
const PRIVATE: &str = "private";
const LINK_LOCAL: &str = "link-local";
const METADATA: &str = "link-local (cloud metadata endpoint)";
const UNSPECIFIED: &str = "unspecified";
const MULTICAST: &str = "multicast";
const BROADCAST: &str = "broadcast";
const CGNAT: &str = "CGNAT shared address space";
const UNIQUE_LOCAL: &str = "unique-local";
const DOCUMENTATION: &str = "documentation range";
const BENCHMARK: &str = "benchmarking range";
const RESERVED: &str = "reserved";

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => METADATA,
        (0, _, _) => UNSPECIFIED,
        (127, _, _) => LOOPBACK,
        (10, _, _) => PRIVATE,
        (172, 16..=31, _) => PRIVATE,
        (192, 168, _) => PRIVATE,
        (169, 254, _) => LINK_LOCAL,
        (100, 64..=127, _) => CGNAT,
        (192, 0, 0) => RESERVED,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => DOCUMENTATION,
        (198, 18..=19, _) => BENCHMARK,
        (224..=239, _, _) => MULTICAST,
        _ if ip == Ipv4Addr::BROADCAST => BROADCAST,
        (240..=255, _, _) => RESERVED,
        _ => return None,
    };
    Some(class)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if ip.is_loopback() {
        return Some(LOOPBACK);
    }
    if let Some(v4) = embedded_v4(ip) {
        // An embedded public IPv4 address is fine; a forbidden one keeps its class.
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    let class = match segments[0] {
        0xfe80..=0xfebf => LINK_LOCAL,
        0xfec0..=0xfeff => "site-local",
        0xfc00..=0xfdff => UNIQUE_LOCAL,
        0xff00..=0xffff => MULTICAST,
        0x2001 if segments[1] == 0x0db8 => DOCUMENTATION,
        0x3fff if segments[1] <= 0x0fff => DOCUMENTATION,
        0x0064 if segments[1] == 0xff9b && segments[2] == 0x0001 => "NAT64 local-use",
        // Everything else under ::/8 besides the forms handled above is reserved.
        0x0000..=0x00ff => RESERVED,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64 (well-known prefix)
/// or 6to4 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> CallbackPolicy {
        CallbackPolicy::strict()
    }

    fn refusal(url: &str, policy: &CallbackPolicy) -> String {
        match check_callback_url(url, policy) {
            Ok(url) => panic!("{url} was accepted"),
            Err(message) => message,
        }
    }

    #[test]
    fn literal_internal_addresses_are_refused_with_their_class() {
        let cases = [
            ("http://127.0.0.1/hook", "127.0.0.1", "loopback"),
            ("http://10.0.0.1/hook", "10.0.0.1", "private"),
            ("http://172.20.1.1/hook", "172.20.1.1", "private"),
            ("http://192.168.1.1/hook", "192.168.1.1", "private"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
                "cloud metadata",
            ),
            ("http://169.254.10.1/", "169.254.10.1", "link-local"),
            ("http://[::1]:8080/hook", "::1", "loopback"),
            (
                "http://[::ffff:127.0.0.1]/hook",
                "::ffff:127.0.0.1",
                "loopback",
            ),
            (
                "http://[::ffff:10.1.2.3]/hook",
                "::ffff:10.1.2.3",
                "private",
            ),
            ("http://100.64.0.1/hook", "100.64.0.1", "CGNAT"),
            ("http://[fd00::1]/hook", "fd00::1", "unique-local"),
            ("http://[fe80::1]/hook", "fe80::1", "link-local"),
            ("http://0.0.0.0/hook", "0.0.0.0", "unspecified"),
            ("http://[::]/hook", "::", "unspecified"),
            ("http://224.0.0.1/hook", "224.0.0.1", "multicast"),
            (
                "http://255.255.255.255/hook",
                "255.255.255.255",
                "broadcast",
            ),
            // Other spellings of 127.0.0.1 are normalized by the URL parser.
            ("http://2130706433/hook", "127.0.0.1", "loopback"),
            ("http://127.1/hook", "127.0.0.1", "loopback"),
        ];
        for (url, address, class) in cases {
            let message = refusal(url, &strict());
            assert!(
                message.contains(address) && message.contains(class),
                "{url}: {message}"
            );
            assert!(message.contains("allow"), "{url}: {message}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        for url in [
            "https://example.com/hook",
            "http://8.8.8.8/hook",
            "http://[2606:4700::1111]/hook",
            "http://[::ffff:8.8.8.8]/hook",
            "http://172.32.0.1/",
        ] {
            assert!(check_callback_url(url, &strict()).is_ok(), "{url}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_keep_the_class_of_the_address_they_carry() {
        for ip in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(is_forbidden(ip), Some("loopback"), "{ip}");
        }
        let public: IpAddr = "64:ff9b::808:808".parse().unwrap();
        assert_eq!(is_forbidden(public), None);
    }

    #[test]
    fn the_allow_list_opens_exceptions() {
        let mut policy = strict();
        policy.allow_loopback = true;
        assert!(check_callback_url("http://127.0.0.1:9/hook", &policy).is_ok());
        assert!(check_callback_url("http://[::1]:9/hook", &policy).is_ok());
        assert!(check_callback_url("http://[::ffff:127.0.0.1]/hook", &policy).is_ok());
        assert!(check_callback_url("http://10.0.0.1/hook", &policy).is_err());

        let mut policy = strict();
        policy.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(check_callback_url("http://10.9.8.7/hook", &policy).is_ok());
        assert!(check_callback_url("http://[::ffff:10.9.8.7]/hook", &policy).is_ok());
        assert!(check_callback_url("http://192.168.0.1/hook", &policy).is_err());

        let mut policy = strict();
        policy.allow_hosts = vec!["169.254.169.254".to_owned(), "[FD00::1]".to_owned()];
        assert!(check_callback_url("http://169.254.169.254/", &policy).is_ok());
        assert!(check_callback_url("http://[fd00::1]/", &policy).is_ok());
    }

    #[test]
    fn loopback_refusal_says_how_to_allow_it() {
        let message = refusal("http://127.0.0.1/", &strict());
        assert!(message.contains("allow_loopback"), "{message}");
    }

    #[test]
    fn http_is_refused_when_https_is_required() {
        let policy = CallbackPolicy {
            require_https: true,
            ..CallbackPolicy::default()
        };
        let message = refusal("http://example.com/hook", &policy);
        assert!(message.contains("https"), "{message}");
        assert!(check_callback_url("https://example.com/hook", &policy).is_ok());
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_repeating_them() {
        let message = refusal("https://user:pw-canary@example.com/", &strict());
        assert!(message.contains("callback_url_token"), "{message}");
        assert!(!message.contains("pw-canary"), "{message}");
        assert!(refusal("https://user@example.com/", &strict()).contains("credentials"));
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused() {
        assert!(refusal("ftp://example.com/x", &strict()).contains("scheme"));
        assert!(refusal("file:///etc/passwd", &strict()).contains("scheme"));
        assert!(refusal("example.com/hook", &strict()).contains("not a valid"));
        assert!(refusal("http://", &strict()).contains("not a valid"));
    }
}

//! Rate limits (governor): one global bucket, one per token, one per client IP for anonymous
//! routes. Each is configured by `PATCHWORK_RATE_LIMIT_{GLOBAL,TOKEN,IP}_{RPS,BURST}`; `RPS=0`
//! turns that limiter off. Keyed state is trimmed every minute so churning keys cannot grow
//! memory.

use std::net::IpAddr;

use crate::config::{ProxyNet, is_trusted};
use std::num::NonZeroU32;

use axum::http::{HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::error::ApiError;

pub struct RateLimits {
    global: Option<DefaultDirectRateLimiter>,
    token: Option<DefaultKeyedRateLimiter<String>>,
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    trusted_proxies: Vec<ProxyNet>,
}

fn quota(rps: u32, burst: u32) -> Option<Quota> {
    let rps = NonZeroU32::new(rps)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rps);
    Some(Quota::per_second(rps).allow_burst(burst))
}

impl RateLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            global: quota(config.rate_limit_global_rps, config.rate_limit_global_burst)
                .map(RateLimiter::direct),
            token: quota(config.rate_limit_token_rps, config.rate_limit_token_burst)
                .map(RateLimiter::keyed),
            ip: quota(config.rate_limit_ip_rps, config.rate_limit_ip_burst).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    fn refused(
        &self,
        not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
        what: &str,
    ) -> ApiError {
        let wait = not_until.wait_time_from(self.clock.now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{what} rate limit exceeded; retry later"),
        )
        .with_retry_after(secs.max(1))
    }

    pub fn check_global(&self) -> Result<(), ApiError> {
        match &self.global {
            Some(limiter) => limiter.check().map_err(|n| self.refused(n, "global")),
            None => Ok(()),
        }
    }

    pub fn check_token(&self, token_id: &String) -> Result<(), ApiError> {
        match &self.token {
            Some(limiter) => limiter
                .check_key(token_id)
                .map_err(|n| self.refused(n, "per-token")),
            None => Ok(()),
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.ip {
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|n| self.refused(n, "per-client")),
            None => Ok(()),
        }
    }

    /// Drops keyed state that has fully refilled (no longer distinguishable from a new key).
    pub fn trim(&self) {
        if let Some(l) = &self.token {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently held (for tests and metrics).
    pub fn keyed_len(&self) -> usize {
        self.token.as_ref().map_or(0, |l| l.len()) + self.ip.as_ref().map_or(0, |l| l.len())
    }

    /// The client's address: the socket peer, or — only when the peer is a trusted proxy — the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted_proxies)
    }
}

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(trusted, *ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_without_a_trusted_proxy() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_ip(peer, &xff("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn forwarded_for_from_a_trusted_proxy() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let trusted: [ProxyNet; 2] = ["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        // The client may prepend anything; the right-most untrusted hop is the one the proxy saw.
        assert_eq!(
            client_ip(proxy, &xff("6.6.6.6, 1.2.3.4, 10.0.0.2"), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &xff("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn forwarded_for_through_a_pool_of_proxies() {
        // A load balancer pool (10.1.0.0/16) in front of an edge proxy at fd00::7, the peer
        // IPv4-mapped as a dual-stack listener sees it.
        let trusted: [ProxyNet; 2] = ["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let peer: IpAddr = "::ffff:10.1.44.3".parse().unwrap();
        assert_eq!(
            client_ip(peer, &xff("6.6.6.6, 1.2.3.4, fd00::7, 10.1.9.9"), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Outside the pool, the header is not believed.
        let outsider: IpAddr = "10.2.0.1".parse().unwrap();
        assert_eq!(client_ip(outsider, &xff("1.2.3.4"), &trusted), outsider);
    }

    #[test]
    fn proxy_nets_parse_and_print() {
        for (given, printed) in [
            ("10.0.0.9", "10.0.0.9"),
            (" ::1 ", "::1"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("fd00::/8", "fd00::/8"),
            ("192.168.1.1/32", "192.168.1.1"),
            ("::ffff:10.0.0.9", "10.0.0.9"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            let net: ProxyNet = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(net.to_string(), printed);
        }
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "example.com",
            "10.0.0.0/",
            // Host bits set (a typo for /32 must not trust a /8), and everyone.
            "10.9.8.7/8",
            "0.0.0.0/0",
            "::/0",
        ] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad:?} accepted");
        }
        let toml: Config = toml::from_str("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        assert_eq!(toml.trusted_proxies.len(), 2);
        assert!(
            toml.redacted_toml()
                .contains("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]")
        );
    }

    #[test]
    fn zero_rps_disables_a_limiter() {
        let config = Config {
            rate_limit_ip_rps: 0,
            rate_limit_token_rps: 1,
            rate_limit_token_burst: 2,
            ..Config::default()
        };
        let limits = RateLimits::new(&config);
        for _ in 0..100 {
            limits.check_ip("1.1.1.1".parse().unwrap()).unwrap();
        }
        let id = "t".to_owned();
        limits.check_token(&id).unwrap();
        limits.check_token(&id).unwrap();
        let refused = limits.check_token(&id).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
    }
}

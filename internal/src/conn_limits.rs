//! Caps on open connections, in total and per client IP, shared by the HTTP accept loop
//! (`server::conn`) and the MQTT listener (`mqtt`): one client (an address, or an IPv6 /64)
//! cannot take every connection. Peers in `trusted_proxies` (many clients behind one address)
//! only count against the total.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::{ProxyNet, is_trusted};

/// Which cap refused a connection (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerIp => "max_connections_per_ip",
        }
    }
}

/// Per-IP counting key: IPv4 (also IPv4-mapped IPv6) by address, other IPv6 by /64, since one
/// client usually holds a whole /64.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum IpKey {
    V4(std::net::Ipv4Addr),
    V6Net(u64),
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ip_key(ip: IpAddr) -> IpKey {
    match canonical(ip) {
        IpAddr::V4(v4) => IpKey::V4(v4),
        IpAddr::V6(v6) => IpKey::V6Net((u128::from(v6) >> 64) as u64),
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpKey, usize>,
}

/// Open connections, in total and per client IP.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    /// Trusted proxies: many clients behind one address, so only the total cap applies.
    exempt: Vec<ProxyNet>,
    counts: Mutex<Counts>,
    gauge: Gauge,
}

/// One counted connection; uncounted when dropped (with the socket, also after an upgrade).
pub struct Slot {
    limits: Arc<ConnLimits>,
    key: Option<IpKey>,
}

impl ConnLimits {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        trusted_proxies: &[ProxyNet],
        gauge: Gauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            exempt: trusted_proxies.to_vec(),
            counts: Mutex::default(),
            gauge,
        })
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = (!is_trusted(&self.exempt, ip)).then(|| ip_key(ip));
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        if let Some(key) = key {
            let n = counts.per_ip.entry(key).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        counts.total += 1;
        drop(counts);
        self.gauge.inc();
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .limits
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(key) = self.key
            && let Entry::Occupied(mut n) = counts.per_ip.entry(key)
        {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        drop(counts);
        self.limits.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counting_keys() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(v4), ip_key(mapped));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
    }

    #[test]
    fn caps_count_and_release() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let limits = ConnLimits::new(3, 1, &["10.0.0.8/31".parse().unwrap()], Gauge::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.try_acquire(a).unwrap();
        assert_eq!(limits.try_acquire(a).err(), Some(Refused::PerIp));
        let _proxied = [
            limits.try_acquire(proxy).unwrap(),
            limits.try_acquire(proxy).unwrap(),
        ];
        assert_eq!(limits.try_acquire(b).err(), Some(Refused::Total));
        drop(first);
        let _again = limits.try_acquire(b).unwrap();
        assert_eq!(limits.gauge.get(), 3);
        assert!(limits.counts.lock().unwrap().per_ip.len() == 1);
    }
}

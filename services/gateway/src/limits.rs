//! The protection layer: requests per minute for all gateways together and per client address,
//! and requests in progress per gateway (the origin document's 1000 rpm, 100 rpm per IP and 50
//! concurrent, from config).
//!
//! In distributed mode the per-minute limits live in Redis (`RedisRateLimiter`, a GCRA script),
//! so they hold across every gateway. Each process also keeps its own `governor` limiters with
//! the same quotas: they can only refuse what the shared limit would refuse anyway, and when
//! Redis does not answer they alone decide, so a Redis outage never lifts the limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tts_infra::{RedisRateLimiter, Verdict};

use crate::AppState;
use crate::error::AppError;

/// How often (in checks) the per-address limiter forgets addresses it has not seen lately.
const FORGET_EVERY: u64 = 4096;

#[derive(Debug, Clone)]
pub struct LimitOptions {
    pub global_rpm: u32,
    pub ip_rpm: u32,
    pub concurrent: u32,
    /// Addresses or CIDR ranges of proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

pub struct Limits {
    options: LimitOptions,
    trusted: Vec<IpNet>,
    shared: Option<RedisRateLimiter>,
    local_global: DefaultDirectRateLimiter,
    local_ip: DefaultKeyedRateLimiter<IpAddr>,
    in_progress: Arc<Semaphore>,
    checks: AtomicU64,
}

impl Limits {
    pub fn new(options: LimitOptions, shared: Option<RedisRateLimiter>) -> Result<Self, String> {
        let trusted = options
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("trusted proxy {p:?} is not an address or CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quota = |rpm: u32| Quota::per_minute(NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN));
        Ok(Limits {
            trusted,
            shared,
            local_global: RateLimiter::direct(quota(options.global_rpm)),
            local_ip: RateLimiter::keyed(quota(options.ip_rpm)),
            in_progress: Arc::new(Semaphore::new(options.concurrent.max(1) as usize)),
            checks: AtomicU64::new(0),
            options,
        })
    }

    /// The client's address: the socket's, or, when the socket is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.is_trusted(*a))
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Admits a request from `ip` or says how long to wait. The permit is held while the
    /// request is handled.
    pub async fn admit(&self, ip: IpAddr) -> Result<OwnedSemaphorePermit, AppError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.local_ip.retain_recent();
        }
        let clock = DefaultClock::default();
        if let Err(not_until) = self.local_ip.check_key(&ip) {
            return Err(AppError::rate_limited(
                not_until.wait_time_from(clock.now()),
            ));
        }
        if let Err(not_until) = self.local_global.check() {
            return Err(AppError::rate_limited(
                not_until.wait_time_from(clock.now()),
            ));
        }
        if let Some(shared) = &self.shared {
            for (bucket, rpm) in [
                (format!("ip:{ip}"), self.options.ip_rpm),
                ("global".to_string(), self.options.global_rpm),
            ] {
                match shared.check(&bucket, rpm).await {
                    Ok(Verdict::Allowed) => {}
                    Ok(Verdict::Limited(wait)) => return Err(AppError::rate_limited(wait)),
                    Err(e) => {
                        // The process's own limiters (checked above) decide alone.
                        tracing::warn!(error = %e, "shared rate limits unavailable; using this gateway's");
                        break;
                    }
                }
            }
        }
        self.in_progress
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::rate_limited(Duration::from_secs(1)))
    }
}

/// Middleware applying [`Limits`] to every request but `/health`, which load balancers and
/// orchestrators poll and which must answer when the API is saturated.
pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    // Without connection info (a router driven directly, in tests) the request counts as local.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ip = state.limits.client_ip(peer, request.headers());
    match state.limits.admit(ip).await {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(e) => {
            tracing::info!(%ip, "request refused: {e}");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ip_rpm: u32, proxies: &[&str]) -> Limits {
        Limits::new(
            LimitOptions {
                global_rpm: 1000,
                ip_rpm,
                concurrent: 2,
                trusted_proxies: proxies.iter().map(|p| p.to_string()).collect(),
            },
            None,
        )
        .unwrap()
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let l = limits(10, &["10.0.0.0/8", "192.168.1.1"]);
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(l.client_ip(proxy, &forwarded("203.0.113.7")), client);
        // A client cannot pick its address by prepending one: the nearest untrusted one counts.
        assert_eq!(
            l.client_ip(proxy, &forwarded("1.1.1.1, 203.0.113.7, 192.168.1.1")),
            client
        );
        assert_eq!(l.client_ip(stranger, &forwarded("203.0.113.7")), stranger);
        assert_eq!(l.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[tokio::test]
    async fn a_client_over_its_rate_waits_and_others_do_not() {
        let l = limits(3, &[]);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..3 {
            drop(l.admit(a).await.unwrap());
        }
        match l.admit(a).await {
            Err(AppError::RetryLater {
                code, retry_after, ..
            }) => {
                assert_eq!(code, "rate_limit_exceeded");
                assert!((1..=20).contains(&retry_after), "{retry_after}");
            }
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(l.admit(b).await.is_ok());
    }

    #[tokio::test]
    async fn requests_in_progress_are_bounded() {
        let l = limits(100, &[]);
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let first = l.admit(ip).await.unwrap();
        let _second = l.admit(ip).await.unwrap();
        assert!(l.admit(ip).await.is_err());
        drop(first);
        assert!(l.admit(ip).await.is_ok());
    }
}

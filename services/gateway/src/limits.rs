//! The protection layer: requests per minute for all gateways together, per client address and
//! per tenant, requests in progress per gateway (the origin document's 1000 rpm, 100 rpm per IP
//! and 50 concurrent, from config), and WebSockets open per gateway and per address.
//!
//! Every per-minute limit is a GCRA with a small burst (`rate_burst_percent` of its rate), so a
//! limit of N a minute admits at most N plus that burst in any 60 s, and a refusal's
//! `Retry-After` is when the next request will be admitted. Callers without a valid API key count
//! against their address and one quota for all of them (`unauthenticated_rpm`), never against
//! the global quota that tenants share; a tenant with an `rpm` of its own counts against it too.
//!
//! In distributed mode the per-minute limits live in Redis (`RedisRateLimiter`, a GCRA script),
//! so they hold across every gateway. Each process also keeps its own `governor` limiters with
//! the same quotas: they can only refuse what the shared limit would refuse anyway, and when
//! Redis does not answer they alone decide, so a Redis outage never lifts the limits. A request
//! that submits a job takes its shared count in the same Redis script that records the job
//! ([`DeferredCount`]): a submission costs one round trip to Redis before it is queued, not two.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tts_contracts::JobRecord;
use tts_infra::{RateBucket, RedisRateLimiter, Verdict};

use crate::AppState;
use crate::auth::Caller;
use crate::error::AppError;

/// How often (in checks) the per-address limiter forgets addresses it has not seen lately.
const FORGET_EVERY: u64 = 4096;

/// What a client over a WebSocket cap is told to wait: a socket may close at any moment, but
/// sockets tend to stay open for a while.
const WEBSOCKET_RETRY_AFTER: u64 = 5;

#[derive(Debug, Clone)]
pub struct LimitOptions {
    pub global_rpm: u32,
    pub ip_rpm: u32,
    /// Requests a minute from callers without a valid API key, all together.
    pub unauthenticated_rpm: u32,
    /// Each per-minute limit admits this percentage of its rate at once (at least one request).
    pub burst_percent: u32,
    pub concurrent: u32,
    /// WebSockets open at once on this gateway, and from one client address.
    pub max_websockets: u32,
    pub max_websockets_per_ip: u32,
    /// Addresses or CIDR ranges of proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

/// The client's address, put in a request's extensions by the first middleware that finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// A per-minute quota, as the shared limiter and the process's own limiters both apply it.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_minute: u32,
    burst: u32,
}

impl Rate {
    fn new(per_minute: u32, burst_percent: u32) -> Self {
        let per_minute = per_minute.max(1);
        let burst = (u64::from(per_minute) * u64::from(burst_percent.clamp(1, 100)) / 100).max(1);
        Rate {
            per_minute,
            burst: burst as u32,
        }
    }

    fn quota(self) -> Quota {
        let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Quota::per_minute(nonzero(self.per_minute)).allow_burst(nonzero(self.burst))
    }

    fn bucket(self, name: String) -> RateBucket {
        RateBucket {
            name,
            per_minute: self.per_minute,
            burst: self.burst,
        }
    }
}

/// A tenant's own quota.
struct TenantLimit {
    rate: Rate,
    local: DefaultDirectRateLimiter,
}

pub struct Limits {
    trusted: Vec<IpNet>,
    shared: Option<RedisRateLimiter>,
    ip_rate: Rate,
    global_rate: Rate,
    unauthenticated_rate: Rate,
    local_global: DefaultDirectRateLimiter,
    local_ip: DefaultKeyedRateLimiter<IpAddr>,
    local_unauthenticated: DefaultDirectRateLimiter,
    tenants: HashMap<String, TenantLimit>,
    in_progress: Arc<Semaphore>,
    websockets: Arc<Semaphore>,
    websockets_per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max_websockets_per_ip: u32,
    checks: AtomicU64,
    /// The clock refusals count their wait from, made once: making one reads the CPU's
    /// features, which every request would pay for.
    clock: DefaultClock,
}

/// Which quotas a request counts against besides its address's.
#[derive(Clone, Copy)]
enum Counted<'a> {
    /// A caller without a valid key: the quota for the unauthenticated.
    Unauthenticated,
    /// An identified caller: its tenant's quota, if it has one, and the global quota.
    Caller { tenant: Option<&'a str> },
}

impl Limits {
    /// `tenant_rpm` holds the requests per minute of tenants with a quota of their own.
    pub fn new(
        options: LimitOptions,
        tenant_rpm: &HashMap<String, u32>,
        shared: Option<RedisRateLimiter>,
    ) -> Result<Self, String> {
        let trusted = options
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("trusted proxy {p:?} is not an address or CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rate = |rpm: u32| Rate::new(rpm, options.burst_percent);
        let (global_rate, ip_rate, unauthenticated_rate) = (
            rate(options.global_rpm),
            rate(options.ip_rpm),
            rate(options.unauthenticated_rpm),
        );
        let tenants = tenant_rpm
            .iter()
            // The global quota already bounds a tenant to the global rate.
            .filter(|(_, rpm)| **rpm < options.global_rpm)
            .map(|(tenant, rpm)| {
                let rate = rate(*rpm);
                let local = RateLimiter::direct(rate.quota());
                (tenant.clone(), TenantLimit { rate, local })
            })
            .collect();
        Ok(Limits {
            trusted,
            shared,
            ip_rate,
            global_rate,
            unauthenticated_rate,
            local_global: RateLimiter::direct(global_rate.quota()),
            local_ip: RateLimiter::keyed(ip_rate.quota()),
            local_unauthenticated: RateLimiter::direct(unauthenticated_rate.quota()),
            tenants,
            in_progress: Arc::new(Semaphore::new(options.concurrent.max(1) as usize)),
            websockets: Arc::new(Semaphore::new(options.max_websockets.max(1) as usize)),
            websockets_per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_websockets_per_ip: options.max_websockets_per_ip.max(1),
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
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

    /// The client's address of a request: the one an earlier middleware found, or else from
    /// its connection and headers.
    pub fn client_ip_of(&self, request: &Request) -> IpAddr {
        if let Some(ClientIp(ip)) = request.extensions().get::<ClientIp>() {
            return *ip;
        }
        // Without connection info (a router driven directly, in tests) the request counts as
        // local.
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.client_ip(peer, request.headers())
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Admits a request of an identified caller from `ip` (counting against the address, the
    /// tenant's quota and the global one) or says how long to wait. The permit is held while
    /// the request is handled.
    pub async fn admit(
        &self,
        ip: IpAddr,
        tenant: Option<&str>,
    ) -> Result<OwnedSemaphorePermit, AppError> {
        self.count(ip, Counted::Caller { tenant }).await?;
        self.permit()
    }

    /// As [`admit`](Self::admit), for a request that submits a job: the shared quotas are not
    /// taken yet but handed back, for the submission to take in the same step as it records
    /// its job (see [`DeferredCount`]). `None` without shared limits.
    pub fn admit_submission(
        &self,
        ip: IpAddr,
        tenant: Option<&str>,
    ) -> Result<(OwnedSemaphorePermit, Option<DeferredCount>), AppError> {
        let shared = self.count_here(ip, Counted::Caller { tenant })?;
        let permit = self.permit()?;
        Ok((permit, shared.map(DeferredCount::new)))
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, AppError> {
        self.in_progress
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::rate_limited(Duration::from_secs(1)))
    }

    /// Counts a request without a valid API key against its address and the quota for the
    /// unauthenticated, or says how long to wait.
    pub async fn admit_unauthenticated(&self, ip: IpAddr) -> Result<(), AppError> {
        self.count(ip, Counted::Unauthenticated).await
    }

    /// Counts the request against this process's own limiters and the shared ones.
    async fn count(&self, ip: IpAddr, counted: Counted<'_>) -> Result<(), AppError> {
        match self.count_here(ip, counted)? {
            Some(shared) => shared.take().await,
            None => Ok(()),
        }
    }

    /// Counts the request against this process's own limiters, and returns its count against
    /// the shared ones (when there are any) for the caller to take.
    fn count_here(
        &self,
        ip: IpAddr,
        counted: Counted<'_>,
    ) -> Result<Option<SharedCount>, AppError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.local_ip.retain_recent();
        }
        let refuse = |not_until: NotUntil<_>| {
            AppError::rate_limited(not_until.wait_time_from(self.clock.now()))
        };
        // The narrowest quota first: a request one of the process's limiters refuses has then
        // used up as little of the wider ones as possible (governor cannot check without
        // taking).
        self.local_ip.check_key(&ip).map_err(refuse)?;
        let mut buckets = vec![self.ip_rate.bucket(format!("ip:{ip}"))];
        match counted {
            Counted::Unauthenticated => {
                self.local_unauthenticated.check().map_err(refuse)?;
                buckets.push(
                    self.unauthenticated_rate
                        .bucket("unauthenticated".to_string()),
                );
            }
            Counted::Caller { tenant } => {
                if let Some((name, limit)) = tenant.and_then(|t| self.tenants.get_key_value(t)) {
                    limit.local.check().map_err(refuse)?;
                    buckets.push(limit.rate.bucket(format!("tenant:{name}")));
                }
                self.local_global.check().map_err(refuse)?;
                buckets.push(self.global_rate.bucket("global".to_string()));
            }
        }
        Ok(self
            .shared
            .clone()
            .map(|limiter| SharedCount { limiter, buckets }))
    }

    /// Takes a place for a WebSocket from `ip`, held for as long as the socket is open, or
    /// answers 429 when the gateway or the address has as many open as allowed.
    pub fn open_websocket(&self, ip: IpAddr) -> Result<WebSocketPermit, AppError> {
        let too_many = |message: String| AppError::RetryLater {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_websockets",
            message,
            retry_after: WEBSOCKET_RETRY_AFTER,
        };
        let slot = {
            let mut open = self
                .websockets_per_ip
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = open.entry(ip).or_insert(0);
            if *count >= self.max_websockets_per_ip {
                return Err(too_many(format!(
                    "{} WebSockets are open from this address; close one first",
                    self.max_websockets_per_ip
                )));
            }
            *count += 1;
            AddressSlot {
                ip,
                open: self.websockets_per_ip.clone(),
            }
        };
        // The address's slot goes back if the gateway has no room.
        let gateway = self.websockets.clone().try_acquire_owned().map_err(|_| {
            too_many("this gateway has as many WebSockets open as it allows".to_string())
        })?;
        Ok(WebSocketPermit {
            _slot: slot,
            _gateway: gateway,
        })
    }
}

/// One request's count against the quotas every gateway shares, not yet taken.
pub struct SharedCount {
    limiter: RedisRateLimiter,
    buckets: Vec<RateBucket>,
}

impl SharedCount {
    /// Takes the count, or says how long to wait. When Redis does not answer, the process's own
    /// limiters, which have counted the request already, decide alone.
    pub async fn take(self) -> Result<(), AppError> {
        match self.limiter.check(&self.buckets).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Limited(wait)) => Err(AppError::rate_limited(wait)),
            Err(e) => {
                tracing::warn!(error = %e, "shared rate limits unavailable; using this gateway's");
                Ok(())
            }
        }
    }

    /// Takes the count and records the new job `record` in one step, one round trip to Redis
    /// where taking and recording apart cost two; over a limit, nothing is recorded. A record
    /// that cannot be written fails the submission, as any write of the job store does.
    pub async fn take_with_record(self, record: &JobRecord) -> Result<(), AppError> {
        match self.limiter.check_and_record(&self.buckets, record).await? {
            Verdict::Allowed => Ok(()),
            Verdict::Limited(wait) => Err(AppError::rate_limited(wait)),
        }
    }
}

/// In the extensions of a request that submits a job, with shared limits: the request's shared
/// count, which the submission takes together with writing its job's record. [`enforce`] takes
/// whatever the handler left (a request refused before it submitted, a replayed idempotency
/// key), so every request counts once, as when the count is taken before the handler runs.
#[derive(Clone)]
pub struct DeferredCount(Arc<Mutex<Option<SharedCount>>>);

impl DeferredCount {
    fn new(count: SharedCount) -> Self {
        DeferredCount(Arc::new(Mutex::new(Some(count))))
    }

    /// The count, the first time it is asked for.
    pub fn take(&self) -> Option<SharedCount> {
        // Only ever swapped out whole, so a poisoned lock holds nothing half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Requests that submit a job, whose shared count the submission takes (see [`DeferredCount`]).
/// Every other request is counted before it is handled, so that one over a limit changes
/// nothing.
fn submits_job(request: &Request) -> bool {
    request.method() == axum::http::Method::POST
        && matches!(
            request.uri().path(),
            "/api/synthesize" | "/api/jobs" | "/v1/audio/speech"
        )
}

/// A WebSocket's place in the caps; dropping it when the socket closes frees the place.
#[derive(Debug)]
pub struct WebSocketPermit {
    _slot: AddressSlot,
    _gateway: OwnedSemaphorePermit,
}

/// One WebSocket counted against its address.
#[derive(Debug)]
struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            // Addresses without a socket are forgotten, so the map holds open sockets only.
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Middleware applying [`Limits`] to every request but `/health`, which load balancers and
/// orchestrators poll and which must answer when the API is saturated. It runs after
/// authentication, which has already counted and refused callers without a valid key. The
/// shared count of a job submission is left to the submission ([`DeferredCount`]).
pub async fn enforce(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let ip = state.limits.client_ip_of(&request);
    request.extensions_mut().insert(ClientIp(ip));
    let tenant = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.tenant.clone());
    if !submits_job(&request) {
        return match state.limits.admit(ip, tenant.as_deref()).await {
            Ok(permit) => {
                let response = next.run(request).await;
                drop(permit);
                response
            }
            Err(e) => refused(ip, e),
        };
    }
    let (permit, deferred) = match state.limits.admit_submission(ip, tenant.as_deref()) {
        Ok(admitted) => admitted,
        Err(e) => return refused(ip, e),
    };
    if let Some(deferred) = &deferred {
        request.extensions_mut().insert(deferred.clone());
    }
    let response = next.run(request).await;
    // A request that submitted nothing counts now; over a limit, it is refused as it would
    // have been before it was handled (it changed nothing that a refusal must undo).
    if let Some(count) = deferred.and_then(|d| d.take())
        && let Err(e) = count.take().await
    {
        return refused(ip, e);
    }
    drop(permit);
    response
}

fn refused(ip: IpAddr, e: AppError) -> Response {
    tracing::info!(%ip, "request refused: {e}");
    e.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ip_rpm: u32, proxies: &[&str]) -> LimitOptions {
        LimitOptions {
            global_rpm: 1000,
            ip_rpm,
            unauthenticated_rpm: 1000,
            burst_percent: 100,
            concurrent: 2,
            max_websockets: 3,
            max_websockets_per_ip: 2,
            trusted_proxies: proxies.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn limits(ip_rpm: u32, proxies: &[&str]) -> Limits {
        Limits::new(options(ip_rpm, proxies), &HashMap::new(), None).unwrap()
    }

    fn addr(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    fn retry_after(result: Result<impl std::fmt::Debug, AppError>) -> u64 {
        match result {
            Err(AppError::RetryLater {
                status,
                retry_after,
                ..
            }) if status == StatusCode::TOO_MANY_REQUESTS => retry_after,
            other => panic!("expected a 429, got {other:?}"),
        }
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
        for _ in 0..3 {
            drop(l.admit(addr(1), None).await.unwrap());
        }
        match l.admit(addr(1), None).await {
            Err(AppError::RetryLater {
                code, retry_after, ..
            }) => {
                assert_eq!(code, "rate_limit_exceeded");
                assert!((1..=20).contains(&retry_after), "{retry_after}");
            }
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(l.admit(addr(2), None).await.is_ok());
    }

    #[test]
    fn the_burst_is_a_share_of_the_rate() {
        assert_eq!(Rate::new(100, 10).burst, 10);
        assert_eq!(Rate::new(1000, 10).burst, 100);
        assert_eq!(Rate::new(5, 10).burst, 1);
        assert_eq!(Rate::new(60, 100).burst, 60);
    }

    #[tokio::test]
    async fn a_minute_of_quota_is_not_available_at_once() {
        let l = Limits::new(
            LimitOptions {
                burst_percent: 10,
                ..options(60, &[])
            },
            &HashMap::new(),
            None,
        )
        .unwrap();
        for _ in 0..6 {
            drop(l.admit(addr(1), None).await.unwrap());
        }
        // One request a second at the steady rate: the next one is at most a second away.
        assert_eq!(retry_after(l.admit(addr(1), None).await), 1);
    }

    #[tokio::test]
    async fn strangers_do_not_use_up_the_global_quota() {
        let l = Limits::new(
            LimitOptions {
                global_rpm: 2,
                unauthenticated_rpm: 3,
                ..options(100, &[])
            },
            &HashMap::new(),
            None,
        )
        .unwrap();
        for n in 0..3 {
            l.admit_unauthenticated(addr(n)).await.unwrap();
        }
        // Strangers from any address share one quota...
        retry_after(l.admit_unauthenticated(addr(9)).await);
        // ...and callers with a key still have the whole global one.
        for n in 0..2 {
            drop(l.admit(addr(n), Some("acme")).await.unwrap());
        }
        retry_after(l.admit(addr(9), Some("acme")).await);
    }

    #[tokio::test]
    async fn a_tenant_over_its_own_quota_waits_and_others_do_not() {
        let tenants = HashMap::from([("acme".to_string(), 2)]);
        let l = Limits::new(options(100, &[]), &tenants, None).unwrap();
        for _ in 0..2 {
            drop(l.admit(addr(1), Some("acme")).await.unwrap());
        }
        retry_after(l.admit(addr(2), Some("acme")).await);
        for _ in 0..2 {
            drop(l.admit(addr(1), Some("globex")).await.unwrap());
        }
    }

    #[tokio::test]
    async fn requests_in_progress_are_bounded() {
        let l = limits(100, &[]);
        let first = l.admit(addr(1), None).await.unwrap();
        let _second = l.admit(addr(1), None).await.unwrap();
        assert!(l.admit(addr(1), None).await.is_err());
        drop(first);
        assert!(l.admit(addr(1), None).await.is_ok());
    }

    #[test]
    fn open_websockets_are_capped_per_address_and_per_gateway() {
        // Two per address, three per gateway.
        let l = limits(100, &[]);
        let a1 = l.open_websocket(addr(1)).unwrap();
        let _a2 = l.open_websocket(addr(1)).unwrap();
        assert_eq!(
            retry_after(l.open_websocket(addr(1))),
            WEBSOCKET_RETRY_AFTER
        );
        let _b1 = l.open_websocket(addr(2)).unwrap();
        assert!(l.open_websocket(addr(2)).is_err(), "the gateway is full");
        // A refusal by the gateway left the address's count alone.
        assert_eq!(l.websockets_per_ip.lock().unwrap()[&addr(2)], 1);
        drop(a1);
        let _b2 = l.open_websocket(addr(2)).unwrap();
        assert!(l.open_websocket(addr(1)).is_err());
    }
}

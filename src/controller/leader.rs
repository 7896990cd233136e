//! Leader election on a `coordination.k8s.io/v1` Lease, so one replica reconciles and writes
//! status while every replica runs its proxy.
//!
//! Acquire and renew are a read followed by a replace carrying the read's `resourceVersion`:
//! of two replicas racing for the same Lease the API server accepts one and answers the other
//! 409. A Lease counts as expired when its record has not changed for its duration, measured on
//! this replica's clock from when this replica first saw that record (as client-go does), so
//! clock skew between replicas does not matter. A holder that cannot renew for two thirds of
//! the duration stops leading before anyone else may start; on shutdown it releases the Lease so
//! the next replica takes over at once.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a candidate tries to acquire, and how soon a leader retries a failed renewal.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// The Lease `flowgate-controller` in `namespace`: 15 s, renewed every 5 s, tried every 2 s.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: "flowgate-controller".to_string(),
            identity: default_identity(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// `<hostname>-<8 random hex>`: the Pod name in a cluster, unique even for two processes on one
/// host.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flowgate".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &random[..8])
}

/// The last Lease record seen, and when this replica first saw it.
struct Observed {
    resource_version: String,
    at: Instant,
    /// Held by another replica, for this long: a holder whose Lease was deleted under it still
    /// leads until its next renewal recreates it, so the Lease's absence counts as that record.
    others: Option<Duration>,
}

/// The `resource_version` [`Observed`] records for a Lease found missing.
const MISSING: &str = "";

/// One replica's view of the Lease.
pub(super) struct Lease {
    api: Api<KubeLease>,
    settings: LeaseSettings,
    observed: Mutex<Option<Observed>>,
}

impl Lease {
    pub(super) fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Mutex::new(None),
        }
    }

    /// Tries every `retry_every` until this replica holds the Lease, or `shutdown` (`None`).
    /// Returns when the successful attempt was sent: the Lease is held from then, not from its
    /// answer, which a slow API server may deliver after another replica saw the record.
    pub(super) async fn acquire(&self, shutdown: &CancellationToken) -> Option<Instant> {
        let deadline = self.settings.duration * 2 / 3;
        loop {
            let sent = Instant::now();
            // An attempt answered later than a renewal could be does not lead: the Lease may be
            // another's by the time this replica would start.
            match tokio::time::timeout(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return Some(sent),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read or write the controller Lease");
                }
                Err(_) => tracing::warn!(?deadline, "the controller Lease did not answer in time"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.settings.retry_every) => {}
            }
        }
    }

    /// Renews every `renew_every` (every `retry_every` after a failure) until `until` is
    /// cancelled (true), or the Lease is lost (false: someone else holds it, or no renewal
    /// succeeded for two thirds of its duration). `acquired`: when the acquiring attempt was
    /// sent.
    pub(super) async fn hold(&self, until: &CancellationToken, acquired: Instant) -> bool {
        let deadline = self.settings.duration * 2 / 3;
        let mut renewed = acquired;
        // Renewals are due `renew_every` after the last one was sent, however long it took to
        // answer: counted from its answer, each slow renewal would leave the next less time
        // before the deadline, and an API server answering in a few seconds would make the
        // Lease flap (and every object be listed and reconciled again at each take-over).
        let mut due = acquired + self.settings.renew_every;
        loop {
            // Never past the deadline: a retry due after it would leave this replica leading
            // longer than it may.
            let wait_for = due
                .saturating_duration_since(Instant::now())
                .min(deadline.saturating_sub(renewed.elapsed()));
            tokio::select! {
                () = until.cancelled() => return true,
                () = tokio::time::sleep(wait_for) => {}
            }
            // A renewal counts from when it was sent, and may not outlast the deadline: a call
            // hanging on a slow API server (kube's read timeout is minutes) would otherwise let
            // this replica reconcile on while another takes the expired Lease.
            let sent = Instant::now();
            let left = deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = sent;
                    due = sent + self.settings.renew_every;
                }
                Ok(Ok(false)) => {
                    tracing::warn!("another replica holds the controller Lease");
                    return false;
                }
                Ok(Err(error)) if renewed.elapsed() >= deadline => {
                    tracing::warn!(%error, "could not renew the controller Lease in time");
                    return false;
                }
                Ok(Err(error)) => {
                    // Again soon, not a whole renewal period later: one failed call (a 5xx, a
                    // 429) must not leave too little time for the next before the deadline.
                    tracing::debug!(%error, "Lease renewal failed; retrying");
                    due = Instant::now() + self.settings.retry_every.min(self.settings.renew_every);
                }
                Err(_) => {
                    tracing::warn!(?left, "the Lease renewal did not answer in time");
                    return false;
                }
            }
        }
    }

    /// Gives the Lease up if this replica holds it, so another can take over at once.
    pub(super) async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        if let Err(error) = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(%error, "could not release the controller Lease");
        }
    }

    /// One attempt: Ok(true) when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            if !self.may_create(Instant::now()) {
                return Ok(false);
            }
            return self.create().await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.settings.identity.as_str());
        // Another's record is seen when its answer came, not when it was asked for: a GET held
        // up in the API server's queues would otherwise date the record earlier than it was
        // written, and the Lease be taken before its holder stopped (as client-go does).
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.duration, Duration::from_secs);
        let seen_at = self.observe(
            current.resource_version().unwrap_or_default(),
            if mine { now } else { Instant::now() },
            (!mine && holder.is_some()).then_some(duration),
        );
        let expired = holder.is_none() || seen_at.elapsed() >= duration;
        if !mine && !expired {
            return Ok(false);
        }

        let mut lease = current;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let stamp = MicroTime(jiff::Timestamp::now());
        if !mine {
            spec.holder_identity = Some(self.settings.identity.clone());
            spec.acquire_time = Some(stamp.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            tracing::info!(previous = ?holder, "taking over the controller Lease");
        }
        spec.renew_time = Some(stamp);
        spec.lease_duration_seconds = Some(self.duration_seconds());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(written.resource_version().unwrap_or_default(), now, None);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn create(&self) -> Result<bool, kube::Error> {
        let stamp = MicroTime(jiff::Timestamp::now());
        let lease = KubeLease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(
                    written.resource_version().unwrap_or_default(),
                    Instant::now(),
                    None,
                );
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Records `resource_version` (held by another for `others`) as seen at `now` unless it is
    /// the one already seen; returns when the current record was first seen.
    fn observe(&self, resource_version: String, now: Instant, others: Option<Duration>) -> Instant {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some(seen) if seen.resource_version == resource_version => seen.at,
            _ => {
                *observed = Some(Observed {
                    resource_version,
                    at: now,
                    others,
                });
                now
            }
        }
    }

    /// Whether the Lease, found missing at `now`, may be created: at once, unless the last
    /// record seen was another replica's. Deleted under its holder (`kubectl delete lease` to
    /// force a fail-over), that holder leads on until its next renewal, which recreates it: the
    /// absence expires as that record would have, and the holder comes back first.
    fn may_create(&self, now: Instant) -> bool {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(seen) = observed.as_mut() else {
            return true;
        };
        let Some(duration) = seen.others else {
            return true;
        };
        if seen.resource_version != MISSING {
            seen.resource_version = MISSING.to_string();
            seen.at = now;
        }
        now.saturating_duration_since(seen.at) >= duration
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body_util::Full;
    use serde_json::{Value, json};

    use super::*;

    /// An API server holding one Lease, answering every call `latency` after it came.
    #[derive(Clone)]
    struct SlowApi {
        latency: Duration,
        lease: Arc<Mutex<Option<Value>>>,
        version: Arc<AtomicU64>,
    }

    impl SlowApi {
        fn answer(&self, method: &http::Method, body: &[u8]) -> (u16, Value) {
            let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
            match (method, lease.as_ref()) {
                (&http::Method::GET, Some(stored)) => (200, stored.clone()),
                (&http::Method::GET, None) => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "reason": "NotFound", "code": 404,
                           "message": "not found"}),
                ),
                _ => {
                    let mut written: Value = serde_json::from_slice(body).unwrap_or_default();
                    let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
                    written["metadata"]["resourceVersion"] = json!(version.to_string());
                    *lease = Some(written.clone());
                    (
                        if method == http::Method::POST {
                            201
                        } else {
                            200
                        },
                        written,
                    )
                }
            }
        }
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for SlowApi {
        type Response = http::Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let api = self.clone();
            Box::pin(async move {
                tokio::time::sleep(api.latency).await;
                let method = req.method().clone();
                let body = req.into_body().collect_bytes().await.unwrap_or_default();
                let (status, answer) = api.answer(&method, &body);
                let mut resp = http::Response::new(Full::new(Bytes::from(answer.to_string())));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                Ok(resp)
            })
        }
    }

    /// Every call to the API server takes 1.5 s, so a renewal (a GET, then a PUT) takes 3 s, well
    /// inside the 10 s a holder has: the Lease is held, renewal after renewal.
    #[tokio::test(start_paused = true)]
    async fn a_slow_api_server_does_not_make_the_lease_flap() {
        let api = SlowApi {
            latency: Duration::from_millis(1500),
            lease: Arc::default(),
            version: Arc::default(),
        };
        let renewals = api.version.clone();
        let lease = Lease::new(Client::new(api, "flowgate"), LeaseSettings::new("flowgate"));
        let acquired = lease
            .acquire(&CancellationToken::new())
            .await
            .expect("acquired");
        let until = CancellationToken::new();
        let stop = until.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            stop.cancel();
        });
        assert!(lease.hold(&until, acquired).await, "held for two minutes");
        let written = renewals.load(Ordering::Relaxed);
        assert!(written >= 20, "renewed every 5 s or so: {written} writes");
    }

    /// A Lease deleted under its holder (`kubectl delete lease`) is not taken at once by a
    /// replica that saw it held: the holder still leads until its next renewal, which recreates
    /// it. Missing for a whole duration, it is anyone's.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_lease_goes_back_to_its_holder_not_to_a_waiting_replica() {
        let api = SlowApi {
            latency: Duration::ZERO,
            lease: Arc::default(),
            version: Arc::default(),
        };
        let stored = api.lease.clone();
        let replica = |name: &str| {
            let mut settings = LeaseSettings::new("flowgate");
            settings.identity = name.to_string();
            Lease::new(Client::new(api.clone(), "flowgate"), settings)
        };
        let (a, b) = (replica("a"), replica("b"));
        let holder = |stored: &Arc<Mutex<Option<Value>>>| {
            stored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|l| l["spec"]["holderIdentity"].clone())
        };
        assert!(a.try_acquire_or_renew().await.expect("a acquires"));
        assert!(!b.try_acquire_or_renew().await.expect("b waits"));
        *stored.lock().unwrap_or_else(|p| p.into_inner()) = None;
        assert!(
            !b.try_acquire_or_renew().await.expect("b waits on"),
            "b took a deleted Lease"
        );
        assert_eq!(holder(&stored), None);
        assert!(
            a.try_acquire_or_renew().await.expect("a renews"),
            "a recreates it"
        );
        assert_eq!(holder(&stored), Some(json!("a")));
        assert!(!b.try_acquire_or_renew().await.expect("b waits"));
        // Deleted again, and a gone: b takes it once it has been missing a whole duration.
        *stored.lock().unwrap_or_else(|p| p.into_inner()) = None;
        assert!(!b.try_acquire_or_renew().await.expect("b waits"));
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert!(!b.try_acquire_or_renew().await.expect("b waits"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(b.try_acquire_or_renew().await.expect("b acquires"));
        assert_eq!(holder(&stored), Some(json!("b")));
        // A replica that never saw it held creates it at once (a fresh install).
        *stored.lock().unwrap_or_else(|p| p.into_inner()) = None;
        assert!(
            replica("c")
                .try_acquire_or_renew()
                .await
                .expect("c acquires")
        );
    }
}

//! `flowgate run`: starts the configured parts and stops them together.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LedgerUrl};
use crate::identity::{Verifier, VerifierOptions};
use crate::index;
use crate::ledger;
use crate::metrics::Metrics;
use crate::ops::{self, Health};
use crate::proxy::credits::Credits;
use crate::proxy::drain::Drains;
use crate::proxy::keys::ApiKeys;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Proxy, ProxyError};
use crate::secret_file::SecretFile;
use crate::server;

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(25);
/// How long the ledger's queued writes are waited for at shutdown ([`ledger::CreditLedger::close`];
/// PostgreSQL then takes up to 2 s more to let go of the replica's chat turns).
const LEDGER_CLOSE: Duration = Duration::from_secs(1);

/// Why `flowgate run` could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        setting: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A setting is unusable (a file that cannot be read, no key source, …).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No Kubernetes configuration (in-cluster or KUBECONFIG) could be loaded.
    #[error("cannot reach Kubernetes (in-cluster config or KUBECONFIG): {0}")]
    Kube(#[source] kube::Error),
    /// The credits ledger could not be opened.
    #[error("credits ledger (FLOWGATE_LEDGER_URL): {0}")]
    Ledger(#[from] ledger::LedgerError),
    /// The proxy could not be set up.
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyError),
    /// The proxy's threads could not be started.
    #[error("cannot start the proxy's threads: {0}")]
    Threads(#[source] std::io::Error),
    /// A proxy thread stopped while serving (and so stopped the process).
    #[error("a proxy thread stopped unexpectedly")]
    ThreadStopped,
    /// The controller could not start.
    #[error("controller: {0}")]
    Controller(#[from] crate::controller::ControllerError),
}

/// A token cancelled `delay` after `signalled`; meanwhile `/readyz` answers 503 and everything
/// keeps serving, so load balancers stop sending new connections before the drain starts.
fn delayed(
    signalled: CancellationToken,
    health: Arc<Health>,
    delay: Duration,
) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        signalled.cancelled().await;
        health.stop();
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "stopping: /readyz answers 503; serving on before draining"
            );
            tokio::time::sleep(delay).await;
        }
        stop.cancel();
    });
    shutdown
}

/// Runs every configured part until `signalled` is cancelled and the shutdown delay has passed,
/// then drains and returns.
pub async fn run(config: Config, signalled: CancellationToken) -> Result<(), RunError> {
    crate::telemetry::install_crypto_provider();
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    let shutdown = delayed(signalled, health.clone(), config.shutdown_delay);
    // Closed until every part is started and has registered its own gate: /readyz answers from
    // the moment the ops listener is up.
    let started = health.gate("startup");
    let threads_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let ops_listener = bind(config.ops_addr, "FLOWGATE_OPS_ADDR").await?;
    let mut tasks = Vec::new();
    // The ops listener stops last: what the drain counts (the settles and refunds of requests
    // it ended, streams cut) can still be scraped, and probes are answered (503 on /readyz).
    let ops_shutdown = CancellationToken::new();
    let ops = {
        let (health, metrics) = (health.clone(), metrics.clone());
        let handler = move |req, peer| ops::handle(req, peer, health.clone(), metrics.clone());
        tokio::spawn(server::serve(
            ops_listener,
            handler,
            ops_shutdown.clone(),
            Duration::from_secs(1),
        ))
    };
    tracing::info!(addr = %config.ops_addr, "ops listener (healthz, readyz, metrics) up");

    // Read again every 10 s, so that rotating the Secret needs no restart; the controller and the
    // proxy share it.
    let flowise_key = SecretFile::watched(
        config.flowise_api_key_file.as_deref(),
        "FLOWGATE_FLOWISE_API_KEY_FILE",
        crate::flowise::api_key_header,
        &shutdown,
    )?;

    // With --resources-dir there is no cluster: resources come from files, status is logged.
    let client = match &config.resources_dir {
        Some(dir) => {
            tracing::info!(dir = %dir.path.display(), recursive = dir.recursive,
                "resources from files; no cluster, status only logged");
            None
        }
        None => Some(kube::Client::try_default().await.map_err(RunError::Kube)?),
    };

    // Before the ledger is opened: no key source, or a ServiceAccount audience without a
    // cluster, is a configuration error, and must not leave a new ledger file behind.
    let verifier = config
        .proxy
        .then(|| {
            let sa_client = config
                .jwt
                .service_account_audience
                .as_ref()
                .and(client.clone());
            let options = VerifierOptions {
                token_cache_capacity: config.token_cache_size,
                ..VerifierOptions::default()
            };
            Verifier::with_options(&config.jwt, &config.identity, sa_client, options)
        })
        .transpose()?;
    // The token endpoint's client secret, and Flowise's client for resources from files: also
    // before the ledger is opened, for the same reason.
    let token_client = match (&config.token_client_id, config.proxy) {
        (Some(id), true) => Some(crate::proxy::compat::TokenClient {
            id: id.clone(),
            secret: SecretFile::watched(
                config.token_client_secret_file.as_deref(),
                "FLOWGATE_TOKEN_CLIENT_SECRET_FILE",
                crate::secret_file::text,
                &shutdown,
            )?,
            secret_in_form: config.token_client_secret_in_form,
        }),
        _ => None,
    };
    let files_flowise = match (&config.resources_dir, config.proxy) {
        (Some(_), true) => Some(
            crate::flowise::FlowiseClient::from_config(&config, flowise_key.clone()).map_err(
                |e| ConfigError {
                    setting: "FLOWGATE_FLOWISE_URL",
                    problem: e.to_string(),
                },
            )?,
        ),
        _ => None,
    };

    // One ledger for both parts: the proxy charges it, the controller reports usage from it.
    let ledger_gate = health.gate("ledger");
    let ledger = ledger::open(&config.ledger).await?;
    if let LedgerUrl::Sqlite(path) = &config.ledger {
        // The file itself: a relative path depends on the working directory.
        let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        tracing::info!(file = %file.display(), "SQLite ledger opened");
    }
    ledger_gate.open();

    // The installed CRDs against this binary's: older ones silently drop the fields they lack.
    if let Some(client) = &client {
        crate::crd::installed::spawn(client.clone(), metrics.clone(), shutdown.clone());
    }

    // The controller is built first so the proxy's admin API shares its sync handle. Without the
    // controller (`--no-controller`) the admin API still gets a sync handle of its own: a pass only
    // creates imported Chatflow objects (create, never overwrite), which is safe on any replica;
    // status refreshes then wait for the controller replica's own periodic pass.
    let controller = match &client {
        Some(client) => Some(
            crate::controller::Controller::from_config(
                client.clone(),
                &config,
                flowise_key.clone(),
                metrics.clone(),
            )?
            .with_ledger(ledger.clone()),
        ),
        None => None,
    };

    if let Some(verifier) = verifier {
        let snapshot = match (&client, &config.resources_dir, files_flowise) {
            (Some(_), _, _) => {
                index::watch::spawn(
                    index::watch::client().await.map_err(RunError::Kube)?,
                    health.gate("index"),
                    shutdown.clone(),
                    metrics.clone(),
                )
                .1
            }
            (None, Some(dir), Some(flowise)) => index::files::spawn(
                dir.clone(),
                Arc::new(flowise),
                config.sync_interval,
                health.gate("index"),
                shutdown.clone(),
            ),
            (None, _, _) => unreachable!("a client exists unless resources come from files"),
        };
        let reviews = metrics.clone();
        verifier.observe_reviews(move |outcome| reviews.token_review(outcome));
        metrics
            .token_cache
            .read_from(verifier.token_cache_lookups());
        tokio::spawn(verifier.clone().run_refresh(shutdown.clone()));
        // Ready once remote keys (JWKS, OIDC, the cluster's ServiceAccount issuer) have loaded.
        let keys_gate = health.gate("identity keys");
        let probe = verifier.clone();
        tokio::spawn(async move {
            while !probe.keys_loaded() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            keys_gate.open();
        });
        // When the served snapshot was compiled, that is, last changed: it grows old in a quiet
        // cluster too, so a stale watch is alerted on by its errors (FlowgateIndexStale).
        let (watched, gauge) = (snapshot.clone(), metrics.clone());
        let mut published = snapshot.subscribe();
        tokio::spawn(async move {
            // Policies' counters: started at 0 as they come, removed as they go.
            let mut series = crate::metrics::PolicySeries::default();
            loop {
                let served = watched.load();
                if let Some(at) = served.compiled_at {
                    gauge.snapshot_compiled.set(at.as_second());
                }
                series.follow(
                    &gauge,
                    served
                        .policy_rules()
                        .iter()
                        .map(|policy| (&policy.id, policy.alert_at_percent.as_slice())),
                );
                for kind in ["Chatflow", "ChatflowAccess", "CreditPolicy"] {
                    let skipped = served.invalid.iter().filter(|i| i.kind == kind).count();
                    gauge.set_invalid(kind, skipped);
                }
                drop(served);
                if published.changed().await.is_err() {
                    return;
                }
            }
        });
        // Cancelled when the drain period is over and open connections are cut.
        let cut = CancellationToken::new();
        let mut credits = Credits::new(ledger.clone(), metrics.clone())
            .with_invalid_policies(config.invalid_policies)
            .with_shutdown_cut(cut.clone());
        if let Some(client) = &client {
            credits = credits.with_alerts(crate::proxy::credits::Alerts::new(client.clone()));
        }
        tokio::spawn(credits.clone().run_sweeper(shutdown.clone()));
        if let Some(keep) = config.ledger_retention {
            tokio::spawn(credits.clone().run_retention(keep, shutdown.clone()));
        }
        let upstream = Upstream::new(&config.flowise_url, flowise_key, config.upstream_timeout)?;
        let background = credits.background().clone();
        // Streams left by their clients are read on during the connections' drain and stopped
        // before the background work's, so their settles land before the threads end.
        let drains = Drains::new(
            config.upstream_timeout,
            DRAIN_PERIOD.saturating_sub(Duration::from_secs(5)),
            shutdown.clone(),
            background.clone(),
        );
        let proxy = Proxy {
            streaming: Default::default(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            drains,
            turns: crate::proxy::turns::ChatTurns::shared(ledger.clone()),
            cors: config
                .cors_origins
                .as_ref()
                .map(crate::proxy::cors::Cors::new),
            buffers: {
                metrics
                    .body_buffer_limit
                    .set(i64::try_from(config.body_memory).unwrap_or(i64::MAX));
                crate::proxy::buffers::Buffers::new(config.body_memory, metrics.body_buffer.clone())
            },
            credits,
            snapshot,
            verifier: Arc::new(verifier),
            upstream,
            keys: ApiKeys::new(client.clone()),
            metrics: metrics.clone(),
            token_endpoint: config.token_endpoint_url.clone(),
            token_client,
            token_grants: Arc::new(tokio::sync::Semaphore::new(
                crate::proxy::compat::TOKEN_GRANTS_AT_ONCE,
            )),
            // The token endpoint's client: a redirect is refused, not followed (a 307 would
            // send the caller's password and flowgate's client secret on to wherever it points).
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ProxyError::Internal(format!("token endpoint client: {e}")))?,
            limiter: Arc::new(crate::proxy::ratelimit::RateLimiter::shared(ledger.clone())),
            admin: client
                .clone()
                .zip(controller.as_ref())
                .map(|(client, controller)| {
                    Arc::new(crate::admin::Admin {
                        client,
                        sync: controller.sync_state(),
                        ledger: ledger.clone(),
                        metrics: metrics.clone(),
                    })
                }),
        };
        // Each thread gets its own Flowise pool: a pooled connection's task runs on the
        // runtime that opened it, so one shared pool would send requests across threads.
        let handlers = (0..config.proxy_threads)
            .map(|_| {
                let proxy = Arc::new(proxy.with_own_upstream()?);
                Ok(move |req, peer| proxy.clone().handle(req, peer))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let max_connections = server::connection_limit();
        let threads = server::Threads::start(
            handlers,
            &background,
            &shutdown,
            DRAIN_PERIOD,
            &cut,
            max_connections,
        )
        .map_err(RunError::Threads)?;
        let listener = bind(config.listen_addr, "FLOWGATE_LISTEN_ADDR").await?;
        let serve = threads.serve(listener, shutdown.clone());
        let stopped = threads_stopped.clone();
        tasks.push(tokio::spawn(async move {
            if !serve.await {
                stopped.store(true, std::sync::atomic::Ordering::Release);
            }
        }));
        tracing::info!(addr = %config.listen_addr, flowise = %crate::flowise::shown(&config.flowise_url), threads = config.proxy_threads, max_connections, "proxy listening");
    }

    // The controller campaigns for the Lease and reconciles while it holds it; on shutdown it
    // lets in-flight reconciles finish and releases the Lease.
    if let (true, None) = (config.controller, &client) {
        tracing::info!(
            "controller not started: with --resources-dir there is no cluster to reconcile"
        );
    }
    if let (true, Some(controller)) = (config.controller, controller) {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        tasks.push(tokio::spawn(supervise(
            Arc::new(controller),
            shutdown,
            metrics,
        )));
    }

    started.open();
    tracing::info!(
        controller = config.controller,
        proxy = config.proxy,
        "flowgate running"
    );
    shutdown.cancelled().await;
    tracing::info!("shutting down: draining in-flight requests");
    for task in tasks {
        let _ = task.await;
    }
    // Nothing charges the ledger now; what the drain queued (refunds of requests it cut, the
    // ends of their chats' turns) is written before the runtime, and its tasks, go.
    if let Err(error) = ledger.close(LEDGER_CLOSE).await {
        tracing::warn!(%error, "closing the credits ledger");
    }
    ops_shutdown.cancel();
    let _ = ops.await;
    if threads_stopped.load(std::sync::atomic::Ordering::Acquire) {
        return Err(RunError::ThreadStopped);
    }
    Ok(())
}

/// First wait before the controller is started again after it stopped unexpectedly; it doubles
/// up to [`RESTART_MAX`].
const RESTART_FIRST: Duration = Duration::from_secs(5);
const RESTART_MAX: Duration = Duration::from_secs(300);

/// Runs the controller until shutdown, in a task of its own: one that stops before (a panic
/// outside a reconcile; one inside is that object's error) is started again after a wait,
/// rather than leave a replica that serves requests but never reconciles (and reports itself
/// the leader) — or stop the proxy with it. Reconciles still running at shutdown get the drain
/// period, as requests do; past it they are dropped (the Lease then expires instead of being
/// released).
async fn supervise(
    controller: Arc<crate::controller::Controller>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let stopping = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_PERIOD).await;
    };
    let mut stopping = std::pin::pin!(stopping);
    let mut wait = RESTART_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let mut running = tokio::spawn(controller.clone().run(shutdown.clone()));
        tokio::select! {
            ended = &mut running => {
                let why = match ended {
                    // Ended in the shutdown: nothing to start again.
                    Ok(Ok(())) if shutdown.is_cancelled() => return,
                    Ok(Ok(())) => "it returned".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Err(join) => match join.try_into_panic() {
                        Ok(panic) => format!("panicked: {}", crate::telemetry::panic_message(&*panic)),
                        Err(join) => join.to_string(),
                    },
                };
                if shutdown.is_cancelled() {
                    tracing::warn!(why = %why, "the controller stopped during the shutdown");
                    return;
                }
                // A run that lasted starts the waits over: only stops in a row back off.
                if started.elapsed() >= RESTART_MAX {
                    wait = RESTART_FIRST;
                }
                tracing::error!(why = %why, restart_in = ?wait, "the controller stopped; starting it again");
                metrics.controller.set_leader(false);
                metrics.controller.restarted();
            }
            () = &mut stopping => {
                running.abort();
                tracing::warn!(?DRAIN_PERIOD, "reconciles still running after the drain period");
                return;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

/// Binds `addr`. The unspecified IPv6 address (`[::]`, the default) takes IPv4 connections too
/// (`IPV6_V6ONLY` off, whatever the host's default), so one setting serves IPv4, IPv6 and
/// dual-stack clusters; on a host without IPv6 it falls back to `0.0.0.0` on the same port.
async fn bind(addr: std::net::SocketAddr, setting: &'static str) -> Result<TcpListener, RunError> {
    let refused = |source| RunError::Bind {
        setting,
        addr,
        source,
    };
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        use socket2::{Domain, Protocol, Socket, Type};
        match Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) {
            Ok(socket) => return dual_stack(socket, addr).map_err(refused),
            Err(error) => {
                let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
                tracing::warn!(%error, %v4, setting, "no IPv6 on this host; listening on IPv4 only");
                return TcpListener::bind(v4).await.map_err(refused);
            }
        }
    }
    TcpListener::bind(addr).await.map_err(refused)
}

/// `socket` listening on `addr` for IPv6 and IPv4, as tokio's own bind sets a listener up.
fn dual_stack(socket: socket2::Socket, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn reaches(listener: &TcpListener, to: std::net::SocketAddr) {
        let (mut client, accepted) = tokio::join!(
            async { tokio::net::TcpStream::connect(to).await.expect("connects") },
            listener.accept()
        );
        let (mut server, _) = accepted.expect("accepted");
        client.write_all(b"x").await.expect("writes");
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.expect("reads");
        assert_eq!(&byte, b"x", "{to}");
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_and_ipv6() {
        let listener = bind("[::]:0".parse().expect("addr"), "FLOWGATE_LISTEN_ADDR")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("addr").port();
        reaches(&listener, ([127, 0, 0, 1], port).into()).await;
        // Where this host has IPv6 (a loopback socket can be bound), the listener is dual-stack.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            assert!(listener.local_addr().expect("addr").is_ipv6());
            reaches(&listener, (std::net::Ipv6Addr::LOCALHOST, port).into()).await;
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_naming_the_setting() {
        let taken = bind("[::]:0".parse().expect("addr"), "FLOWGATE_OPS_ADDR")
            .await
            .expect("binds");
        let port = taken.local_addr().expect("addr").port();
        let again = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let error = bind(again, "FLOWGATE_OPS_ADDR").await.expect_err("in use");
        assert!(error.to_string().contains("FLOWGATE_OPS_ADDR"), "{error}");
    }
}

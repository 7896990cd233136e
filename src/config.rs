//! Typed configuration. clap reads flags and `FLOWGATE_*` variables as plain strings;
//! [`Config::from_args`] is the one pure constructor that turns them into checked values, so a
//! bad value stops start-up with one line naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use hyper::header::HeaderValue;
use reqwest::Url;

use crate::index::files::ResourcesDir;

/// `flowgate run` flags. Every flag also reads its `FLOWGATE_*` environment variable.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Flowise base URL.
    #[arg(
        long,
        env = "FLOWGATE_FLOWISE_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub flowise_url: String,
    /// File holding the default Flowise API key.
    #[arg(long, env = "FLOWGATE_FLOWISE_API_KEY_FILE")]
    pub flowise_api_key_file: Option<PathBuf>,
    /// Address the proxy listens on (`[::]`: every IPv6 and IPv4 address).
    #[arg(long, env = "FLOWGATE_LISTEN_ADDR", default_value = "[::]:8080")]
    pub listen_addr: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FLOWGATE_OPS_ADDR", default_value = "[::]:9090")]
    pub ops_addr: String,
    /// Credits ledger: `sqlite:///path/ledger.db` or `postgres://…`.
    #[arg(
        long,
        env = "FLOWGATE_LEDGER_URL",
        // A PostgreSQL URL may carry a password: `--help` must not print it.
        hide_env_values = true,
        default_value = "sqlite://./flowgate-ledger.db"
    )]
    pub ledger_url: String,
    /// Delete settled, refunded and expired reservations and usage-log rows older than this
    /// (`90d`, `2160h`, `12w`: at least 1h, in hours, days or weeks, not months; unset: keep
    /// everything), and budgets of periods long over. A current budget is never deleted.
    #[arg(long, env = "FLOWGATE_LEDGER_RETENTION")]
    pub ledger_retention: Option<String>,
    /// File holding the HS256 secret for caller JWTs.
    #[arg(long, env = "FLOWGATE_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC or Ed25519) for caller JWTs.
    #[arg(long, env = "FLOWGATE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS URL for caller JWTs.
    #[arg(long, env = "FLOWGATE_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// OIDC issuer whose discovery document names the JWKS.
    #[arg(long, env = "FLOWGATE_OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// Required `iss` of caller JWTs (unset: not checked).
    #[arg(long, env = "FLOWGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of caller JWTs (unset: not checked).
    #[arg(long, env = "FLOWGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp`/`nbf` (at most 5m).
    #[arg(long, env = "FLOWGATE_JWT_LEEWAY", default_value = "30s")]
    pub jwt_leeway: String,
    /// Accept Kubernetes ServiceAccount tokens with this audience (unset: off).
    #[arg(long, env = "FLOWGATE_SERVICE_ACCOUNT_AUDIENCE")]
    pub service_account_audience: Option<String>,
    /// Verified tokens remembered until their `exp` (or a key change), so a caller that sends
    /// the same token again is not verified again; 0 turns the cache off (refused with
    /// ServiceAccount tokens, whose reviews it keeps). An entry holds the token and its
    /// identity, about 1–2 KiB for a typical token.
    #[arg(long, env = "FLOWGATE_TOKEN_CACHE_SIZE", default_value = "10000")]
    pub token_cache_size: String,
    /// Claims naming the user, in order.
    #[arg(long, env = "FLOWGATE_USER_CLAIMS", default_value = "sub,email")]
    pub user_claims: String,
    /// Claim holding the caller's groups.
    #[arg(long, env = "FLOWGATE_GROUPS_CLAIM", default_value = "groups")]
    pub groups_claim: String,
    /// Global admin, as `claim=value`.
    #[arg(long, env = "FLOWGATE_ADMIN_CLAIM", default_value = "role=Admin")]
    pub admin_claim: String,
    /// Import every unclaimed Flowise chatflow as a Chatflow in this namespace.
    #[arg(long, env = "FLOWGATE_IMPORT_NAMESPACE")]
    pub import_namespace: Option<String>,
    /// How often Chatflows are compared with Flowise (5s to 24h).
    #[arg(long, env = "FLOWGATE_SYNC_INTERVAL", default_value = "60s")]
    pub sync_interval: String,
    /// How long Flowise may take to start answering (response headers) and to finish a
    /// non-streaming answer; past it the caller gets 504 and the reservation is refunded.
    /// A stream may go as long between two of its parts; past it the stream is cut (and
    /// refunded unless it had answered). At most 14m.
    #[arg(long, env = "FLOWGATE_UPSTREAM_TIMEOUT", default_value = "300s")]
    pub upstream_timeout: String,
    /// Target of /chat/authenticate and /chat/refresh (OIDC token endpoint).
    #[arg(long, env = "FLOWGATE_TOKEN_ENDPOINT_URL")]
    pub token_endpoint_url: Option<String>,
    /// OAuth client flowgate presents at the token endpoint (unset: a caller's own `client_id`
    /// and `client_secret`, if it sends them, are passed on).
    #[arg(long, env = "FLOWGATE_TOKEN_CLIENT_ID")]
    pub token_client_id: Option<String>,
    /// File holding that client's secret (a confidential client).
    #[arg(long, env = "FLOWGATE_TOKEN_CLIENT_SECRET_FILE")]
    pub token_client_secret_file: Option<PathBuf>,
    /// How that secret is sent: `basic` (HTTP Basic, client_secret_basic) or `post` (in the
    /// form, client_secret_post), as the client is registered.
    #[arg(long, env = "FLOWGATE_TOKEN_CLIENT_AUTH", default_value = "basic")]
    pub token_client_auth: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "FLOWGATE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Run without the controller (proxy only).
    #[arg(long, env = "FLOWGATE_NO_CONTROLLER", value_parser = BoolishValueParser::new())]
    pub no_controller: bool,
    /// Run without the proxy (controller only).
    #[arg(long, env = "FLOWGATE_NO_PROXY", value_parser = BoolishValueParser::new())]
    pub no_proxy: bool,
    /// Read resources from YAML files in this directory instead of a cluster.
    #[arg(long, env = "FLOWGATE_RESOURCES_DIR")]
    pub resources_dir: Option<PathBuf>,
    /// Read the files of `--resources-dir`'s subdirectories too (as `kubectl apply -R`);
    /// hidden ones are skipped, and links out of the directory are not followed.
    #[arg(long, env = "FLOWGATE_RESOURCES_RECURSIVE", value_parser = BoolishValueParser::new())]
    pub resources_recursive: bool,
    /// Threads serving proxy connections, each with its own runtime and Flowise connection
    /// pool (`auto`: one per CPU the process may use).
    #[arg(long, env = "FLOWGATE_PROXY_THREADS", default_value = "auto")]
    pub proxy_threads: String,
    /// After SIGTERM, how long to keep serving (with /readyz answering 503) before draining, so
    /// load balancers stop sending new connections first.
    #[arg(long, env = "FLOWGATE_SHUTDOWN_DELAY", default_value = "0s")]
    pub shutdown_delay: String,
    /// Memory for prediction bodies and JSON answers held by all requests together (`256Mi`,
    /// `1Gi`); past it new prediction bodies are refused with 503.
    #[arg(long, env = "FLOWGATE_BODY_MEMORY", default_value = "256Mi")]
    pub body_memory: String,
    /// Origins whose pages may call the proxy from a browser: `*`, or a comma-separated list such
    /// as `https://chat.example.com,http://localhost:5173`. Unset: none (no CORS headers).
    #[arg(long, env = "FLOWGATE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Proxies in front of flowgate (an ingress, a load balancer) whose `X-Forwarded-For` is
    /// believed: addresses and networks, comma-separated (`10.0.0.0/8,192.168.1.7`). Flowise is
    /// then told the caller's address, not theirs. Unset: the connection's peer.
    #[arg(long, env = "FLOWGATE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// What an invalid CreditPolicy does to the predictions it names: `skip` (charge nothing on
    /// it, as if it did not exist) or `refuse` (503 `policy_invalid` until it is fixed).
    #[arg(long, env = "FLOWGATE_INVALID_POLICIES", default_value = "skip")]
    pub invalid_policies: String,
}

/// Checked configuration of `flowgate run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub flowise_url: Url,
    pub flowise_api_key_file: Option<PathBuf>,
    pub listen_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub ledger: LedgerUrl,
    pub ledger_retention: Option<Duration>,
    pub jwt: JwtConfig,
    /// Verified tokens remembered at most (0: none).
    pub token_cache_size: usize,
    pub identity: ClaimMapping,
    pub import_namespace: Option<String>,
    pub sync_interval: Duration,
    pub upstream_timeout: Duration,
    pub token_endpoint_url: Option<Url>,
    pub token_client_id: Option<String>,
    pub token_client_secret_file: Option<PathBuf>,
    /// The secret goes in the form (client_secret_post), not as HTTP Basic.
    pub token_client_secret_in_form: bool,
    pub log_format: LogFormat,
    pub controller: bool,
    pub proxy: bool,
    pub resources_dir: Option<ResourcesDir>,
    pub proxy_threads: usize,
    pub shutdown_delay: Duration,
    /// Bytes.
    pub body_memory: usize,
    pub cors_origins: Option<CorsOrigins>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub invalid_policies: InvalidPolicies,
}

/// What an invalid CreditPolicy does to the predictions it names (`FLOWGATE_INVALID_POLICIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidPolicies {
    /// Skipped: it charges nothing, so its chatflows cost nothing on it (DESIGN's "skipped").
    #[default]
    Skip,
    /// Its predictions are refused (503 `policy_invalid`) until it is fixed or deleted.
    Refuse,
}

/// Origins allowed to call the proxy from a browser (`FLOWGATE_CORS_ORIGINS`).
#[derive(Debug, Clone, PartialEq)]
pub enum CorsOrigins {
    /// `*`: any page.
    Any,
    /// Exactly these origins, as browsers send them (`https://chat.example.com`).
    List(Vec<HeaderValue>),
}

/// Where the credits ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerUrl {
    /// Embedded SQLite database file.
    Sqlite(PathBuf),
    /// PostgreSQL connection string, as given.
    Postgres(String),
}

/// How caller JWTs are verified.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JwtConfig {
    pub hs256_secret_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_url: Option<Url>,
    pub oidc_issuer_url: Option<Url>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub service_account_audience: Option<String>,
}

/// How token claims map onto subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    pub user_claims: Vec<String>,
    pub groups_claim: String,
    pub admin_claim: String,
    pub admin_value: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            user_claims: vec!["sub".into(), "email".into()],
            groups_claim: "groups".into(),
            admin_claim: "role".into(),
            admin_value: "Admin".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting with a bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl Config {
    /// Checks every setting; the first bad one is the error.
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        if args.no_controller && args.no_proxy {
            return Err(invalid(
                "FLOWGATE_NO_CONTROLLER/FLOWGATE_NO_PROXY",
                "both set: nothing would run",
            ));
        }
        if let Some(dir) = &args.resources_dir {
            if args.no_proxy {
                return Err(invalid(
                    "FLOWGATE_NO_PROXY",
                    "set with --resources-dir, which runs no controller: nothing would run",
                ));
            }
            if !dir.is_dir() {
                return Err(invalid(
                    "FLOWGATE_RESOURCES_DIR",
                    format!("{} is not a directory flowgate can read", dir.display()),
                ));
            }
        } else if args.resources_recursive {
            return Err(invalid(
                "FLOWGATE_RESOURCES_RECURSIVE",
                "set without --resources-dir: there is no directory to read",
            ));
        }
        let jwt = JwtConfig {
            hs256_secret_file: args.jwt_hs256_secret_file,
            public_key_file: args.jwt_public_key_file,
            jwks_url: optional_url("FLOWGATE_JWKS_URL", args.jwks_url)?,
            oidc_issuer_url: optional_url("FLOWGATE_OIDC_ISSUER_URL", args.oidc_issuer_url)?,
            issuer: non_empty(args.jwt_issuer),
            audience: non_empty(args.jwt_audience),
            // A slip like 30m for 30s would accept every expired token for that long.
            leeway: at_most(
                "FLOWGATE_JWT_LEEWAY",
                duration("FLOWGATE_JWT_LEEWAY", &args.jwt_leeway)?,
                Duration::from_secs(300),
            )?,
            service_account_audience: non_empty(args.service_account_audience),
        };
        let token_cache_size = token_cache_size(&args.token_cache_size)?;
        if token_cache_size == 0 && jwt.service_account_audience.is_some() {
            // A ServiceAccount token's TokenReview verdict is kept in the cache: without it every
            // such request would send one, and an API server outage refuse them all at once.
            return Err(invalid(
                "FLOWGATE_TOKEN_CACHE_SIZE",
                "0 with FLOWGATE_SERVICE_ACCOUNT_AUDIENCE set: ServiceAccount tokens' reviews are \
                 kept in the cache (without it, a TokenReview per request); leave it on",
            ));
        }
        let token_endpoint_url =
            optional_url("FLOWGATE_TOKEN_ENDPOINT_URL", args.token_endpoint_url)?;
        let token_client_id = non_empty(args.token_client_id);
        if token_client_id.is_some() && token_endpoint_url.is_none() {
            return Err(invalid(
                "FLOWGATE_TOKEN_CLIENT_ID",
                "set without FLOWGATE_TOKEN_ENDPOINT_URL, the token endpoint it is for",
            ));
        }
        if args.token_client_secret_file.is_some() && token_client_id.is_none() {
            return Err(invalid(
                "FLOWGATE_TOKEN_CLIENT_SECRET_FILE",
                "set without FLOWGATE_TOKEN_CLIENT_ID, the client whose secret it is",
            ));
        }
        let listen_addr = socket_addr("FLOWGATE_LISTEN_ADDR", &args.listen_addr)?;
        let ops_addr = socket_addr("FLOWGATE_OPS_ADDR", &args.ops_addr)?;
        // One port for both would fail at the second bind, after the ledger was opened, with
        // an error that names neither setting.
        if !args.no_proxy && listen_addr.port() != 0 && listen_addr.port() == ops_addr.port() {
            let wildcard = |a: &SocketAddr| a.ip().is_unspecified();
            if listen_addr.ip() == ops_addr.ip() || wildcard(&listen_addr) || wildcard(&ops_addr) {
                return Err(invalid(
                    "FLOWGATE_OPS_ADDR",
                    format!(
                        "{ops_addr} is the proxy's port too (FLOWGATE_LISTEN_ADDR {listen_addr})"
                    ),
                ));
            }
        }
        Ok(Self {
            flowise_url: url("FLOWGATE_FLOWISE_URL", &args.flowise_url)?,
            flowise_api_key_file: args.flowise_api_key_file,
            listen_addr,
            ops_addr,
            ledger: LedgerUrl::parse(&args.ledger_url)?,
            ledger_retention: non_empty(args.ledger_retention)
                .map(|raw| retention("FLOWGATE_LEDGER_RETENTION", &raw))
                .transpose()?,
            jwt,
            token_cache_size,
            identity: claim_mapping(&args.user_claims, &args.groups_claim, &args.admin_claim)?,
            import_namespace: import_namespace(
                args.import_namespace,
                args.resources_dir.is_some(),
            )?,
            // Also each Chatflow's requeue: kube-runtime's scheduler panics on a deadline past
            // about two years, and below a few seconds every Chatflow would ask Flowise and
            // write its status many times a second.
            sync_interval: at_most(
                "FLOWGATE_SYNC_INTERVAL",
                at_least(
                    "FLOWGATE_SYNC_INTERVAL",
                    duration("FLOWGATE_SYNC_INTERVAL", &args.sync_interval)?,
                    MIN_SYNC_INTERVAL,
                )?,
                Duration::from_secs(24 * 3600),
            )?,
            // Below the 15 minutes a reservation stays open: a longer wait for Flowise would have
            // the sweep charge the hold of a call still under way.
            upstream_timeout: at_most(
                "FLOWGATE_UPSTREAM_TIMEOUT",
                positive(
                    "FLOWGATE_UPSTREAM_TIMEOUT",
                    duration("FLOWGATE_UPSTREAM_TIMEOUT", &args.upstream_timeout)?,
                )?,
                MAX_UPSTREAM_TIMEOUT,
            )?,
            shutdown_delay: non_empty(Some(args.shutdown_delay))
                .map(|raw| duration("FLOWGATE_SHUTDOWN_DELAY", &raw))
                .transpose()?
                .unwrap_or_default(),
            token_endpoint_url,
            token_client_id,
            token_client_secret_file: args.token_client_secret_file,
            token_client_secret_in_form: match args.token_client_auth.trim() {
                "basic" | "" => false,
                "post" => true,
                other => {
                    return Err(invalid(
                        "FLOWGATE_TOKEN_CLIENT_AUTH",
                        format!("'{other}' is neither 'basic' nor 'post'"),
                    ));
                }
            },
            log_format: match args.log_format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "FLOWGATE_LOG_FORMAT",
                        format!("'{other}' is neither 'text' nor 'json'"),
                    ));
                }
            },
            controller: !args.no_controller,
            proxy: !args.no_proxy,
            resources_dir: args.resources_dir.map(|path| ResourcesDir {
                path,
                recursive: args.resources_recursive,
            }),
            proxy_threads: proxy_threads(&args.proxy_threads)?,
            body_memory: non_empty(Some(args.body_memory))
                .map(|raw| body_memory(&raw))
                .transpose()?
                .unwrap_or(DEFAULT_BODY_MEMORY),
            cors_origins: non_empty(args.cors_origins)
                .map(|raw| cors_origins(&raw))
                .transpose()?,
            trusted_proxies: crate::proxy::forwarded::parse_trusted(&args.trusted_proxies)
                .map_err(|problem| invalid("FLOWGATE_TRUSTED_PROXIES", problem))?,
            invalid_policies: match args.invalid_policies.trim() {
                "skip" | "" => InvalidPolicies::Skip,
                "refuse" => InvalidPolicies::Refuse,
                other => {
                    return Err(invalid(
                        "FLOWGATE_INVALID_POLICIES",
                        format!("'{other}' is neither 'skip' nor 'refuse'"),
                    ));
                }
            },
        })
    }
}

impl LedgerUrl {
    /// Parses `sqlite:///path` or `postgres://…`; an error names `FLOWGATE_LEDGER_URL`.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        const SETTING: &str = "FLOWGATE_LEDGER_URL";
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(
                    SETTING,
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/flowgate/ledger.db",
                ));
            }
            // A file path, nothing else: rusqlite would take `file:` or `:memory:` as SQLite
            // URIs (an in-memory ledger lost at every restart, not even shared by its own
            // connections), and `?mode=rwc` (another URL style) would end up in the file's name.
            if path.starts_with("file:") || path.contains(":memory:") || path.contains('?') {
                return Err(invalid(
                    SETTING,
                    format!(
                        "sqlite://{path} is not a file path: write sqlite:// and the path alone, \
                         e.g. sqlite:///var/lib/flowgate/ledger.db (no query, no :memory:)"
                    ),
                ));
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            // libpq's TLS parameters are flowgate's to read; tokio-postgres parses the rest.
            let rest =
                crate::ledger::postgres_url_without_tls(raw).map_err(|e| invalid(SETTING, e))?;
            rest.parse::<tokio_postgres::Config>()
                .map_err(|e| invalid(SETTING, format!("not a valid PostgreSQL URL: {e}")))?;
            Ok(Self::Postgres(raw.to_string()))
        } else {
            Err(invalid(
                SETTING,
                format!("'{}' must start with sqlite:// or postgres://", masked(raw)),
            ))
        }
    }
}

/// The shortest `FLOWGATE_SYNC_INTERVAL`.
const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Longest `FLOWGATE_UPSTREAM_TIMEOUT`: 14 minutes, inside the reservation's 15.
pub const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(14 * 60);

/// `auto` (one per CPU this process may use, cgroup quota included, at most 256) or a count
/// from 1 to 256.
fn proxy_threads(raw: &str) -> Result<usize, ConfigError> {
    const SETTING: &str = "FLOWGATE_PROXY_THREADS";
    if matches!(raw.trim(), "auto" | "") {
        return Ok(std::thread::available_parallelism().map_or(1, |n| usize::from(n).min(256)));
    }
    match raw.trim().parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(invalid(
            SETTING,
            format!("'{raw}' is neither 'auto' nor a number of threads from 1 to 256"),
        )),
    }
}

/// `FLOWGATE_TOKEN_CACHE_SIZE` when unset.
const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;

/// A number of cached tokens: at most a million (a few GiB at most of memory).
fn token_cache_size(raw: &str) -> Result<usize, ConfigError> {
    if raw.trim().is_empty() {
        return Ok(DEFAULT_TOKEN_CACHE_SIZE);
    }
    match raw.trim().parse::<usize>() {
        Ok(n @ 0..=1_000_000) => Ok(n),
        _ => Err(invalid(
            "FLOWGATE_TOKEN_CACHE_SIZE",
            format!("'{raw}' is not a number of tokens from 0 (no cache) to 1000000"),
        )),
    }
}

/// `FLOWGATE_BODY_MEMORY` when unset: half the chart's default memory limit (512Mi).
const DEFAULT_BODY_MEMORY: usize = 256 << 20;

/// A size in mebibytes or gibibytes as Kubernetes writes them (`256Mi`, `1Gi`), at least 1Mi.
fn body_memory(raw: &str) -> Result<usize, ConfigError> {
    const SETTING: &str = "FLOWGATE_BODY_MEMORY";
    let raw = raw.trim();
    let (digits, unit) = if let Some(n) = raw.strip_suffix("Mi") {
        (n, 1usize << 20)
    } else if let Some(n) = raw.strip_suffix("Gi") {
        (n, 1usize << 30)
    } else {
        (raw, 0)
    };
    match digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
    {
        Some(bytes) if bytes >= 1 << 20 => Ok(bytes),
        _ => Err(invalid(
            SETTING,
            format!("'{raw}' is not a size of at least 1Mi, such as 256Mi or 1Gi"),
        )),
    }
}

/// `*`, or origins: scheme, host and port only. Each is kept as browsers send it in `Origin`
/// (lowercase host, punycode, no default port), whichever way it was written.
fn cors_origins(raw: &str) -> Result<CorsOrigins, ConfigError> {
    const SETTING: &str = "FLOWGATE_CORS_ORIGINS";
    let items: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(invalid(SETTING, format!("'{raw}' lists no origin")));
    }
    if items == ["*"] {
        return Ok(CorsOrigins::Any);
    }
    let origin = |item: &str| -> Result<HeaderValue, ConfigError> {
        let url = Url::parse(item)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        let Some(url) = url else {
            return Err(invalid(
                SETTING,
                format!(
                    "'{item}' is neither '*' (alone) nor an origin such as https://chat.example.com"
                ),
            ));
        };
        let origin = url.origin().ascii_serialization();
        let after_scheme = item.split_once("://").map_or("", |(_, rest)| rest);
        if after_scheme.contains(['/', '?', '#', '@']) {
            return Err(invalid(
                SETTING,
                format!(
                    "'{item}' is not an origin (scheme, host and port only); did you mean '{origin}'?"
                ),
            ));
        }
        HeaderValue::from_str(&origin)
            .map_err(|_| invalid(SETTING, format!("'{item}' is not a header value")))
    };
    Ok(CorsOrigins::List(
        items.into_iter().map(origin).collect::<Result<_, _>>()?,
    ))
}

/// The namespace imports go to: a name Kubernetes takes, since a bad one would only show as
/// a failed create per Flowise chatflow at every sync pass. Imports are the controller's, so
/// the value is refused with `--resources-dir`, which runs none.
fn import_namespace(
    value: Option<String>,
    resources_dir: bool,
) -> Result<Option<String>, ConfigError> {
    const SETTING: &str = "FLOWGATE_IMPORT_NAMESPACE";
    let Some(ns) = non_empty(value) else {
        return Ok(None);
    };
    let ns = ns.trim();
    crate::crd::schema::dns_label(ns).map_err(|why| invalid(SETTING, format!("'{ns}' {why}")))?;
    if resources_dir {
        return Err(invalid(
            SETTING,
            "set with --resources-dir, which runs no controller: nothing would import",
        ));
    }
    Ok(Some(ns.to_string()))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `raw` with what stands before its last `@` (a user and password) hidden: a value that does
/// not parse is quoted in its error, which ends up in logs.
fn masked(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_string();
    };
    let start = raw[..at].find("://").map_or(0, |scheme| scheme + 3);
    format!("{}***{}", &raw[..start], &raw[at..])
}

fn url(setting: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(raw)
        .map_err(|e| invalid(setting, format!("'{}' is not a URL: {e}", masked(raw))))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(invalid(
            setting,
            format!("scheme '{other}' is not http or https"),
        )),
    }
}

fn optional_url(setting: &'static str, raw: Option<String>) -> Result<Option<Url>, ConfigError> {
    non_empty(raw).map(|raw| url(setting, &raw)).transpose()
}

fn socket_addr(setting: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|_| {
        invalid(
            setting,
            format!("'{raw}' is not an address like [::]:8080 or 0.0.0.0:8080"),
        )
    })
}

/// Parses `60s`, `5m`, `1h 30m` or ISO 8601 (`PT60S`).
pub fn duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let parsed: jiff::SignedDuration = raw
        .trim()
        .parse()
        .map_err(|_| invalid(setting, format!("'{raw}' is not a duration like 30s or 5m")))?;
    Duration::try_from(parsed).map_err(|_| invalid(setting, format!("'{raw}' is negative")))
}

/// The shortest retention: well beyond a reservation's ttl (15 minutes), so that pruning does not
/// delete what a proxy may still settle, nor an idempotency key a client is still retrying —
/// unless a stream runs longer than the retention (a stream has no total time limit, only one
/// between events): docs/credits.md says to keep streams well inside the ttl.
pub const MIN_RETENTION: Duration = Duration::from_secs(3_600);

/// Parses a retention like [`duration`], with days and weeks (of 24 hours) as well.
fn retention(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            setting,
            format!("'{raw}' is not a duration like 90d or 2160h"),
        )
    };
    let span: jiff::Span = raw.trim().parse().map_err(|_| bad())?;
    let length = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    let length = Duration::try_from(length).map_err(|_| bad())?;
    if length < MIN_RETENTION {
        return Err(invalid(setting, format!("'{raw}' is shorter than 1h")));
    }
    Ok(length)
}

fn at_most(setting: &'static str, value: Duration, max: Duration) -> Result<Duration, ConfigError> {
    if value > max {
        let max = jiff::SignedDuration::try_from(max).unwrap_or(jiff::SignedDuration::MAX);
        Err(invalid(setting, format!("must be at most {max:#}")))
    } else {
        Ok(value)
    }
}

fn at_least(
    setting: &'static str,
    value: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    if value < min {
        let min = jiff::SignedDuration::try_from(min).unwrap_or(jiff::SignedDuration::MAX);
        Err(invalid(setting, format!("must be at least {min:#}")))
    } else {
        Ok(value)
    }
}

fn positive(setting: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(invalid(setting, "must be greater than zero"))
    } else {
        Ok(value)
    }
}

fn claim_mapping(users: &str, groups: &str, admin: &str) -> Result<ClaimMapping, ConfigError> {
    let user_claims: Vec<String> = users
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    if user_claims.is_empty() {
        return Err(invalid("FLOWGATE_USER_CLAIMS", "names no claim"));
    }
    if groups.trim().is_empty() {
        return Err(invalid("FLOWGATE_GROUPS_CLAIM", "is empty"));
    }
    let (claim, value) = admin
        .split_once('=')
        .filter(|(c, v)| !c.trim().is_empty() && !v.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "FLOWGATE_ADMIN_CLAIM",
                format!("'{admin}' is not claim=value"),
            )
        })?;
    Ok(ClaimMapping {
        user_claims,
        groups_claim: groups.trim().to_string(),
        admin_claim: claim.trim().to_string(),
        admin_value: value.trim().to_string(),
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

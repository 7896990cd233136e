//! Flags and environment variables as `flowgate run` reads them.

use super::*;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// Parses flags only: the test process's own FLOWGATE_* variables must not leak in.
fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(std::iter::once("flowgate").chain(args.iter().copied()))
        .expect("flags parse");
    let cli = Cli::from_arg_matches(&matches).expect("matches map to the flags");
    Config::from_args(cli.run)
}

#[test]
fn defaults_match_the_documented_table() {
    let config = parse(&[]).expect("defaults are valid");
    assert_eq!(config.flowise_url.as_str(), "http://127.0.0.1:3000/");
    assert_eq!(config.listen_addr, "[::]:8080".parse().expect("addr"));
    assert_eq!(config.ops_addr, "[::]:9090".parse().expect("addr"));
    assert_eq!(
        config.ledger,
        LedgerUrl::Sqlite(PathBuf::from("./flowgate-ledger.db"))
    );
    assert_eq!(config.identity, ClaimMapping::default());
    assert_eq!(config.sync_interval, Duration::from_secs(60));
    assert_eq!(config.upstream_timeout, Duration::from_secs(300));
    assert_eq!(config.jwt.leeway, Duration::from_secs(30));
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.ledger_retention, None, "keep everything");
    assert_eq!(config.shutdown_delay, Duration::ZERO, "drain at once");
    assert_eq!(config.body_memory, 256 << 20);
    assert_eq!(config.token_cache_size, 10_000);
    assert_eq!(config.cors_origins, None, "no CORS headers");
    assert_eq!(
        config.invalid_policies,
        InvalidPolicies::Skip,
        "as DESIGN says"
    );
    assert!(config.controller && config.proxy);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(
        config.proxy_threads, cpus,
        "auto: one thread per usable CPU"
    );
}

#[test]
fn a_shutdown_delay_is_a_duration() {
    let config = parse(&["--shutdown-delay", "5s"]).expect("valid");
    assert_eq!(config.shutdown_delay, Duration::from_secs(5));
}

#[test]
fn invalid_policies_are_skipped_or_refuse() {
    let config = parse(&["--invalid-policies", "refuse"]).expect("valid");
    assert_eq!(config.invalid_policies, InvalidPolicies::Refuse);
    let config = parse(&["--invalid-policies", "skip"]).expect("valid");
    assert_eq!(config.invalid_policies, InvalidPolicies::Skip);
}

#[test]
fn the_token_cache_size_is_a_count_and_zero_turns_it_off() {
    let config = parse(&["--token-cache-size", "0"]).expect("valid");
    assert_eq!(config.token_cache_size, 0);
    let config = parse(&["--token-cache-size", " 250000 "]).expect("valid");
    assert_eq!(config.token_cache_size, 250_000);
    let error = parse(&[
        "--token-cache-size",
        "0",
        "--service-account-audience",
        "flowgate",
    ])
    .expect_err("reviews live in the cache");
    assert_eq!(error.setting, "FLOWGATE_TOKEN_CACHE_SIZE");
    let config = parse(&["--token-cache-size", ""]).expect("valid");
    assert_eq!(config.token_cache_size, 10_000, "empty: the default");
    for bad in ["-1", "10k", "1000001"] {
        let flag = format!("--token-cache-size={bad}");
        let error = parse(&[&flag]).expect_err(bad);
        assert_eq!(error.setting, "FLOWGATE_TOKEN_CACHE_SIZE", "{bad}");
    }
}

#[test]
fn body_memory_takes_mebibytes_or_gibibytes() {
    let config = parse(&["--body-memory", "64Mi"]).expect("valid");
    assert_eq!(config.body_memory, 64 << 20);
    let config = parse(&["--body-memory", " 2Gi "]).expect("valid");
    assert_eq!(config.body_memory, 2 << 30);
}

#[test]
fn cors_origins_are_any_or_exact_origins() {
    let config = parse(&["--cors-origins", " * "]).expect("valid");
    assert_eq!(config.cors_origins, Some(CorsOrigins::Any));
    let config = parse(&[
        "--cors-origins",
        "https://chat.example.com, http://localhost:5173,",
    ])
    .expect("valid");
    assert_eq!(
        config.cors_origins,
        Some(CorsOrigins::List(vec![
            HeaderValue::from_static("https://chat.example.com"),
            HeaderValue::from_static("http://localhost:5173"),
        ]))
    );
    // Written another way, kept as browsers send it.
    let config = parse(&["--cors-origins", "HTTPS://Chat.Example.com:443"]).expect("valid");
    assert_eq!(
        config.cors_origins,
        Some(CorsOrigins::List(vec![HeaderValue::from_static(
            "https://chat.example.com"
        )]))
    );
    let error = parse(&["--cors-origins", "https://chat.example.com/"]).expect_err("a path");
    assert!(
        error
            .to_string()
            .contains("did you mean 'https://chat.example.com'"),
        "{error}"
    );
}

#[test]
fn proxy_threads_take_a_count() {
    let config = parse(&["--proxy-threads", " 3 "]).expect("valid");
    assert_eq!(config.proxy_threads, 3);
}

#[test]
fn a_value_that_does_not_parse_is_quoted_without_its_password() {
    for args in [
        &["--ledger-url", "postgresql+asyncpg://app:s3cret@db/ledger"][..],
        &["--flowise-url", "http://admin:s3c#ret@flowise:3000/"][..],
    ] {
        let error = parse(args).expect_err("invalid").to_string();
        assert!(!error.contains("s3c"), "{error}");
        assert!(error.contains("***@"), "{error}");
    }
    assert_eq!(masked("no-credentials"), "no-credentials");
    assert_eq!(masked("user:pw@host"), "***@host");
    assert_eq!(
        masked("user:pw@db/x?next=http://y"),
        "***@db/x?next=http://y",
        "a scheme after the credentials is not theirs"
    );
}

#[test]
fn a_bad_value_names_its_setting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--listen-addr", "localhost"], "FLOWGATE_LISTEN_ADDR"),
        (
            &[
                "--listen-addr",
                "127.0.0.1:8080",
                "--ops-addr",
                "127.0.0.1:8080",
            ],
            "FLOWGATE_OPS_ADDR",
        ),
        (
            &[
                "--listen-addr",
                "0.0.0.0:9090",
                "--ops-addr",
                "127.0.0.1:9090",
            ],
            "FLOWGATE_OPS_ADDR",
        ),
        (&["--ledger-url", "mysql://x"], "FLOWGATE_LEDGER_URL"),
        (&["--ledger-url", "sqlite://"], "FLOWGATE_LEDGER_URL"),
        (
            &["--ledger-url", "postgres://db/ledger?sslmode=verify"],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            &["--ledger-url", "postgres://db/ledger?sslrootcert=system"],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            &[
                "--ledger-url",
                "postgres://db/ledger?sslmode=require&port=x",
            ],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            &["--resources-dir", "/no/such/dir", "--no-controller"],
            "FLOWGATE_RESOURCES_DIR",
        ),
        (&["--resources-dir", ".", "--no-proxy"], "FLOWGATE_NO_PROXY"),
        (
            &["--import-namespace", "Team_A"],
            "FLOWGATE_IMPORT_NAMESPACE",
        ),
        (
            &["--resources-dir", ".", "--import-namespace", "team-a"],
            "FLOWGATE_IMPORT_NAMESPACE",
        ),
        (&["--resources-recursive"], "FLOWGATE_RESOURCES_RECURSIVE"),
        (&["--sync-interval", "soon"], "FLOWGATE_SYNC_INTERVAL"),
        (&["--sync-interval", "0s"], "FLOWGATE_SYNC_INTERVAL"),
        (&["--sync-interval", "100ms"], "FLOWGATE_SYNC_INTERVAL"),
        (&["--sync-interval", "25h"], "FLOWGATE_SYNC_INTERVAL"),
        (&["--jwt-leeway", "30m"], "FLOWGATE_JWT_LEEWAY"),
        (&["--upstream-timeout", "0s"], "FLOWGATE_UPSTREAM_TIMEOUT"),
        (&["--upstream-timeout", "long"], "FLOWGATE_UPSTREAM_TIMEOUT"),
        (&["--upstream-timeout", "15m"], "FLOWGATE_UPSTREAM_TIMEOUT"),
        (
            &["--upstream-timeout", "9223372036854775807s"],
            "FLOWGATE_UPSTREAM_TIMEOUT",
        ),
        (
            &["--ledger-url", "sqlite://:memory:"],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            &["--ledger-url", "sqlite:///var/lib/ledger.db?mode=rwc"],
            "FLOWGATE_LEDGER_URL",
        ),
        (
            &["--ledger-url", "sqlite://file:ledger.db"],
            "FLOWGATE_LEDGER_URL",
        ),
        (&["--admin-claim", "role"], "FLOWGATE_ADMIN_CLAIM"),
        (&["--flowise-url", "ftp://x"], "FLOWGATE_FLOWISE_URL"),
        (&["--log-format", "xml"], "FLOWGATE_LOG_FORMAT"),
        (&["--user-claims", " , "], "FLOWGATE_USER_CLAIMS"),
        (&["--proxy-threads", "0"], "FLOWGATE_PROXY_THREADS"),
        (&["--proxy-threads", "257"], "FLOWGATE_PROXY_THREADS"),
        (&["--proxy-threads", "many"], "FLOWGATE_PROXY_THREADS"),
        (&["--shutdown-delay=-5s"], "FLOWGATE_SHUTDOWN_DELAY"),
        (&["--body-memory", "256"], "FLOWGATE_BODY_MEMORY"),
        (&["--body-memory", "256M"], "FLOWGATE_BODY_MEMORY"),
        (&["--body-memory", "0Mi"], "FLOWGATE_BODY_MEMORY"),
        (
            &["--body-memory", "99999999999999999999Mi"],
            "FLOWGATE_BODY_MEMORY",
        ),
        (&["--body-memory", "1.5Gi"], "FLOWGATE_BODY_MEMORY"),
        (&["--body-memory", "Mi"], "FLOWGATE_BODY_MEMORY"),
        (
            &["--cors-origins", "chat.example.com"],
            "FLOWGATE_CORS_ORIGINS",
        ),
        (
            &["--cors-origins", "*, https://a.example"],
            "FLOWGATE_CORS_ORIGINS",
        ),
        (&["--cors-origins", " , "], "FLOWGATE_CORS_ORIGINS"),
        (
            &["--cors-origins", "https://a.example?x"],
            "FLOWGATE_CORS_ORIGINS",
        ),
        (
            &["--cors-origins", "https://me@a.example"],
            "FLOWGATE_CORS_ORIGINS",
        ),
        (&["--cors-origins", "null"], "FLOWGATE_CORS_ORIGINS"),
        (
            &["--cors-origins", "ftp://a.example"],
            "FLOWGATE_CORS_ORIGINS",
        ),
        (&["--shutdown-delay", "later"], "FLOWGATE_SHUTDOWN_DELAY"),
        (&["--invalid-policies", "deny"], "FLOWGATE_INVALID_POLICIES"),
        (
            &["--ledger-retention", "forever"],
            "FLOWGATE_LEDGER_RETENTION",
        ),
        (&["--ledger-retention", "3mo"], "FLOWGATE_LEDGER_RETENTION"),
        (&["--ledger-retention", "59m"], "FLOWGATE_LEDGER_RETENTION"),
        (&["--ledger-retention=-90d"], "FLOWGATE_LEDGER_RETENTION"),
        (
            &["--token-client-id", "flowgate"],
            "FLOWGATE_TOKEN_CLIENT_ID",
        ),
        (
            &["--token-client-auth", "jwt"],
            "FLOWGATE_TOKEN_CLIENT_AUTH",
        ),
        (
            &[
                "--token-endpoint-url",
                "https://idp.example/token",
                "--token-client-secret-file",
                "/s",
            ],
            "FLOWGATE_TOKEN_CLIENT_SECRET_FILE",
        ),
    ];
    for (args, setting) in cases {
        let err = parse(args).expect_err("bad value is refused");
        assert_eq!(err.setting, *setting, "for {args:?}");
        assert!(
            err.to_string().starts_with(setting),
            "one line naming the setting: {err}"
        );
    }
}

#[test]
fn a_retention_takes_days_weeks_and_hours() {
    for (raw, hours) in [
        ("90d", 90 * 24),
        ("2w", 14 * 24),
        ("2160h", 2160),
        (" 1h ", 1),
    ] {
        let config = parse(&["--ledger-retention", raw]).expect("valid");
        assert_eq!(
            config.ledger_retention,
            Some(Duration::from_secs(hours * 3_600)),
            "{raw}"
        );
    }
    let config = parse(&["--ledger-retention", ""]).expect("empty is unset");
    assert_eq!(config.ledger_retention, None);
}

#[test]
fn postgres_and_claims_parse() {
    let config = parse(&[
        "--ledger-url",
        "postgres://flowgate@127.0.0.1:5432/ledger",
        "--user-claims",
        "email, preferred_username",
        "--admin-claim",
        "realm_role = platform-admin",
        "--sync-interval",
        "5m",
    ])
    .expect("valid");
    assert!(matches!(config.ledger, LedgerUrl::Postgres(_)));
    assert_eq!(
        config.identity.user_claims,
        vec!["email", "preferred_username"]
    );
    assert_eq!(config.identity.admin_claim, "realm_role");
    assert_eq!(config.identity.admin_value, "platform-admin");
    assert_eq!(config.sync_interval, Duration::from_secs(300));
    // libpq's TLS parameters are the ledger's; the URL is kept whole for it.
    let url = "postgres://db/ledger?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5";
    let config = parse(&["--ledger-url", url]).expect("valid");
    assert!(matches!(&config.ledger, LedgerUrl::Postgres(kept) if kept == url));
}

#[test]
fn the_import_namespace_is_a_dns_label_and_trimmed() {
    let config = parse(&["--import-namespace", " team-a "]).expect("valid");
    assert_eq!(config.import_namespace.as_deref(), Some("team-a"));
    let config = parse(&["--import-namespace", " "]).expect("blank is unset");
    assert_eq!(config.import_namespace, None);
}

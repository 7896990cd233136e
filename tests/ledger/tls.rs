//! PostgreSQL only: the ledger over TLS, as libpq's URL parameters ask, against the real
//! server `scripts/postgres.sh` runs. Its roles `flowgate_tls` and `flowgate_cert` are refused
//! without TLS (and the second without its client certificate), so that a connection that
//! works is one that used TLS. Its certificate names `localhost` only, so that connecting to
//! `127.0.0.1` tells `verify-ca` from `verify-full`.

use super::*;
use crate::support::opens_and_charges;

use std::path::PathBuf;
use std::time::Duration;

use flowgate::config::LedgerUrl;

/// The directory of the test CA's files (`FLOWGATE_TEST_POSTGRES_TLS`).
fn tls_dir() -> PathBuf {
    let Ok(dir) = std::env::var("FLOWGATE_TEST_POSTGRES_TLS") else {
        panic!(
            "FLOWGATE_TEST_POSTGRES_TLS is not set: run `scripts/postgres.sh start` and \
             `eval \"$(scripts/postgres.sh env)\"`, then run the tests again"
        );
    };
    PathBuf::from(dir)
}

fn file(name: &str) -> String {
    tls_dir().join(name).display().to_string()
}

/// A URL for `role` at `host`, in a fresh schema named after `test`, with the TLS `parameters`.
async fn url(test: &str, role: &str, host: &str, parameters: &str) -> LedgerUrl {
    let store = crate::support::postgres(test).await;
    let LedgerUrl::Postgres(plain) = &store.url else {
        unreachable!("a PostgreSQL store");
    };
    let config: tokio_postgres::Config = plain.parse().expect("the test URL parses");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config
        .get_dbname()
        .expect("the test URL names its database");
    let (_, options) = plain.split_once("options=").expect("a schema");
    let separator = if parameters.is_empty() { "" } else { "&" };
    LedgerUrl::Postgres(format!(
        "postgres://{role}@{host}:{port}/{dbname}?options={options}{separator}{parameters}"
    ))
}

/// Why opening the ledger at `url` fails: a configuration to change, never worth retrying.
async fn refused(url: &LedgerUrl) -> String {
    match ledger::open(url).await {
        Ok(_) => panic!("{url:?} opened"),
        Err(e) => {
            assert!(!e.transient(), "{e}: not transient");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn tls_is_used_by_default_and_when_required_and_never_when_disabled() {
    let test = "tls_by_default";
    let disabled = refused(&url(test, "flowgate_tls", "127.0.0.1", "sslmode=disable").await).await;
    assert!(disabled.contains("no encryption"), "{disabled}");
    // libpq's default, prefer: TLS when the server offers it, any certificate.
    opens_and_charges(&url(test, "flowgate_tls", "127.0.0.1", "").await).await;
    opens_and_charges(&url(test, "flowgate_tls", "127.0.0.1", "sslmode=require").await).await;
}

#[tokio::test]
async fn verify_full_checks_the_name_and_verify_ca_the_chain_only() {
    let test = "tls_verify";
    let ca = format!("sslrootcert={}", file("ca.crt"));
    let other = format!("sslrootcert={}", file("other-ca.crt"));
    opens_and_charges(
        &url(
            test,
            "flowgate_tls",
            "localhost",
            &format!("sslmode=verify-full&{ca}"),
        )
        .await,
    )
    .await;
    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = refused(
        &url(
            test,
            "flowgate_tls",
            "127.0.0.1",
            &format!("sslmode=verify-full&{ca}"),
        )
        .await,
    )
    .await;
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    opens_and_charges(
        &url(
            test,
            "flowgate_tls",
            "127.0.0.1",
            &format!("sslmode=verify-ca&{ca}"),
        )
        .await,
    )
    .await;
    // Another CA: refused in verify-full, and in require too, as in libpq (roots given are
    // always checked).
    for mode in ["verify-full", "verify-ca", "require"] {
        let untrusted = refused(
            &url(
                test,
                "flowgate_tls",
                "localhost",
                &format!("sslmode={mode}&{other}"),
            )
            .await,
        )
        .await;
        assert!(untrusted.contains("UnknownIssuer"), "{mode}: {untrusted}");
    }
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_named() {
    let test = "tls_client_cert";
    let without = refused(&url(test, "flowgate_cert", "localhost", "sslmode=require").await).await;
    assert!(
        without.contains("requires a valid client certificate"),
        "{without}"
    );
    let identity = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    opens_and_charges(&url(test, "flowgate_cert", "localhost", &identity).await).await;
}

#[tokio::test]
async fn a_file_that_cannot_be_read_is_named_before_connecting() {
    let missing = tls_dir().join("no-such-ca.crt").display().to_string();
    let error = refused(
        &url(
            "tls_missing_file",
            "flowgate_tls",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={missing}"),
        )
        .await,
    )
    .await;
    assert!(
        error.starts_with("PostgreSQL ledger TLS: sslrootcert=") && error.contains(&missing),
        "{error}"
    );
}

/// The files are read for each new connection, as libpq reads them: a rotated CA (or client
/// certificate) is used without a restart. The shared pool opens its first connection at the
/// first rate take, after the ledger opened.
#[tokio::test]
async fn the_files_are_read_again_for_each_new_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.crt");
    std::fs::copy(tls_dir().join("ca.crt"), &root).expect("copy the CA");
    let url = url(
        "tls_rotation",
        "flowgate_tls",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    )
    .await;
    let ledger = ledger::open(&url).await.expect("opens");
    std::fs::copy(tls_dir().join("other-ca.crt"), &root).expect("rotate to another CA");
    let refused = ledger
        .take_rate("rotation", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect_err("a new connection trusts the new file only");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    std::fs::copy(tls_dir().join("ca.crt"), &root).expect("rotate back");
    let take = ledger
        .take_rate("rotation", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("connects with the file as it is now")
        .expect("PostgreSQL shares allowances");
    assert!(take.admitted);
}

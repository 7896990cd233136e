//! The peer: HAProxy 2.6 in front of the same upstream, on three frontends — plain pass-through,
//! and `jwt_verify` of HS256 and RS256 tokens (signature, `alg` pinned, `exp` checked, the
//! `Authorization` header removed before forwarding). HAProxy checks only the token; it does not
//! decide access, charge credits or touch the body.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, Child};
use crate::tokens::Keys;

/// A running HAProxy and its frontends.
pub struct HaProxy {
    pub child: Child,
    pub plain: SocketAddr,
    pub hs256: SocketAddr,
    pub rs256: SocketAddr,
}

/// Writes the configuration and starts HAProxy in the foreground.
pub fn start(dir: &Path, keys: &Keys, upstream: SocketAddr) -> anyhow::Result<HaProxy> {
    let (plain, hs256, rs256) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    let config = config(keys, upstream, plain, hs256, rs256, &keys.rs256_public);
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&path);
    let mut child = Child::spawn("haproxy", command, dir)?;
    for addr in [plain, hs256, rs256] {
        procs::wait_listening(&mut child, addr, Duration::from_secs(10))?;
    }
    Ok(HaProxy {
        child,
        plain,
        hs256,
        rs256,
    })
}

fn config(
    keys: &Keys,
    upstream: SocketAddr,
    plain: SocketAddr,
    hs256: SocketAddr,
    rs256: SocketAddr,
    public_key: &Path,
) -> String {
    let verify = |alg: &str, key: &str| {
        format!(
            "    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.jwt_alg) -m str {alg} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.jwt_alg,\"{key}\") -m int 1 }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request del-header authorization
"
        )
    };
    format!(
        "global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 300s
    option http-keep-alive
    http-reuse always

frontend plain
    bind {plain}
    default_backend flowise

frontend jwt_hs256
    bind {hs256}
{hs}    default_backend flowise

frontend jwt_rs256
    bind {rs256}
{rs}    default_backend flowise

backend flowise
    server upstream {upstream}
",
        hs = verify("HS256", &keys.hs256_secret),
        rs = verify("RS256", &public_key.display().to_string()),
    )
}

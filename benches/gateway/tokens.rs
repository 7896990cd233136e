//! Key material of one run (generated fresh, never the test fixtures), caller tokens, and the
//! JWKS that flowgate fetches over HTTP like it would from an identity provider.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const KID: &str = "bench-rs256";

/// Keys of one run, with the files flowgate and HAProxy read.
pub struct Keys {
    pub hs256_secret: String,
    pub hs256_file: PathBuf,
    /// PEM public key of the RSA key (HAProxy 2.6's `jwt_verify` reads a public key, not a
    /// certificate, despite its documentation).
    pub rs256_public: PathBuf,
    rs256: EncodingKey,
    pub jwks: Value,
}

impl Keys {
    /// A random HS256 secret and a fresh RSA 2048 key pair (with `openssl`) under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let hs256_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let hs256_file = dir.join("hs256.secret");
        std::fs::write(&hs256_file, &hs256_secret)?;
        let key = dir.join("rs256.key");
        let public = dir.join("rs256.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path(&key)?,
        ])?;
        openssl(&[
            "pkey",
            "-in",
            path(&key)?,
            "-pubout",
            "-out",
            path(&public)?,
        ])?;
        let pem = std::fs::read(&key)?;
        let rs256 = EncodingKey::from_rsa_pem(&pem).context("the generated RSA key")?;
        let mut jwk = Jwk::from_encoding_key(&rs256, Algorithm::RS256)?;
        jwk.common.key_id = Some(KID.into());
        Ok(Self {
            hs256_secret,
            hs256_file,
            rs256_public: public,
            rs256,
            jwks: json!({"keys": [jwk]}),
        })
    }

    /// An HS256 token for `sub` with `extra` claims, valid for two hours.
    pub fn hs256(&self, sub: &str, extra: Value) -> anyhow::Result<String> {
        let key = EncodingKey::from_secret(self.hs256_secret.as_bytes());
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(sub, extra),
            &key,
        )?)
    }

    /// An RS256 token (with the JWKS `kid`) for `sub` with `extra` claims.
    pub fn rs256(&self, sub: &str, extra: Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        Ok(jsonwebtoken::encode(
            &header,
            &claims(sub, extra),
            &self.rs256,
        )?)
    }
}

fn claims(sub: &str, extra: Value) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let mut claims = json!({"sub": sub, "iat": now, "exp": now + 7200});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("run directory path is not UTF-8")
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (Debian package `openssl`)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Serves `jwks` at every path on a loopback port, until the runtime stops.
pub async fn serve_jwks(jwks: &Value) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(serde_json::to_vec(jwks)?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let mut resp = hyper::Response::new(Full::new(body.clone()));
                    resp.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

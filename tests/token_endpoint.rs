//! The token routes (`/chat/authenticate`, `/chat/refresh`) ask the configured token endpoint
//! with the caller's password (and flowgate's client secret): a redirect is refused, not
//! followed, an answer past 64 KiB is not read whole, and a body past 16 KiB is refused. Anyone
//! may call these routes.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use support::gate::{Flowgate, Options};

/// A server that answers every request with `status`, `headers` and `body`; its URL and the
/// number of requests it received.
async fn answering(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicU64::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, headers, body) = (seen.clone(), headers.clone(), body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let mut resp = Response::new(Full::new(body.clone()));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    for (name, value) in &headers {
                        resp.headers_mut()
                            .insert(*name, value.parse().expect("header value"));
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, requests)
}

/// A flowgate whose token endpoint is `endpoint`.
async fn gate_asking(endpoint: String) -> Flowgate {
    Flowgate::start_with(Options {
        token_endpoint_url: Some(endpoint),
        ..Default::default()
    })
    .await
}

/// Alice's `/chat/authenticate` at the flowgate at `base`.
fn login(
    base: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    reqwest::Client::new()
        .post(format!("{base}/chat/authenticate"))
        .json(&json!({"username": "alice", "password": "s3cret"}))
        .send()
}

/// `/chat/authenticate` through a flowgate whose token endpoint is `endpoint`.
async fn authenticate(endpoint: String) -> (u16, Value) {
    let gate = gate_asking(endpoint).await;
    let resp = login(&gate.base).await.expect("flowgate answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

/// A login past the ones flowgate may ask at once is refused at once, not queued: a token
/// endpoint that never answers holds the first 64.
#[tokio::test]
async fn logins_at_once_past_the_limit_are_refused_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let gate = gate_asking(url).await;
    let waiting: Vec<_> = (0..64).map(|_| tokio::spawn(login(&gate.base))).collect();
    support::eventually(20, "64 logins at the token endpoint", || async {
        (accepted.load(Ordering::SeqCst) >= 64).then_some(())
    })
    .await;
    let refused = login(&gate.base).await.expect("flowgate answers");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_endpoint_busy", "{body}");
    for login in waiting {
        login.abort();
    }
}

/// Callers slow to send their body hold no place: only a call to the token endpoint does.
#[tokio::test]
async fn logins_slow_to_send_their_body_take_no_place() {
    use tokio::io::AsyncWriteExt;
    let tokens = Bytes::from_static(br#"{"access_token":"at","token_type":"Bearer"}"#);
    let (endpoint, _) = answering(200, vec![], tokens).await;
    let gate = gate_asking(format!("{endpoint}/token")).await;
    let addr = gate.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..70 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /chat/authenticate HTTP/1.1\r\nhost: flowgate\r\n\
                  content-type: application/json\r\ncontent-length: 100\r\n\r\n{",
            )
            .await
            .expect("a head and the start of a body");
        slow.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let resp = login(&gate.base).await.expect("flowgate answers");
    assert_eq!(resp.status(), 200);
    drop(slow);
}

#[tokio::test]
async fn tokens_are_answered_not_to_be_cached() {
    let tokens = Bytes::from_static(br#"{"access_token":"at","token_type":"Bearer"}"#);
    let (endpoint, _) = answering(200, vec![], tokens).await;
    let gate = gate_asking(format!("{endpoint}/token")).await;
    let resp = login(&gate.base).await.expect("flowgate answers");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(header("pragma").as_deref(), Some("no-cache"));
}

#[tokio::test]
async fn a_token_endpoint_that_redirects_is_not_followed() {
    let tokens = Bytes::from_static(br#"{"access_token":"stolen","token_type":"Bearer"}"#);
    let (elsewhere, asked_elsewhere) = answering(200, vec![], tokens).await;
    let location = vec![("location", format!("{elsewhere}/token"))];
    let (endpoint, asked) = answering(307, location, Bytes::new()).await;
    let (status, body) = authenticate(format!("{endpoint}/token")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "token_endpoint_error", "{body}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        asked_elsewhere.load(Ordering::SeqCst),
        0,
        "the password never went where the redirect pointed"
    );
}

/// The token endpoint's own failures are named as its own, not Flowise's, and are not the
/// caller's wrong password: a 200 without a token (a login page, an app's index.html), a 429.
#[tokio::test]
async fn a_token_endpoint_answer_without_a_token_or_a_rate_limit_is_not_a_login() {
    let page = Bytes::from_static(b"<!doctype html><title>Sign in</title>");
    let (endpoint, _) = answering(200, vec![], page).await;
    let (status, body) = authenticate(format!("{endpoint}/token")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "token_endpoint_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("without an access_token")),
        "{body}"
    );
    let empty = Bytes::from_static(br#"{"access_token":"","token_type":"Bearer"}"#);
    let (endpoint, _) = answering(200, vec![], empty).await;
    let (status, body) = authenticate(format!("{endpoint}/token")).await;
    assert_eq!(status, 502, "{body}");
    let limited = Bytes::from_static(br#"{"error":"slow_down"}"#);
    let (endpoint, _) = answering(429, vec![("retry-after", "30".into())], limited).await;
    let gate = gate_asking(format!("{endpoint}/token")).await;
    let answer = login(&gate.base).await.expect("flowgate answers");
    assert_eq!(answer.status(), 503);
    assert_eq!(
        answer.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"30"[..]),
        "the token endpoint's own Retry-After"
    );
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_endpoint_busy", "{body}");
}

/// A token endpoint that cannot be reached is a 502 that does not name it (anyone may ask
/// these routes; its URL is an internal host's): the operator finds it in the log.
#[tokio::test]
async fn a_token_endpoint_out_of_reach_is_not_named_to_the_caller() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (status, body) = authenticate(format!("http://127.0.0.1:{port}/realms/acme/token")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "token_endpoint_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("acme"),
        "{message}"
    );
}

/// A refused login says no more than the Python service did: the provider's own words ("User
/// not found", "Account is disabled") would tell anyone which accounts exist.
#[tokio::test]
async fn a_refused_login_does_not_repeat_the_providers_reason() {
    let refused =
        Bytes::from_static(br#"{"error":"invalid_grant","error_description":"User not found"}"#);
    let (endpoint, _) = answering(400, vec![], refused).await;
    let (status, body) = authenticate(format!("{endpoint}/token")).await;
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("authentication failed") && !message.contains("User not found"),
        "{message}"
    );
}

#[tokio::test]
async fn a_token_endpoint_answer_past_its_limit_is_refused() {
    let padding = "x".repeat(100 * 1024);
    let huge = json!({"access_token": "at", "token_type": "Bearer", "padding": padding});
    let (endpoint, _) = answering(200, vec![], Bytes::from(huge.to_string())).await;
    let (status, body) = authenticate(format!("{endpoint}/token")).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 64 KiB")),
        "{body}"
    );
}

#[tokio::test]
async fn a_grant_body_past_16_kib_is_refused_before_the_token_endpoint_is_asked() {
    let tokens = Bytes::from_static(br#"{"access_token":"at","token_type":"Bearer"}"#);
    let (endpoint, asked) = answering(200, vec![], tokens).await;
    let gate = gate_asking(format!("{endpoint}/token")).await;
    let grant = |password: String| {
        reqwest::Client::new()
            .post(format!("{}/chat/authenticate", gate.base))
            .json(&json!({"username": "alice", "password": password}))
            .send()
    };
    // A large password is still a grant; past the limit, it is refused unread.
    let fits = grant("p".repeat(15 * 1024))
        .await
        .expect("flowgate answers");
    assert_eq!(fits.status(), 200);
    let refused = grant("p".repeat(17 * 1024))
        .await
        .expect("flowgate answers");
    assert_eq!(refused.status(), 413);
    let body: Value = refused.json().await.expect("a JSON answer");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "only the grant that fit");
}

#[tokio::test]
async fn expires_in_is_a_number_of_seconds_whatever_the_provider_writes() {
    for (written, answered) in [
        (json!(3599), json!(3599)),
        // Azure AD's v1 endpoint writes a string.
        (json!("3599"), json!(3599)),
        (json!("soon"), Value::Null),
        (json!(12.5), Value::Null),
    ] {
        let body = json!({"access_token": "at", "token_type": "Bearer", "expires_in": written,
                          "refresh_token": "rt"});
        let (url, _) = answering(200, Vec::new(), Bytes::from(body.to_string())).await;
        let (status, answer) = authenticate(url).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["access_token"], "at");
        assert_eq!(answer["refresh_token"], "rt");
        assert_eq!(
            answer.get("expires_in").cloned().unwrap_or(Value::Null),
            answered,
            "{written} → {answer}"
        );
    }
}

/// Only an OAuth error (or a 401) is the caller's wrong password: a 404 or 405 of a mistyped
/// endpoint URL, or an ingress's HTML page, is the token endpoint's failure, a 502 an operator
/// sees, not a 401 every user takes for their own mistake.
#[tokio::test]
async fn only_an_oauth_error_or_a_401_from_the_token_endpoint_is_the_callers() {
    for (status, body, want) in [
        (400, &br#"{"error":"invalid_grant"}"#[..], 401),
        (401, &b""[..], 401),
        (403, &br#"{"error":"access_denied"}"#[..], 401),
        (404, &b"<html>Not Found</html>"[..], 502),
        (404, &br#"{"error":"Realm does not exist"}"#[..], 502),
        (405, &b""[..], 502),
        (400, &b"<html>Bad Request</html>"[..], 502),
    ] {
        let (endpoint, _) = answering(status, vec![], Bytes::from_static(body)).await;
        let (answered, json) = authenticate(format!("{endpoint}/token")).await;
        assert_eq!(answered, want, "{status}: {json}");
        if want == 502 {
            assert_eq!(json["error"]["code"], "token_endpoint_error", "{json}");
            let message = json["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(&status.to_string()), "{json}");
        }
    }
}

//! Reading a request body: bounded in size and in time.
//!
//! The header read has hyper's timeout ([`crate::server::HEADER_READ_TIMEOUT`]); the body has
//! these two. A client that stops sending for [`BODY_IDLE_TIMEOUT`], or is still sending after
//! [`BODY_READ_LIMIT`], gets a 408 and its connection is closed, so a stalled or dripping
//! upload cannot hold a connection and its buffer for ever. Both apply before anything is
//! reserved or forwarded.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{HeaderMap, Request};
use serde_json::Value;
use tokio::time::Instant;

use super::ProxyError;

/// Longest pause between two pieces of a request body.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole request body may take (a 50 MB upload at 1 Mbit/s takes 400 s).
pub const BODY_READ_LIMIT: Duration = Duration::from_secs(600);

/// The request's JSON object body, at most `limit` bytes.
pub(crate) async fn read_json(
    req: Request<Incoming>,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ProxyError> {
    let (parts, body) = req.into_parts();
    read_json_body(&parts.headers, body, limit).await
}

/// Like [`read_json`], for a request already taken apart (its headers are still needed).
pub(super) async fn read_json_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ProxyError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    if !is_json {
        return Err(ProxyError::BadRequest(
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    let bytes = read_limited(body, limit).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProxyError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ProxyError::BadRequest(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// The whole request body, at most `limit` bytes, within the time bounds above.
pub(super) async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    collect(body, limit, BODY_IDLE_TIMEOUT, BODY_READ_LIMIT).await
}

/// `body` in one buffer: at most `limit` bytes, no pause longer than `idle`, all within `total`.
/// A body in one piece (the usual JSON request) is not copied.
async fn collect<B>(
    body: B,
    limit: usize,
    idle: Duration,
    total: Duration,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let deadline = Instant::now() + total;
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        // A frame already received (a small body usually arrives with its headers) needs no
        // timer; only a wait for more does.
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::timeout(wait, body.frame())
                    .await
                    .map_err(|_| ProxyError::RequestTimeout)?
            }
        };
        let frame = match next {
            None => break,
            Some(Err(e)) => {
                return Err(
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        ProxyError::PayloadTooLarge { limit }
                    } else {
                        ProxyError::BadRequest(format!("cannot read the body: {e}"))
                    },
                );
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    /// A body sending `pieces`, each after its delay.
    fn paced(pieces: Vec<(u64, &'static str)>) -> StreamBody<impl futures::Stream<Item = Chunk>> {
        StreamBody::new(futures::stream::iter(pieces).then(|(ms, text)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Frame::data(Bytes::from_static(text.as_bytes())))
        }))
    }

    const IDLE: Duration = Duration::from_secs(30);
    const TOTAL: Duration = Duration::from_secs(600);

    #[tokio::test(start_paused = true)]
    async fn a_body_in_pieces_is_joined_and_a_slow_but_steady_one_is_read() {
        let body = paced(vec![(0, "{\"a\":"), (29_000, "1"), (29_000, "}")]);
        let bytes = collect(body, 1024, IDLE, TOTAL).await.expect("read");
        assert_eq!(&bytes[..], b"{\"a\":1}");
        let one = collect(paced(vec![(0, "{}")]), 1024, IDLE, TOTAL).await;
        assert_eq!(&one.expect("read")[..], b"{}");
        let empty = collect(paced(vec![]), 1024, IDLE, TOTAL).await;
        assert!(empty.expect("read").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_idle_timeout_is_a_timeout() {
        let body = paced(vec![(0, "{\"a\":"), (31_000, "1}")]);
        let error = collect(body, 1024, IDLE, TOTAL).await.expect_err("stalled");
        assert!(matches!(error, ProxyError::RequestTimeout), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_dripping_at_the_total_limit_is_a_timeout() {
        // One byte every 20 s never trips the idle timeout; the total limit ends it.
        let drip = vec![(20_000, "x"); 40];
        let error = collect(paced(drip), 1024, IDLE, TOTAL)
            .await
            .expect_err("drip");
        assert!(matches!(error, ProxyError::RequestTimeout), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_limit_is_too_large() {
        let body = paced(vec![(0, "0123456789"), (0, "0123456789")]);
        let error = collect(body, 15, IDLE, TOTAL).await.expect_err("large");
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 15 }),
            "{error:?}"
        );
    }
}

//! Reading a request body: bounded in size and in time.
//!
//! The header read has hyper's timeout ([`crate::server::HEADER_READ_TIMEOUT`]); the body has
//! these two. A client that stops sending for [`BODY_IDLE_TIMEOUT`], or is still sending after
//! [`BODY_READ_LIMIT`], gets a 408 and its connection is closed, so a stalled or dripping
//! upload cannot hold a connection and its buffer for ever. Both apply before anything is
//! reserved or forwarded. A prediction's body also counts in the process's [`Buffers`] as it
//! arrives, and is refused (503) when they are full.

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
use super::buffers::{Held, REQUEST_WEIGHT, Refused};

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
    read_json_body(&parts.headers, body, limit, None).await
}

/// Like [`read_json`], for a request already taken apart (its headers are still needed), and
/// counted in `hold` if given.
pub(super) async fn read_json_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    hold: Option<&mut Held>,
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
    let bytes = collect(body, limit, BODY_IDLE_TIMEOUT, BODY_READ_LIMIT, hold).await?;
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

/// The whole request body, at most `limit` bytes, within the time bounds above, counted in
/// `hold`.
pub(super) async fn read_limited(
    body: Incoming,
    limit: usize,
    hold: &mut Held,
) -> Result<Bytes, ProxyError> {
    collect(body, limit, BODY_IDLE_TIMEOUT, BODY_READ_LIMIT, Some(hold)).await
}

/// `body` in one buffer: at most `limit` bytes, no pause longer than `idle`, all within `total`,
/// each byte counted [`REQUEST_WEIGHT`] times in `hold` (if any) before it is kept. A declared
/// length is counted, or refused, before anything is read. A body in one piece (the usual JSON
/// request) is not copied.
async fn collect<B>(
    body: B,
    limit: usize,
    idle: Duration,
    total: Duration,
    mut hold: Option<&mut Held>,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let deadline = Instant::now() + total;
    let declared = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if declared > limit {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    // Bytes counted in `hold` so far (of the body, before the weight).
    let mut counted = 0;
    let mut count = |hold: &mut Option<&mut Held>, upto: usize| {
        let Some(hold) = hold.as_deref_mut() else {
            return Ok(());
        };
        if upto > counted {
            hold.try_grow((upto - counted).saturating_mul(REQUEST_WEIGHT))
                .map_err(|refused| match refused {
                    Refused::Full => ProxyError::Overloaded,
                    Refused::TooLarge => ProxyError::PayloadTooLarge {
                        limit: limit.min(hold.budget_limit() / REQUEST_WEIGHT),
                    },
                })?;
            counted = upto;
        }
        Ok::<(), ProxyError>(())
    };
    count(&mut hold, declared)?;
    let mut received = 0usize;
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
        received += data.len();
        count(&mut hold, received)?;
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
        let bytes = collect(body, 1024, IDLE, TOTAL, None).await.expect("read");
        assert_eq!(&bytes[..], b"{\"a\":1}");
        let one = collect(paced(vec![(0, "{}")]), 1024, IDLE, TOTAL, None).await;
        assert_eq!(&one.expect("read")[..], b"{}");
        let empty = collect(paced(vec![]), 1024, IDLE, TOTAL, None).await;
        assert!(empty.expect("read").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_idle_timeout_is_a_timeout() {
        let body = paced(vec![(0, "{\"a\":"), (31_000, "1}")]);
        let error = collect(body, 1024, IDLE, TOTAL, None)
            .await
            .expect_err("stalled");
        assert!(matches!(error, ProxyError::RequestTimeout), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_dripping_at_the_total_limit_is_a_timeout() {
        // One byte every 20 s never trips the idle timeout; the total limit ends it.
        let drip = vec![(20_000, "x"); 40];
        let error = collect(paced(drip), 1024, IDLE, TOTAL, None)
            .await
            .expect_err("drip");
        assert!(matches!(error, ProxyError::RequestTimeout), "{error:?}");
    }

    fn budget(limit: usize) -> crate::proxy::buffers::Buffers {
        crate::proxy::buffers::Buffers::new(limit, Default::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_counts_twice_as_it_arrives_and_is_refused_when_the_budget_is_full() {
        let buffers = budget(100);
        let mut other = buffers.hold();
        other.try_grow(50).expect("fits");
        let mut held = buffers.hold();
        let pieces = vec![(0, "0123456789"), (0, "0123456789"), (0, "0123456789")];
        let error = collect(paced(pieces), 1024, IDLE, TOTAL, Some(&mut held))
            .await
            .expect_err("the third piece does not fit");
        assert!(matches!(error, ProxyError::Overloaded), "{error:?}");
        assert_eq!((held.bytes(), buffers.in_use()), (40, 90));
        drop((held, other));
        assert_eq!(buffers.in_use(), 0);

        let mut held = buffers.hold();
        let pieces = vec![(0, "0123456789"), (0, "0123456789")];
        let body = collect(paced(pieces), 1024, IDLE, TOTAL, Some(&mut held))
            .await
            .expect("fits");
        assert_eq!((body.len(), held.bytes()), (20, 40));
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_length_is_counted_or_refused_before_anything_is_read() {
        let buffers = budget(100);
        let declared = || http_body_util::Full::new(Bytes::from_static(&[b'x'; 40]));
        // More than the whole budget (twice 60 > 100): too large, named with what would fit.
        let mut held = buffers.hold();
        let error = collect(
            http_body_util::Full::new(Bytes::from_static(&[b'x'; 60])),
            1024,
            IDLE,
            TOTAL,
            Some(&mut held),
        )
        .await
        .expect_err("never fits");
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 50 }),
            "{error:?}"
        );
        // Past the body limit: too large before the budget is asked.
        let error = collect(declared(), 39, IDLE, TOTAL, Some(&mut held))
            .await
            .expect_err("over the limit");
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 39 }),
            "{error:?}"
        );
        assert_eq!(buffers.in_use(), 0);
        let mut other = buffers.hold();
        other.try_grow(30).expect("fits");
        let error = collect(declared(), 1024, IDLE, TOTAL, Some(&mut held))
            .await
            .expect_err("80 more do not fit beside 30");
        assert!(matches!(error, ProxyError::Overloaded), "{error:?}");
        drop(other);
        let body = collect(declared(), 1024, IDLE, TOTAL, Some(&mut held))
            .await
            .expect("fits alone");
        assert_eq!((body.len(), held.bytes(), buffers.in_use()), (40, 80, 80));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_limit_is_too_large() {
        let body = paced(vec![(0, "0123456789"), (0, "0123456789")]);
        let error = collect(body, 15, IDLE, TOTAL, None)
            .await
            .expect_err("large");
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 15 }),
            "{error:?}"
        );
    }
}

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
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{HeaderMap, Request};
use serde_json::Value;
use tokio::time::Instant;

use super::ProxyError;
use super::buffers::{Held, REQUEST_WEIGHT, Refused};

/// Longest pause between two pieces of a request body.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole request body may take (a 50 MB upload at 1 Mbit/s takes 400 s).
pub const BODY_READ_LIMIT: Duration = Duration::from_secs(600);
/// Longest a small body (an admin write, a token grant: at most a MiB) may take. An admin write
/// is authorized before its body is read, against the access and token of that moment: a body
/// sent for minutes would be acted on long after a revocation or the token's `exp`.
pub const SMALL_BODY_READ_LIMIT: Duration = Duration::from_secs(30);

/// The request's small JSON object body (an admin write, a token grant), at most `limit`
/// bytes and [`SMALL_BODY_READ_LIMIT`], counted in `hold`.
pub(crate) async fn read_json(
    req: Request<Incoming>,
    limit: usize,
    hold: &mut Held,
) -> Result<serde_json::Map<String, Value>, ProxyError> {
    let (parts, body) = req.into_parts();
    read_json_within(&parts.headers, body, limit, SMALL_BODY_READ_LIMIT, hold).await
}

/// A body sent compressed is refused by name: read as it is, it would be "not valid JSON".
pub(super) fn uncompressed(headers: &HeaderMap) -> Result<(), ProxyError> {
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").trim())
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    match encoded {
        None => Ok(()),
        Some(coding) => Err(ProxyError::BadRequest(format!(
            "request bodies are read as sent: Content-Encoding '{coding}' is not accepted; send \
             the body uncompressed"
        ))),
    }
}

/// A prediction's JSON object body, from a request already taken apart (its headers are still
/// needed): at most `limit` bytes and [`BODY_READ_LIMIT`], counted in `hold`.
pub(super) async fn read_json_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    hold: &mut Held,
) -> Result<serde_json::Map<String, Value>, ProxyError> {
    read_json_within(headers, body, limit, BODY_READ_LIMIT, hold).await
}

/// The JSON object body, at most `limit` bytes, all within `total`, counted in `hold`.
async fn read_json_within(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    total: Duration,
    hold: &mut Held,
) -> Result<serde_json::Map<String, Value>, ProxyError> {
    uncompressed(headers)?;
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| {
            // Media types are case-insensitive (RFC 9110 §8.3.1).
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json") || ct.contains("+json")
        });
    if !is_json {
        return Err(ProxyError::BadRequest(
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    let bytes = collect(body, limit, BODY_IDLE_TIMEOUT, total, Some(&mut *hold)).await?;
    json_object(&bytes, hold)
}

/// `text` parsed as a JSON object, its values counted in `hold` first. A leading UTF-8 byte
/// order mark (PowerShell's `Out-File`, Notepad) is skipped, as Flowise's own parser does.
fn json_object(text: &[u8], hold: &mut Held) -> Result<serde_json::Map<String, Value>, ProxyError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    count_values(text, hold)?;
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProxyError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ProxyError::BadRequest(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Counts in `hold` the values parsing `text` will make, before they are made: the parsed tree
/// takes more than the text for small values (`[0,0,…]`: 32 bytes a value from 2 of text).
fn count_values(text: &[u8], hold: &mut Held) -> Result<(), ProxyError> {
    hold.try_grow(json_values(text).saturating_mul(BYTES_PER_VALUE))
        .map_err(|refused| match refused {
            Refused::Full => ProxyError::Overloaded,
            Refused::CallerFull => ProxyError::BodyShareFull,
            Refused::TooLarge => ProxyError::TooManyValues,
        })
}

/// What one parsed JSON value is counted as: a `Value` (32 bytes), with room for a growing
/// array's spare capacity or a map entry's key and node.
const BYTES_PER_VALUE: usize = 64;

/// How many values parsing `text` as JSON makes at most, counting an object's key and entry as a
/// value too: one per `[`, `{` and `,`, two per `:`, outside strings, plus one. Never less than
/// the tree serde_json builds.
fn json_values(text: &[u8]) -> usize {
    let (mut values, mut in_string, mut escaped) = (1usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' | b',' => values += 1,
                b':' => values += 2,
                _ => {}
            }
        }
    }
    values
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
/// each byte counted [`REQUEST_WEIGHT`] times in `hold` (if any) as it arrives. A declared
/// length that could not fit is refused before anything is read, but only what arrives is
/// counted: a client that declares much and sends little holds nothing. A body in one piece
/// (the usual JSON request) is not copied.
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
    let refused = |refused: Refused, hold: &Held| match refused {
        Refused::Full => ProxyError::Overloaded,
        Refused::CallerFull => ProxyError::BodyShareFull,
        Refused::TooLarge => ProxyError::PayloadTooLarge {
            limit: limit.min(hold.ceiling_bytes() / REQUEST_WEIGHT),
        },
    };
    if let Some(hold) = hold.as_deref_mut() {
        hold.check(declared.saturating_mul(REQUEST_WEIGHT))
            .map_err(|r| refused(r, hold))?;
    }
    let mut body = std::pin::pin!(Limited::new(body, limit));
    // Not sized by the declared length: a client may declare 50 MiB and drip a byte.
    let mut joined = Joined::new(0);
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
        if let Some(hold) = hold.as_deref_mut() {
            hold.try_grow(data.len().saturating_mul(REQUEST_WEIGHT))
                .map_err(|r| refused(r, hold))?;
        }
        joined.push(data);
    }
    Ok(joined.finish())
}

/// A body's frames in one buffer. A body in one frame (the usual JSON request or answer) is not
/// copied; one in several is copied into a buffer sized by the declared length given (Flowise's,
/// for an answer), or grown as frames come (doubling: up to twice the body, the two copies a
/// request body counts for; a multipart body's parse copies it once more meanwhile). Frames are
/// not kept to be copied once at the end: each is a slice of hyper's read buffer, which a kept
/// frame keeps whole (8–64 KiB for a frame of a byte).
pub(super) struct Joined {
    first: Option<Bytes>,
    rest: BytesMut,
    declared: usize,
}

impl Joined {
    /// Frames of a body that declared `declared` bytes (0 if it did not).
    pub(super) fn new(declared: usize) -> Self {
        Self {
            first: None,
            rest: BytesMut::new(),
            declared,
        }
    }

    pub(super) fn push(&mut self, data: Bytes) {
        match &self.first {
            None => self.first = Some(data),
            Some(head) => {
                if self.rest.is_empty() {
                    self.rest
                        .reserve(self.declared.max(head.len() + data.len()));
                    self.rest.extend_from_slice(head);
                }
                self.rest.extend_from_slice(&data);
            }
        }
    }

    pub(super) fn finish(self) -> Bytes {
        if self.rest.is_empty() {
            self.first.unwrap_or_default()
        } else {
            self.rest.freeze()
        }
    }
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

    /// Frames joined whether a length was declared or not; a body in one frame is not copied.
    #[test]
    fn frames_are_joined_in_order_and_one_frame_is_not_copied() {
        let frames = ["ab", "", "cde", "f"].map(|s: &'static str| Bytes::from_static(s.as_bytes()));
        for declared in [0, 6, 100] {
            let mut joined = Joined::new(declared);
            for frame in &frames {
                joined.push(frame.clone());
            }
            assert_eq!(&joined.finish()[..], b"abcdef", "declared {declared}");
        }
        let one = Bytes::from(vec![7u8; 1000]);
        for declared in [0, 1000] {
            let mut joined = Joined::new(declared);
            joined.push(one.clone());
            assert_eq!(joined.finish().as_ptr(), one.as_ptr(), "not copied");
        }
    }

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

    #[test]
    fn a_json_body_may_start_with_a_byte_order_mark() {
        let buffers = budget(1 << 20);
        let mut held = buffers.hold();
        let body = json_object(b"\xEF\xBB\xBF{\"question\": \"hi\"}", &mut held).expect("read");
        assert_eq!(body["question"], "hi");
        let error = json_object(b"\xEF\xBB\xBF\xEF\xBB\xBF{}", &mut held).expect_err("one mark");
        assert!(matches!(error, ProxyError::BadRequest(_)), "{error:?}");
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

    /// A body that declares `len` bytes and never sends any.
    struct Declared(u64);

    impl Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_length_is_refused_before_anything_is_read_but_never_counted() {
        let buffers = budget(100);
        let mut held = buffers.hold();
        // Each of these answers at once: nothing was sent, so no timer ran.
        let at_once = |result: Option<Result<Bytes, ProxyError>>| {
            result
                .expect("answered without waiting")
                .expect_err("refused")
        };
        // More than the whole budget (twice 60 > 100): too large, named with what would fit.
        let error =
            at_once(collect(Declared(60), 1024, IDLE, TOTAL, Some(&mut held)).now_or_never());
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 50 }),
            "{error:?}"
        );
        // Past the body limit: too large before the budget is asked.
        let error = at_once(collect(Declared(40), 39, IDLE, TOTAL, Some(&mut held)).now_or_never());
        assert!(
            matches!(error, ProxyError::PayloadTooLarge { limit: 39 }),
            "{error:?}"
        );
        // Twice 40 does not fit beside 30 now.
        let mut other = buffers.hold();
        other.try_grow(30).expect("fits");
        let error =
            at_once(collect(Declared(40), 1024, IDLE, TOTAL, Some(&mut held)).now_or_never());
        assert!(matches!(error, ProxyError::Overloaded), "{error:?}");
        drop(other);
        // Alone it fits, and while nothing arrives nothing is held.
        let waiting = collect(Declared(40), 1024, IDLE, TOTAL, Some(&mut held)).now_or_never();
        assert!(waiting.is_none(), "waits for the body");
        assert_eq!((held.bytes(), buffers.in_use()), (0, 0));
    }

    #[test]
    fn a_compressed_body_is_refused_by_name() {
        let mut headers = HeaderMap::new();
        assert!(uncompressed(&headers).is_ok());
        headers.insert(CONTENT_ENCODING, "identity".parse().expect("value"));
        assert!(uncompressed(&headers).is_ok());
        headers.append(CONTENT_ENCODING, "gzip".parse().expect("value"));
        let refused = uncompressed(&headers).expect_err("gzip");
        assert!(
            refused.to_string().contains("'gzip' is not accepted"),
            "{refused}"
        );
    }

    #[test]
    fn json_values_are_counted_outside_strings_only() {
        assert_eq!(json_values(b"{}"), 2);
        assert_eq!(json_values(b"[0,0,0]"), 4);
        assert_eq!(json_values(br#"{"a":[1,2],"b":{"c":3}}"#), 12);
        // Separators inside strings, escaped quotes included, are text.
        assert_eq!(json_values(br#"{"q":"a, b: [c] {d} \" , e"}"#), 4);
        assert_eq!(json_values(br#"["\\",1]"#), 3);
        // Never fewer than serde_json makes.
        for text in [&br#"{"q":"x","o":{"a":[1,[2,{}]]}}"#[..], b"[[[[]]]]", b"7"] {
            let parsed: Value = serde_json::from_slice(text).expect("JSON");
            fn count(v: &Value) -> usize {
                1 + match v {
                    Value::Array(items) => items.iter().map(count).sum(),
                    Value::Object(map) => map.values().map(count).sum(),
                    _ => 0,
                }
            }
            assert!(json_values(text) >= count(&parsed), "{text:?}");
        }
    }

    #[test]
    fn a_json_body_counts_its_values_before_they_are_parsed() {
        let buffers = budget(400);
        let mut held = buffers.hold();
        // 12 values × 64 > 400: too many to hold at all, whatever else is held.
        let many = format!("[{}0]", "0,".repeat(10));
        let error = count_values(many.as_bytes(), &mut held);
        assert!(matches!(error, Err(ProxyError::TooManyValues)), "{error:?}");
        assert_eq!(held.bytes(), 0);
        count_values(br#"{"a":[1,2]}"#, &mut held).expect("6 values fit");
        assert_eq!(held.bytes(), 6 * BYTES_PER_VALUE);
        // 2 more do not fit beside them now.
        let error = count_values(b"[0]", &mut buffers.hold());
        assert!(matches!(error, Err(ProxyError::Overloaded)), "{error:?}");
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

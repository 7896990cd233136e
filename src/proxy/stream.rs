//! Streaming answers pass through frame by frame, never buffered. [`Observed`] wraps the
//! upstream body: it forwards every frame as it arrives, scans Server-Sent Events for Flowise's
//! token usage on the side, and reports how the stream ended — completed, failed upstream, or
//! abandoned by the client (dropped before the end) — exactly once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Flowise sent the whole answer.
    Completed,
    /// The upstream connection failed mid-stream.
    UpstreamFailed,
    /// The client went away before the end.
    ClientGone,
}

/// What a stream reported, once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReport {
    pub end: StreamEnd,
    /// Total tokens from `usageMetadata` events.
    pub tokens: u64,
    /// Flowise sent an `error` event (e.g. a key-bound chatflow without its key).
    pub error_event: bool,
    /// Flowise started answering (a `token` event, or any event after `start`).
    pub answered: bool,
}

type OnEnd = Box<dyn FnOnce(StreamReport) + Send + Sync>;

/// Whether an answer is a Server-Sent Events stream (`Content-Type: text/event-stream`).
pub fn is_event_stream(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// An upstream body passed through unchanged while being watched.
pub struct Observed<B> {
    inner: B,
    scanner: SseScanner,
    on_end: Option<OnEnd>,
}

impl<B> Observed<B> {
    /// Wraps `inner`; `on_end` runs once when the stream ends or is dropped.
    pub fn new(inner: B, on_end: impl FnOnce(StreamReport) + Send + Sync + 'static) -> Self {
        Self {
            inner,
            scanner: SseScanner::default(),
            on_end: Some(Box::new(on_end)),
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        if let Some(on_end) = self.on_end.take() {
            on_end(StreamReport {
                end,
                tokens: self.scanner.tokens,
                error_event: self.scanner.error_event,
                answered: self.scanner.answered,
            });
        }
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.finish(StreamEnd::ClientGone);
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.scanner.feed(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let message = error.to_string();
                self.finish(StreamEnd::UpstreamFailed);
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Ready(None) => {
                self.finish(StreamEnd::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Largest SSE event the scanner looks into; bigger events pass through unscanned.
const MAX_EVENT: usize = 256 * 1024;

/// Finds `usageMetadata` and `error` events in a Flowise SSE stream, fed in arbitrary chunks.
#[derive(Debug, Default)]
pub struct SseScanner {
    pending: Vec<u8>,
    overflow: bool,
    pub tokens: u64,
    pub error_event: bool,
    pub answered: bool,
}

impl SseScanner {
    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(end) = find_event_end(&self.pending, rest) {
            let (head, tail) = rest.split_at(end);
            if !self.overflow {
                self.pending.extend_from_slice(head);
                let event = std::mem::take(&mut self.pending);
                self.inspect(&event);
            } else {
                self.pending.clear();
            }
            self.overflow = false;
            rest = tail;
        }
        if !self.overflow {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_EVENT {
                self.pending.clear();
                self.overflow = true;
            }
        }
    }

    fn inspect(&mut self, event: &[u8]) {
        // Flowise frames: `message:\ndata:{"event":"usageMetadata","data":{...}}\n\n`.
        let Ok(text) = std::str::from_utf8(event) else {
            return;
        };
        if !self.answered
            && (text.contains("\"event\":\"token\"") || text.contains("\"event\":\"end\""))
        {
            self.answered = true;
        }
        if !text.contains("usageMetadata") && !text.contains("\"error\"") {
            return;
        }
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(data.trim_start()) else {
                continue;
            };
            match value.get("event").and_then(|e| e.as_str()) {
                Some("usageMetadata") => {
                    self.tokens = self.tokens.saturating_add(usage_tokens(&value["data"]));
                }
                Some("error") => self.error_event = true,
                _ => {}
            }
        }
    }
}

/// End (exclusive, in `next`) of the first complete event given what is pending, if any.
fn find_event_end(pending: &[u8], next: &[u8]) -> Option<usize> {
    // The "\n\n" separator may straddle the pending bytes and the new chunk.
    if pending.last() == Some(&b'\n') && next.first() == Some(&b'\n') {
        return Some(1);
    }
    next.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Total tokens in one Flowise usage report (`total_tokens`, else input + output).
pub fn usage_tokens(usage: &serde_json::Value) -> u64 {
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| usage.get(*n).and_then(|v| v.as_u64()))
    };
    field(&["total_tokens", "totalTokens"]).unwrap_or_else(|| {
        field(&["input_tokens", "inputTokens", "promptTokens"])
            .unwrap_or(0)
            .saturating_add(
                field(&["output_tokens", "outputTokens", "completionTokens"]).unwrap_or(0),
            )
    })
}

/// Tokens reported in a non-streaming Flowise answer (`usageMetadata` of Agentflow nodes).
pub fn json_usage_tokens(answer: &serde_json::Value) -> u64 {
    let from_nodes: u64 = answer
        .get("agentFlowExecutedData")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .filter_map(|node| node.pointer("/data/output/usageMetadata"))
        .map(usage_tokens)
        .fold(0, u64::saturating_add);
    if from_nodes > 0 {
        from_nodes
    } else {
        answer.get("usageMetadata").map(usage_tokens).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, StreamBody};

    const STREAM: &str = "message:\ndata:{\"event\":\"start\",\"data\":\"\"}\n\n\
message:\ndata:{\"event\":\"token\",\"data\":\"Echo: hi\"}\n\n\
message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":12,\"output_tokens\":30,\"total_tokens\":42}}\n\n\
message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":5,\"output_tokens\":3}}\n\n\
message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n";

    #[test]
    fn usage_is_summed_whatever_the_chunking() {
        for chunk in [1, 2, 3, 7, 64, STREAM.len()] {
            let mut scanner = SseScanner::default();
            for piece in STREAM.as_bytes().chunks(chunk) {
                scanner.feed(piece);
            }
            assert_eq!(scanner.tokens, 50, "chunk size {chunk}");
            assert!(!scanner.error_event);
            assert!(scanner.answered);
        }
    }

    #[test]
    fn error_events_are_noticed() {
        let mut scanner = SseScanner::default();
        scanner.feed(b"message:\ndata:{\"event\":\"error\",\"data\":\"Unauthorized\"}\n\n");
        assert!(scanner.error_event);
    }

    #[test]
    fn json_answers_report_agentflow_usage() {
        let answer = serde_json::json!({"text": "x", "agentFlowExecutedData": [
            {"data": {"output": {"usageMetadata": {"total_tokens": 100}}}},
            {"data": {"output": {"content": "no usage"}}},
            {"data": {"output": {"usageMetadata": {"input_tokens": 10, "output_tokens": 5}}}}
        ]});
        assert_eq!(json_usage_tokens(&answer), 115);
        assert_eq!(json_usage_tokens(&serde_json::json!({"text": "x"})), 0);
        // Counts from Flowise are outside input: they saturate instead of overflowing.
        let max = u64::MAX;
        let huge = serde_json::json!({"agentFlowExecutedData": [
            {"data": {"output": {"usageMetadata": {"input_tokens": max, "output_tokens": max}}}},
            {"data": {"output": {"usageMetadata": {"total_tokens": max}}}}
        ]});
        assert_eq!(json_usage_tokens(&huge), u64::MAX);
    }

    fn chunks(
        parts: Vec<Result<&'static str, std::io::Error>>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        StreamBody::new(futures::stream::iter(
            parts
                .into_iter()
                .map(|p| p.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))),
        ))
    }

    fn recorder() -> (
        Arc<Mutex<Vec<StreamReport>>>,
        impl FnOnce(StreamReport) + Send + Sync + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |r| sink.lock().expect("lock").push(r))
    }

    #[tokio::test]
    async fn frames_pass_through_unchanged_and_the_end_is_reported_once() {
        let (seen, on_end) = recorder();
        let body = Observed::new(
            chunks(vec![
                Ok(
                    "message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":7}}\n\n",
                ),
                Ok("x"),
            ]),
            on_end,
        );
        let bytes = body.collect().await.expect("collects").to_bytes();
        assert!(bytes.ends_with(b"x"));
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(
            reports,
            vec![StreamReport {
                end: StreamEnd::Completed,
                tokens: 7,
                error_event: false,
                answered: false
            }]
        );
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_reported() {
        let (seen, on_end) = recorder();
        let mut body = Observed::new(chunks(vec![Ok("a"), Ok("b")]), on_end);
        let first = body.frame().await;
        assert!(first.is_some());
        drop(body);
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::ClientGone);
    }

    #[tokio::test]
    async fn an_upstream_failure_is_reported() {
        let (seen, on_end) = recorder();
        let body = Observed::new(
            chunks(vec![Ok("a"), Err(std::io::Error::other("reset"))]),
            on_end,
        );
        assert!(body.collect().await.is_err());
        assert_eq!(seen.lock().expect("lock")[0].end, StreamEnd::UpstreamFailed);
    }
}

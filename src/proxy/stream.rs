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
    /// Tokens Flowise reported (see [`SseScanner`]).
    pub tokens: u64,
    /// Flowise sent an `error` event (e.g. a key-bound chatflow without its key).
    pub error_event: bool,
    /// Flowise answered: it streamed a token, or ended without an error. An error after the
    /// answer started does not take the answer back.
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
            if end == StreamEnd::Completed {
                self.scanner.finish();
            }
            on_end(StreamReport {
                end,
                tokens: self.scanner.tokens(),
                error_event: self.scanner.failed(),
                answered: self.scanner.answered(),
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
                // A body of known length is not polled past its last byte: hyper drops it then,
                // which must not read as a client gone.
                if self.inner.is_end_stream() {
                    self.finish(StreamEnd::Completed);
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

/// Largest `agentFlowExecutedData` event the scanner reads. It carries every node run so far, with
/// its inputs and outputs, and it is the only report of the tokens of nodes before the last.
const MAX_EXECUTED_EVENT: usize = 8 * 1024 * 1024;

/// How an `agentFlowExecutedData` event starts (Flowise writes the `event` key first).
const EXECUTED_PREFIX: &[u8] = b"\"event\":\"agentFlowExecutedData\"";

/// Reads a Flowise SSE stream, fed in arbitrary chunks, for what settles its charge: the tokens
/// it used, whether it answered, whether it failed.
///
/// Flowise reports token usage two ways while streaming an Agentflow: a `usageMetadata` event
/// for the last LLM node only, and after every node an `agentFlowExecutedData` event listing
/// every node run so far with its `usageMetadata`. The total is the last node list read plus the
/// `usageMetadata` events after it, so no node is counted twice and none is missed.
#[derive(Debug, Default)]
pub struct SseScanner {
    pending: Vec<u8>,
    overflow: bool,
    /// Tokens of the nodes in the last `agentFlowExecutedData` event read.
    executed_tokens: u64,
    /// Tokens of the `usageMetadata` events after that event.
    streamed_tokens: u64,
    error_event: bool,
    token_event: bool,
    /// An `end` event with no `error` event before it.
    clean_end: bool,
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
                if event.len() <= MAX_EVENT || event.len() <= event_limit(&event) {
                    self.inspect(&event);
                }
            } else {
                self.pending.clear();
            }
            self.overflow = false;
            rest = tail;
        }
        if !self.overflow {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_EVENT && self.pending.len() > event_limit(&self.pending) {
                self.pending = Vec::new();
                self.overflow = true;
            }
        }
    }

    /// The stream ended: reads a last event that had no blank line after it.
    pub fn finish(&mut self) {
        if !self.overflow && !self.pending.is_empty() {
            let event = std::mem::take(&mut self.pending);
            self.inspect(&event);
        }
    }

    /// Tokens Flowise reported so far.
    pub fn tokens(&self) -> u64 {
        self.executed_tokens.saturating_add(self.streamed_tokens)
    }

    /// Whether Flowise answered: it streamed a token, or ended without an error.
    pub fn answered(&self) -> bool {
        self.token_event || self.clean_end
    }

    /// Whether Flowise sent an `error` event.
    pub fn failed(&self) -> bool {
        self.error_event
    }

    fn inspect(&mut self, event: &[u8]) {
        // Flowise frames: `message:\ndata:{"event":"usageMetadata","data":{...}}\n\n`.
        let Ok(text) = std::str::from_utf8(event) else {
            return;
        };
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            // Flowise writes `event` first: most events (tokens) are read without parsing.
            let mut parsed = None;
            let kind = match event_kind(data) {
                Some(kind) => Kind::of(kind),
                None => {
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
                        continue;
                    };
                    Kind::of(parsed.insert(value)["event"].as_str().unwrap_or_default())
                }
            };
            match kind {
                Kind::Token => self.token_event = true,
                Kind::End => self.clean_end |= !self.error_event,
                Kind::Error => self.error_event = true,
                Kind::Usage | Kind::Executed => {
                    let value = match parsed.take() {
                        Some(value) => value,
                        None => match serde_json::from_str::<serde_json::Value>(data) {
                            Ok(value) => value,
                            Err(_) => continue,
                        },
                    };
                    if kind == Kind::Usage {
                        let tokens = usage_tokens(&value["data"]);
                        self.streamed_tokens = self.streamed_tokens.saturating_add(tokens);
                    } else {
                        self.executed_tokens = nodes_usage_tokens(&value["data"]);
                        self.streamed_tokens = 0;
                    }
                }
                Kind::Other => {}
            }
        }
    }
}

/// The Flowise events that settle a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    End,
    Error,
    Usage,
    Executed,
    Other,
}

impl Kind {
    fn of(event: &str) -> Self {
        match event {
            "token" => Self::Token,
            "end" => Self::End,
            "error" => Self::Error,
            "usageMetadata" => Self::Usage,
            "agentFlowExecutedData" => Self::Executed,
            _ => Self::Other,
        }
    }
}

/// The largest size the scanner reads an event of, by how the event starts.
fn event_limit(event: &[u8]) -> usize {
    let head = &event[..event.len().min(64)];
    if head
        .windows(EXECUTED_PREFIX.len())
        .any(|w| w == EXECUTED_PREFIX)
    {
        MAX_EXECUTED_EVENT
    } else {
        MAX_EVENT
    }
}

/// The `event` of a Flowise SSE data line, `{"event":"<kind>",...}`, without parsing the rest.
fn event_kind(data: &str) -> Option<&str> {
    let rest = data.strip_prefix("{\"event\":\"")?;
    rest.split_once('"').map(|(kind, _)| kind)
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
    let from_nodes = answer
        .get("agentFlowExecutedData")
        .map(nodes_usage_tokens)
        .unwrap_or(0);
    if from_nodes > 0 {
        from_nodes
    } else {
        answer.get("usageMetadata").map(usage_tokens).unwrap_or(0)
    }
}

/// Tokens of every node in an Agentflow's executed-node list.
fn nodes_usage_tokens(nodes: &serde_json::Value) -> u64 {
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| node.pointer("/data/output/usageMetadata"))
        .map(usage_tokens)
        .fold(0, u64::saturating_add)
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
            assert_eq!(scanner.tokens(), 50, "chunk size {chunk}");
            assert!(!scanner.failed());
            assert!(scanner.answered());
        }
    }

    #[test]
    fn error_events_are_noticed() {
        let mut scanner = SseScanner::default();
        scanner.feed(b"message:\ndata:{\"event\":\"error\",\"data\":\"Unauthorized\"}\n\n");
        assert!(scanner.failed());
        scanner.feed(b"message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n");
        assert!(
            !scanner.answered(),
            "Flowise ends every stream, also after an error"
        );
    }

    /// An Agentflow streamed as Flowise 3 streams it: the node list after every node, the last
    /// LLM node's tokens and `usageMetadata`, then the end.
    fn agentflow_stream(nodes: &[u64], fail_at_end: bool) -> String {
        let mut out = flowise_event("agentFlowEvent", "INPROGRESS".into());
        let mut done = Vec::new();
        for (i, tokens) in nodes.iter().enumerate() {
            if i + 1 == nodes.len() {
                out += &flowise_event("token", "Hello".into());
                out += &flowise_event(
                    "usageMetadata",
                    serde_json::json!({"input_tokens": 1, "output_tokens": tokens - 1, "total_tokens": tokens}),
                );
            }
            done.push(
                serde_json::json!({"nodeId": format!("llm_{i}"), "status": "FINISHED",
                "data": {"output": {"content": "x", "usageMetadata": {"total_tokens": tokens}}}}),
            );
            out += &flowise_event("agentFlowExecutedData", done.clone().into());
        }
        if fail_at_end {
            out += &flowise_event("error", "boom".into());
        } else {
            out += &flowise_event("agentFlowEvent", "FINISHED".into());
        }
        out + &flowise_event("end", "[DONE]".into())
    }

    /// One event as Flowise writes it: `event` first.
    fn flowise_event(kind: &str, data: serde_json::Value) -> String {
        format!("message:\ndata:{{\"event\":\"{kind}\",\"data\":{data}}}\n\n")
    }

    #[test]
    fn an_agentflow_stream_is_charged_every_node_once() {
        let stream = agentflow_stream(&[300, 200, 50], false);
        for chunk in [1, 5, 64, stream.len()] {
            let mut scanner = SseScanner::default();
            for piece in stream.as_bytes().chunks(chunk) {
                scanner.feed(piece);
            }
            assert_eq!(scanner.tokens(), 550, "chunk size {chunk}");
            assert!(scanner.answered() && !scanner.failed());
        }
    }

    #[test]
    fn an_error_after_the_answer_started_keeps_the_answer() {
        let mut scanner = SseScanner::default();
        scanner.feed(agentflow_stream(&[300, 50], true).as_bytes());
        assert!(scanner.failed());
        assert!(
            scanner.answered(),
            "tokens reached the caller before the error"
        );
        assert_eq!(scanner.tokens(), 350);
    }

    #[test]
    fn a_node_list_too_large_to_read_falls_back_to_the_events_after_the_last_one_read() {
        let mut scanner = SseScanner::default();
        scanner.feed(agentflow_stream(&[300], false).as_bytes());
        assert_eq!(scanner.tokens(), 300);
        // A big node list (past the general event limit) is still read.
        let big = "x".repeat(MAX_EVENT * 2);
        let nodes = serde_json::json!([
            {"data": {"output": {"content": big, "usageMetadata": {"total_tokens": 300}}}},
            {"data": {"output": {"usageMetadata": {"total_tokens": 40}}}}
        ]);
        for chunk in flowise_event("agentFlowExecutedData", nodes)
            .as_bytes()
            .chunks(64 * 1024)
        {
            scanner.feed(chunk);
        }
        assert_eq!(scanner.tokens(), 340);
        // One past even that limit is skipped: the usage reported after the last list read counts.
        let huge = "x".repeat(MAX_EXECUTED_EVENT);
        scanner.feed(
            b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":7}}\n\n",
        );
        let nodes = serde_json::json!([{"data": {"output": {"content": huge}}}]);
        for chunk in flowise_event("agentFlowExecutedData", nodes)
            .as_bytes()
            .chunks(64 * 1024)
        {
            scanner.feed(chunk);
        }
        assert_eq!(scanner.tokens(), 347);
        // And scanning goes on after it.
        scanner.feed(
            b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":3}}\n\n",
        );
        assert_eq!(scanner.tokens(), 350);
    }

    #[test]
    fn events_written_with_another_key_order_are_read_too() {
        let mut scanner = SseScanner::default();
        for event in [
            serde_json::json!({"data": "Hi", "event": "token"}),
            serde_json::json!({"data": [{"data": {"output": {"usageMetadata": {"total_tokens": 5}}}}],
                               "event": "agentFlowExecutedData"}),
            serde_json::json!({"data": "[DONE]", "event": "end"}),
        ] {
            scanner.feed(format!("message:\ndata:{event}\n\n").as_bytes());
        }
        assert_eq!(scanner.tokens(), 5);
        assert!(scanner.answered());
    }

    #[test]
    fn a_last_event_without_a_blank_line_is_read_at_the_end() {
        let mut scanner = SseScanner::default();
        scanner
            .feed(b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":9}}\n");
        assert_eq!(scanner.tokens(), 0);
        scanner.finish();
        assert_eq!(scanner.tokens(), 9);
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
    async fn a_body_of_known_length_served_by_hyper_is_reported_completed() {
        // hyper stops polling a body whose `is_end_stream` says so; the end must still be seen.
        let (seen, on_end) = recorder();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let on_end = Arc::new(Mutex::new(Some(on_end)));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = hyper::service::service_fn(move |_req| {
                let on_end = on_end.lock().expect("lock").take().expect("one request");
                let body = http_body_util::Full::new(Bytes::from_static(
                    b"message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n",
                ));
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Observed::new(
                        body, on_end,
                    )))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::new(http_body_util::Empty::<Bytes>::new());
        let resp = sender.send_request(req).await.expect("answer");
        assert!(resp.headers().contains_key(hyper::header::CONTENT_LENGTH));
        resp.into_body().collect().await.expect("body");
        // The server reports once it is done with the body; give it a moment.
        for _ in 0..100 {
            if !seen.lock().expect("lock").is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let reports = seen.lock().expect("lock").clone();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].end, StreamEnd::Completed);
        assert!(reports[0].answered);
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

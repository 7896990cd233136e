//! A small, fast stand-in for Flowise: the fixed point every path forwards to.
//!
//! `POST /api/v1/prediction/{id}` answers Flowise's JSON prediction shape, or, when the body asks
//! for `"streaming":true`, an SSE stream of `--sse-events` events `--sse-gap-ms` apart in
//! Flowise's framing (`message:\ndata:{"event":…,"data":…}\n\n`). Each event's `data` is
//! `"<index>:<unix µs when sent>"`, so a client on this machine can tell how long each event
//! took to reach it. `--delay-ms` delays every answer (a model that takes time). `GET
//! /api/v1/chatflows` lists one chatflow, `0b0e0c0a-0000-4000-8000-00000000be0c` (the id
//! `scripts/bench-ab` declares), so `flowgate run --resources-dir` can adopt it (to profile
//! flowgate alone). Anything else is a Flowise-style 404. The JSON answer is fixed (like nginx
//! returning a file): the upstream costs the same on every path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `flowgate-bench upstream` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Print the bound address to stdout once listening (for a parent process).
    #[arg(long)]
    pub print_addr: bool,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Events in a streamed answer (start, tokens, end).
    #[arg(long, default_value_t = 20)]
    pub sse_events: u32,
    /// Milliseconds between two streamed events.
    #[arg(long, default_value_t = 10)]
    pub sse_gap_ms: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Flowise's answer to a non-streaming prediction of its echo flow (ids fixed).
const ANSWER: &str = r#"{"text":"Echo: hello","question":"hello","chatId":"fg-0000000000000000-bench","chatMessageId":"7a1d0c1e-0000-4000-8000-000000000001","isStreamValid":false,"sessionId":"fg-0000000000000000-bench","memoryType":"Buffer Memory","executionId":"7a1d0c1e-0000-4000-8000-000000000002"}"#;

/// Flowise's chatflow listing: the one chatflow `scripts/bench-ab` declares.
const CHATFLOWS: &str = r#"[{"id":"0b0e0c0a-0000-4000-8000-00000000be0c","name":"bench","type":"CHATFLOW","flowData":"{}","deployed":true,"isPublic":false,"apikeyid":null}]"#;

pub fn serve(options: Options) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?
        .block_on(accept(options))
}

async fn accept(options: Options) -> anyhow::Result<()> {
    let listener = TcpListener::bind(options.addr).await?;
    if options.print_addr {
        println!("{}", listener.local_addr()?);
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let options = options.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, options.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, options: Options) -> Result<Response<Body>, Infallible> {
    let prediction = req.uri().path().starts_with("/api/v1/prediction/");
    if req.uri().path() == "/health" {
        return Ok(full(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"{}"),
        ));
    }
    if req.uri().path() == "/api/v1/chatflows" {
        return Ok(full(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(CHATFLOWS.as_bytes()),
        ));
    }
    if !prediction {
        return Ok(full(
            StatusCode::NOT_FOUND,
            "application/json",
            Bytes::from_static(br#"{"statusCode":404,"success":false,"message":"not found"}"#),
        ));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if options.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(options.delay_ms)).await;
    }
    if contains(&body, b"\"streaming\":true") {
        return Ok(stream(
            options.sse_events,
            Duration::from_millis(options.sse_gap_ms),
        ));
    }
    Ok(full(
        StatusCode::OK,
        "application/json; charset=utf-8",
        Bytes::from_static(ANSWER.as_bytes()),
    ))
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Flowise's SSE framing; the first event is `start`, the last `end`, the rest `token`.
fn stream(events: u32, gap: Duration) -> Response<Body> {
    let events = events.max(2);
    let frames = futures::stream::unfold(0u32, move |i| async move {
        if i >= events {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let kind = match i {
            0 => "start",
            i if i + 1 == events => "end",
            _ => "token",
        };
        let text = format!(
            "message:\ndata:{{\"event\":\"{kind}\",\"data\":\"{i}:{}\"}}\n\n",
            unix_micros()
        );
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), i + 1))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    let headers = resp.headers_mut();
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        "x-accel-buffering",
        hyper::header::HeaderValue::from_static("no"),
    );
    resp
}

/// Wall-clock microseconds: comparable between processes on one machine.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

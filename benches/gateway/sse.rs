//! Streaming: time to the first event and each event's delay, through a path vs direct.
//!
//! The upstream stamps every event with its wall-clock send time (`data: "<i>:<µs>"`), so the
//! client knows how long each event took to arrive. A read that delivers more than one event
//! means something on the way batched them.

use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::load::Target;
use crate::upstream::unix_micros;

/// What one streamed answer looked like on arrival.
#[derive(Debug, Clone, Default)]
pub struct Streamed {
    /// Request sent → first event read, in milliseconds.
    pub first_event_ms: f64,
    /// Per event: sent by the upstream → read by the client, in milliseconds.
    pub event_delays_ms: Vec<f64>,
    /// Events that arrived in the same read as an earlier event.
    pub batched: usize,
}

/// Streams one prediction from `target` (its body asks for `"streaming": true`).
pub async fn stream_once(http: &reqwest::Client, target: &Target) -> anyhow::Result<Streamed> {
    let started = Instant::now();
    let resp = http
        .post(&target.url)
        .bearer_auth(&target.token)
        .header("content-type", "application/json")
        .body(target.body.clone())
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("{} answered {}", target.url, resp.status());
    }
    let mut chunks = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Streamed::default();
    let mut first = true;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let arrived = unix_micros();
        if first {
            out.first_event_ms = started.elapsed().as_secs_f64() * 1e3;
            first = false;
        }
        pending.extend_from_slice(&chunk);
        let mut in_this_read = 0usize;
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let sent = sent_micros(&event).context("an event without its send time")?;
            out.event_delays_ms
                .push(arrived.saturating_sub(sent) as f64 / 1e3);
            in_this_read += 1;
        }
        out.batched += in_this_read.saturating_sub(1);
    }
    if out.event_delays_ms.is_empty() {
        bail!("{} streamed no events", target.url);
    }
    Ok(out)
}

/// The send time in `message:\ndata:{"event":"token","data":"<i>:<µs>"}`.
fn sent_micros(event: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(event).ok()?;
    let data = text.lines().find_map(|l| l.strip_prefix("data:"))?;
    let value: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    value["data"].as_str()?.split_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_read_from_flowise_framing() {
        let event = b"message:\ndata:{\"event\":\"token\",\"data\":\"3:1700000000123456\"}\n\n";
        assert_eq!(sent_micros(event), Some(1_700_000_000_123_456));
    }
}

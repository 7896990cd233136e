//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//!
//! The proxy logs every decision, so a line per request is written at full load. A proxy thread
//! therefore holds its lines in a buffer of its own ([`buffer_thread`]) and writes them in one
//! `write` when its runtime goes idle ([`flush_thread`], tokio's `on_thread_park`), when the
//! buffer reaches [`FLUSH_AT`] bytes, or when the thread ends. An idle proxy writes each line at
//! once; a busy one writes a few lines per syscall, and never contends with the other proxy
//! threads for the stderr lock per line. Every other thread writes straight to stderr.

use std::cell::RefCell;
use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`. Refuses a `RUST_LOG` that
/// does not parse, or that would log nothing by mistake ([`filter`]).
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref())?;
    // Colours only on a terminal: a log collector reading a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// The filter `RUST_LOG` asks for (`info` when unset or empty). A level's other spellings alone
/// (`warning`, Python's; `inf`, `fatal`, …) are refused: `tracing` reads a word alone as a
/// *target* to log at `trace`, and since no target has such a name, nothing at all would be
/// logged — errors and the decision lines included — without a word. A target alone
/// (`flowgate`, `flowgate::proxy`) still logs that target.
pub fn filter(raw: Option<&str>) -> Result<EnvFilter, String> {
    const NOT_LEVELS: [&str; 14] = [
        "warning",
        "information",
        "informational",
        "notice",
        "critical",
        "fatal",
        "err",
        "crit",
        "verbose",
        "inf",
        "dbg",
        "wrn",
        "none",
        "all",
    ];
    let raw = raw
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("info");
    for directive in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let misspelt = NOT_LEVELS.iter().any(|w| directive.eq_ignore_ascii_case(w));
        if misspelt && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "RUST_LOG '{raw}': '{directive}' is not a level (off, error, warn, info, debug, \
                 trace); one target's level is target=level (info,flowgate=debug)"
            ));
        }
    }
    EnvFilter::builder()
        .parse(raw)
        .map_err(|e| format!("RUST_LOG '{raw}': {e}"))
}

/// Installs rustls' ring provider as the process default, for reqwest (kube picks ring itself).
/// Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a caught panic said, for its log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

/// `error`, then each cause under it after a colon, leaving out a cause whose text is already
/// there (many errors print their cause in their own message, and also name it as source).
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = next.source();
    }
    message
}

/// A thread's buffered lines are written once they reach this many bytes (~50 decision lines).
pub const FLUSH_AT: usize = 16 * 1024;

thread_local! {
    static LINES: RefCell<Option<Lines<std::io::Stderr>>> = const { RefCell::new(None) };
}

/// From now on this thread's log lines are buffered until [`flush_thread`], [`FLUSH_AT`] bytes,
/// or the end of the thread.
pub fn buffer_thread() {
    LINES.with(|lines| {
        if let Ok(mut lines) = lines.try_borrow_mut() {
            lines.get_or_insert_with(|| Lines::new(std::io::stderr()));
        }
    });
}

/// Writes the lines this thread holds. Cheap when it holds none.
pub fn flush_thread() {
    LINES.with(|lines| {
        if let Ok(mut lines) = lines.try_borrow_mut()
            && let Some(lines) = lines.as_mut()
        {
            lines.flush();
        }
    });
}

/// Whole log lines waiting to be written to `out` together.
struct Lines<W: Write> {
    out: W,
    held: Vec<u8>,
}

impl<W: Write> Lines<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            held: Vec::with_capacity(FLUSH_AT),
        }
    }

    fn push(&mut self, line: &[u8]) {
        self.held.extend_from_slice(line);
        if self.held.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// A log line that cannot be written is dropped: there is nowhere left to report it.
    fn flush(&mut self) {
        if !self.held.is_empty() {
            let _ = self.out.write_all(&self.held);
            self.held.clear();
        }
    }
}

impl<W: Write> Drop for Lines<W> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The subscriber's writer: this thread's buffer if it has one, stderr otherwise. The fmt layer
/// writes each event with one `write_all`, so a buffer only ever holds whole lines.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let held = LINES.with(|lines| match lines.try_borrow_mut() {
            Ok(mut lines) => lines.as_mut().map(|lines| lines.push(buf)).is_some(),
            Err(_) => false,
        });
        if held {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_a_flush_or_a_full_buffer() {
        let mut lines = Lines::new(Vec::new());
        lines.push(b"one\n");
        lines.push(b"two\n");
        assert!(lines.out.is_empty(), "held until flushed");
        lines.flush();
        assert_eq!(lines.out, b"one\ntwo\n");

        let long = vec![b'x'; FLUSH_AT - 1];
        lines.push(&long);
        assert_eq!(lines.out.len(), 8, "below the limit: held");
        lines.push(b"\n");
        assert_eq!(lines.out.len(), 8 + FLUSH_AT, "at the limit: written");
        assert!(lines.held.is_empty());
    }

    #[test]
    fn a_dropped_buffer_writes_what_it_held() {
        let mut out = Vec::new();
        {
            let mut lines = Lines::new(&mut out);
            lines.push(b"last words\n");
        }
        assert_eq!(out, b"last words\n");
    }

    #[test]
    fn a_log_filter_that_would_log_nothing_by_mistake_is_refused() {
        for fine in [
            None,
            Some(""),
            Some("warn"),
            Some("WARN"),
            Some("info,flowgate=debug"),
            Some("flowgate::proxy=trace"),
            Some("debug,hyper=off"),
            Some("flowgate"),
            Some("warn,flowgate::proxy"),
        ] {
            assert!(filter(fine).is_ok(), "{fine:?}");
        }
        for (wrong, why) in [
            ("warning", "'warning' is not a level"),
            ("inf", "'inf' is not a level"),
            ("info,flowgate=verbose", "RUST_LOG 'info,flowgate=verbose'"),
        ] {
            let refused = filter(Some(wrong)).expect_err(wrong);
            assert!(refused.contains(why), "{wrong}: {refused}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("outer: {0}")]
        Repeats(#[source] std::io::Error),
        #[error("outer")]
        Names(#[source] std::io::Error),
    }

    #[test]
    fn a_report_names_each_cause_once() {
        let cause = || std::io::Error::other("the cause");
        assert_eq!(report(&Outer::Repeats(cause())), "outer: the cause");
        assert_eq!(report(&Outer::Names(cause())), "outer: the cause");
    }
}

//! Reads a Flowise Server-Sent Events stream, fed in arbitrary chunks as it passes through, for
//! what settles its charge: the tokens it used, whether it answered, whether it failed.
//!
//! Flowise frames every event as `message:\ndata:{"event":"<kind>","data":...}\n\n`; lines that
//! end in `\r\n`, as the SSE format also allows (a proxy in front of Flowise may write them), are
//! read the same way. Tokens
//! come two ways while an Agentflow streams: a `usageMetadata` event for the last LLM node only,
//! and after every node an `agentFlowExecutedData` event listing every node run so far
//! ([`super::usage`]). The total is the last node list read plus the `usageMetadata` events
//! after it, so no node is counted twice and none is missed. The node lists grow with every
//! node, so only the last one is kept (as bytes) and it is read once, when the stream ends.

use super::buffers::Held;
use super::usage;

/// Largest SSE event the scanner looks into; bigger events pass through unscanned.
const MAX_EVENT: usize = 256 * 1024;

/// Largest `agentFlowExecutedData` event the scanner reads. It carries every node run so far, with
/// its inputs and outputs (a retriever's documents, say), and it is the only report of the tokens
/// of nodes before the last: as large as the JSON answer flowgate reads (`MAX_ANSWER`). Past it,
/// the last list read and the usage events after it count.
const MAX_EXECUTED_EVENT: usize = super::MAX_ANSWER;

/// Bytes of streamed text counted as one token where Flowise reports none: about four
/// characters of English text make a token.
const BYTES_PER_TOKEN: u64 = 4;

/// How an `agentFlowExecutedData` event starts (Flowise writes the `event` key first).
const EXECUTED_PREFIX: &[u8] = b"\"event\":\"agentFlowExecutedData\"";

/// How a legacy multi-agent or sequential-agent flow's `agentReasoning` event starts.
const REASONING_PREFIX: &[u8] = b"\"event\":\"agentReasoning\"";
/// How an `error` event starts, and a `token` event.
const ERROR_PREFIX: &[u8] = b"\"event\":\"error\"";
const TOKEN_PREFIX: &[u8] = b"\"event\":\"token\"";
/// How a `thinking` event starts: a reasoning model's thoughts, streamed before its answer.
const THINKING_PREFIX: &[u8] = b"\"event\":\"thinking\"";

/// The scanner's state between chunks.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// The event read so far, when it started in an earlier chunk.
    pending: Vec<u8>,
    /// The event being read is too large and is skipped up to its end.
    overflow: bool,
    /// What the line being read holds so far (an event's blank line may straddle two chunks).
    line: Line,
    /// What the last chunk left of a line it did not end.
    partial: Partial,
    /// What the stream reported of its tokens so far.
    usage: StreamUsage,
    error_event: bool,
    token_event: bool,
    /// An `end` event with no `error` event before it.
    clean_end: bool,
    /// Flowise stopped the run when asked (an `abort` event, or an Agentflow `TERMINATED`):
    /// what it ran until then is answered, whatever error follows.
    stopped: bool,
    /// An Agentflow node of this run that does work finished ([`node_finished`]); its output
    /// reaches the caller in the next node list.
    finished_unlisted: bool,
    /// A node list went by after such a node finished, or an `agentReasoning` event brought an
    /// agent's messages ([`reasoning_has_output`]): the caller has that output, so a later
    /// failure does not make the run free. (An Iteration's body runs nested: its nodes finish
    /// with no list of their own; they are listed, and count, after the Iteration finished.)
    output_listed: bool,
    /// No policy prices the stream's tokens: node lists are neither kept nor read past
    /// [`MAX_EVENT`] (they can be tens of megabytes, and every stream has them).
    uncounted: bool,
    /// What the scanner keeps (the event being read, the last node list), counted in the body
    /// memory (`FLOWGATE_BODY_MEMORY`) beyond [`MAX_EVENT`]: a node list that does not fit is
    /// skipped as one too large is. `None`: not counted.
    memory: Option<Held>,
}

/// A stream's token reports, counted when asked: the last node list is read only then.
#[derive(Debug, Default)]
pub struct StreamUsage {
    /// The last `agentFlowExecutedData` event.
    nodes: Option<String>,
    /// Tokens of the `usageMetadata` events after that event.
    streamed_tokens: u64,
    /// Which run the stream continues: which listed nodes are its own.
    resume: usage::Resume,
    /// Bytes of `token` text streamed since the last report (`usageMetadata`, node list).
    unreported_text: u64,
    /// The run ended before Flowise reported it: stopped (an `abort` event, an Agentflow node or
    /// flow `TERMINATED`) or failed (an `error` event). From then on a node list, which never
    /// holds the tokens of the node that was cut, no longer clears `unreported_text`.
    cut: bool,
    /// The stream is an Agentflow's (it sent flow or node events, or a token report): the only
    /// kind Flowise reports tokens of. A flow that never reports costs its flat cost however it
    /// ends, so a stop never costs more than the whole run would.
    reporting: bool,
    /// A node list went unread (too large, or no body memory for it) or was let go, and no
    /// later one was read: the tokens of the nodes it listed are unknown, and the run is
    /// charged at least what it held, as an answer too large to read is.
    list_unread: bool,
}

impl StreamUsage {
    /// Tokens Flowise reported. An Agentflow stopped or failed while it answered never reports
    /// the node it was cut in: the text that node streamed counts at [`BYTES_PER_TOKEN`], so
    /// stopping a run just before its report does not make its answer free.
    pub fn tokens(&self) -> u64 {
        let listed = self
            .nodes
            .as_deref()
            .map_or(0, |event| executed_tokens(event, &self.resume));
        let stopped = if self.cut && self.reporting {
            self.unreported_text.div_ceil(BYTES_PER_TOKEN)
        } else {
            0
        };
        listed
            .saturating_add(self.streamed_tokens)
            .saturating_add(stopped)
    }

    /// Whether a node list's tokens went uncounted ([`StreamUsage::list_unread`]).
    pub fn list_unread(&self) -> bool {
        self.list_unread
    }

    /// [`StreamUsage::tokens`], read on a blocking thread when the node list is large: a list of
    /// megabytes takes milliseconds to read, and a proxy thread serves many connections.
    pub async fn count(self) -> u64 {
        if self.nodes.as_ref().is_none_or(|n| n.len() <= MAX_EVENT) {
            return self.tokens();
        }
        tokio::task::spawn_blocking(move || self.tokens())
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "counting a stream's tokens failed");
                0
            })
    }
}

impl SseScanner {
    /// A scanner for the stream of a prediction that continues `resume`.
    pub fn resuming(resume: usage::Resume) -> Self {
        Self {
            usage: StreamUsage {
                resume,
                ..StreamUsage::default()
            },
            ..Self::default()
        }
    }

    /// Counts what the scanner keeps past [`MAX_EVENT`] in `memory`.
    pub fn counting_in(mut self, memory: Held) -> Self {
        self.memory = Some(memory);
        self
    }

    /// A scanner for a stream whose tokens nobody prices: it tells only whether the stream
    /// answered or failed, and holds no node list.
    pub fn uncounted() -> Self {
        Self {
            uncounted: true,
            ..Self::default()
        }
    }

    /// Feeds the next chunk of the stream; whether it carried anything but comment lines and
    /// blank lines ([`carries_content`]).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let content = carries_content(self.partial, chunk);
        self.partial = Partial::after(self.partial, chunk);
        let mut rest = chunk;
        let mut line = self.line;
        while let Some(end) = find_event_end(line, rest) {
            let (head, tail) = rest.split_at(end);
            if !self.overflow {
                self.pending.extend_from_slice(head);
                let event = std::mem::take(&mut self.pending);
                if event.len() <= MAX_EVENT || event.len() <= self.event_limit(&event) {
                    self.inspect(event);
                } else {
                    self.unread(&event);
                }
            }
            self.overflow = false;
            line = Line::Text;
            rest = tail;
        }
        self.line = Line::after(line, rest);
        if !self.overflow {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_EVENT
                && self.pending.len() > self.event_limit(&self.pending)
            {
                self.skip();
            }
        }
        self.account();
        content
    }

    /// Counts what the scanner keeps in its memory hold. The event being read is skipped when
    /// it does not fit, and the node list kept before it is let go when that is not enough
    /// (its tokens then go uncounted: the memory of every request comes first).
    fn account(&mut self) {
        // Taken out for the while, so that `skip` can be called on the scanner.
        let Some(mut memory) = self.memory.take() else {
            return;
        };
        let kept = |pending: &Vec<u8>, nodes: &Option<String>| {
            // The first MAX_EVENT bytes of each are every stream's, as they always were: an
            // event of the usual size is never skipped for memory, even beside a kept list.
            let list = nodes.as_ref().map_or(0, String::capacity);
            pending.capacity().saturating_sub(MAX_EVENT) + list.saturating_sub(MAX_EVENT)
        };
        let mut want = kept(&self.pending, &self.usage.nodes);
        if want > memory.bytes() && memory.try_grow(want - memory.bytes()).is_err() {
            if !self.pending.is_empty() {
                tracing::warn!(
                    bytes = self.pending.len(),
                    "body memory full: a node list is not read"
                );
                self.skip();
            }
            want = kept(&self.pending, &self.usage.nodes);
            if want > memory.bytes() && memory.try_grow(want - memory.bytes()).is_err() {
                self.usage.list_unread |= self.usage.nodes.take().is_some();
                want = 0;
            }
        }
        memory.shrink_to(want);
        self.memory = Some(memory);
    }

    /// The stream ended: reads a last event that had no blank line after it.
    pub fn finish(&mut self) {
        if !self.overflow && !self.pending.is_empty() {
            let event = std::mem::take(&mut self.pending);
            self.inspect(event);
        }
    }

    /// The stream ended before its end (its client or flowgate cut it, the connection failed):
    /// what it streamed since Flowise's last report counts as [`StreamUsage::tokens`] says.
    pub fn cut(&mut self) {
        self.usage.cut = true;
    }

    /// Tokens Flowise reported so far.
    pub fn tokens(&self) -> u64 {
        self.usage.tokens()
    }

    /// The token reports, taken out (once the stream ended).
    pub fn take_usage(&mut self) -> StreamUsage {
        let usage = std::mem::take(&mut self.usage);
        self.account();
        usage
    }

    /// Whether Flowise began to answer: it streamed a token, ended without an error, or stopped
    /// the run when asked (the flat cost and the tokens of the nodes before are due, as for a
    /// stop after the first token).
    pub fn answering(&self) -> bool {
        self.token_event || self.clean_end || self.stopped
    }

    /// Whether the charge is due whatever follows: Flowise began to answer, or a node list
    /// brought the caller the output of an Agentflow node of this run (an LLM's text, say; a
    /// later node failing before any token must not make that free), or an agents' reasoning
    /// an agent's messages.
    pub fn answered(&self) -> bool {
        self.answering() || self.output_listed
    }

    /// The newlines that end the event being read when the stream is cut in it, so that an
    /// event added after it is not read as part of it; none at an event's end, where a blank
    /// line would be an empty event (which some clients, Flowise's chat embed among them, fail
    /// to parse).
    pub fn unfinished_event_end(&self) -> &'static str {
        if self.pending.is_empty() && !self.overflow {
            return "";
        }
        match self.line {
            Line::Empty => "\n",
            Line::Cr | Line::Text => "\n\n",
        }
    }

    /// Whether Flowise sent an `error` event.
    pub fn failed(&self) -> bool {
        self.error_event
    }

    /// Skips the event being read to its end (too large to read, or no memory for it). A node
    /// list, even unread, still brought the caller what the nodes before it put out.
    fn skip(&mut self) {
        let event = std::mem::take(&mut self.pending);
        self.unread(&event);
        self.overflow = true;
    }

    /// An event went by unread: a node list still brought the caller the outputs of the nodes
    /// finished before it, an agents' reasoning or a token that large is no empty one (a
    /// Direct Reply's whole text comes as one token), and an error that large is still one.
    fn unread(&mut self, event: &[u8]) {
        self.usage.list_unread |= !self.uncounted && is_node_list(event);
        self.output_listed |= self.finished_unlisted && is_node_list(event);
        self.output_listed |= starts_with_event(event, REASONING_PREFIX);
        self.token_event |= starts_with_event(event, TOKEN_PREFIX);
        self.token_event |= starts_with_event(event, THINKING_PREFIX);
        if starts_with_event(event, ERROR_PREFIX) {
            self.error_event = true;
            self.usage.cut = true;
        }
    }

    /// The largest size the scanner reads an event of, by how the event starts.
    fn event_limit(&self, event: &[u8]) -> usize {
        if is_node_list(event) && !self.uncounted {
            MAX_EXECUTED_EVENT
        } else {
            MAX_EVENT
        }
    }

    fn inspect(&mut self, event: Vec<u8>) {
        let Ok(text) = String::from_utf8(event) else {
            return;
        };
        let mut executed = false;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            // Flowise writes `event` first: most events (tokens) are read without parsing.
            let kind = match event_kind(data) {
                Some(kind) => Kind::of(kind),
                None => match serde_json::from_str::<Tagged<'_>>(data) {
                    Ok(tagged) => Kind::of(tagged.event),
                    Err(_) => continue,
                },
            };
            match kind {
                // A reasoning model's thoughts reach the caller as its answer does, and its
                // tokens are the node's as much (Flowise reports them together).
                Kind::Token | Kind::Thinking => {
                    let text = text_len(data, kind);
                    // An empty token (a model's role-only first chunk, a tool call's) brought
                    // the caller nothing: Flowise's Agentflow nodes send one per chunk.
                    self.token_event |= text > 0;
                    if !self.uncounted && !self.usage.cut {
                        let usage = &mut self.usage;
                        usage.unreported_text = usage.unreported_text.saturating_add(text as u64);
                    }
                }
                Kind::End => self.clean_end |= !self.error_event,
                Kind::Error => {
                    self.error_event = true;
                    self.usage.cut = true;
                }
                Kind::Abort => {
                    self.usage.cut = true;
                    self.stopped = true;
                }
                // Flowise 3 stops an Agentflow with the node, then the flow, `TERMINATED`; a
                // node that fails is `ERROR` before the node list, which then has no usage of it.
                Kind::Flow => {
                    self.usage.reporting = true;
                    let status = flow_status(data);
                    let terminated = status.as_deref() == Some("TERMINATED");
                    self.usage.cut |= terminated || status.as_deref() == Some("ERROR");
                    self.stopped |= terminated;
                    self.finished_unlisted |= node_finished(data);
                }
                Kind::Usage => {
                    self.usage.reporting = true;
                    if let Ok(event) = serde_json::from_str::<UsageEvent>(data) {
                        let tokens = usage::usage_tokens(&event.data);
                        let usage = &mut self.usage;
                        usage.streamed_tokens = usage.streamed_tokens.saturating_add(tokens);
                        usage.unreported_text = 0;
                    }
                }
                Kind::Executed => {
                    self.usage.reporting = true;
                    self.output_listed |= self.finished_unlisted;
                    executed = !self.uncounted;
                }
                Kind::Reasoning => {
                    self.output_listed = self.output_listed || reasoning_has_output(data);
                }
                Kind::Other => {}
            }
        }
        if executed {
            // Kept whole, not copied out: the list can be megabytes, and comes after every node.
            self.usage.nodes = Some(text);
            self.usage.list_unread = false;
            self.usage.streamed_tokens = 0;
            if !self.usage.cut {
                self.usage.unreported_text = 0;
            }
        }
    }
}

/// Any Flowise event, for its kind.
#[derive(serde::Deserialize)]
struct Tagged<'a> {
    #[serde(borrow)]
    event: &'a str,
}

#[derive(serde::Deserialize)]
struct UsageEvent {
    data: serde_json::Value,
}

/// The status a flow event gives a node or the run, when it may be `ERROR` (failed) or
/// `TERMINATED` (stopped): `nextAgentFlow`'s `data.status`, or `agentFlowEvent`'s `data`
/// (parsed: a node's label or error message may hold the word). Others are not parsed.
fn flow_status(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Flow {
        data: Option<FlowData>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum FlowData {
        Run(String),
        Node { status: Option<String> },
    }
    if !data.contains("\"ERROR\"") && !data.contains("\"TERMINATED\"") {
        return None;
    }
    match serde_json::from_str::<Flow>(data).ok()?.data? {
        FlowData::Run(status)
        | FlowData::Node {
            status: Some(status),
        } => Some(status),
        FlowData::Node { status: None } => None,
    }
}

/// Whether an event (from its start) is an `agentFlowExecutedData` node list.
fn is_node_list(event: &[u8]) -> bool {
    starts_with_event(event, EXECUTED_PREFIX)
}

/// A line an earlier chunk began and did not end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Partial {
    #[default]
    None,
    /// A comment (`:…`).
    Comment,
    /// Anything else.
    Content,
}

impl Partial {
    /// What is left unended after `chunk`.
    fn after(before: Self, chunk: &[u8]) -> Self {
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(end) => Self::of(&chunk[end + 1..]),
            None if before == Self::None => Self::of(chunk),
            None => before,
        }
    }

    /// A line that begins with `start`.
    fn of(start: &[u8]) -> Self {
        match start {
            [] => Self::None,
            [b':', ..] => Self::Comment,
            _ => Self::Content,
        }
    }
}

/// Whether `chunk` holds more than SSE comment lines (`:…`: Flowise writes `:heartbeat` to every
/// open stream every 30 s) and blank lines, given the line an earlier chunk left unended.
fn carries_content(partial: Partial, chunk: &[u8]) -> bool {
    let mut lines = chunk.split(|&b| b == b'\n');
    if partial != Partial::None {
        let rest = lines.next().unwrap_or_default();
        if partial == Partial::Content && !matches!(rest, [] | [b'\r']) {
            return true;
        }
    }
    lines.any(|line| !matches!(line, [] | [b'\r'] | [b':', ..]))
}

/// Whether an event's first bytes hold `prefix` (its `"event":"<kind>"`).
fn starts_with_event(event: &[u8], prefix: &[u8]) -> bool {
    event[..event.len().min(64)]
        .windows(prefix.len())
        .any(|w| w == prefix)
}

/// Whether a legacy multi-agent or sequential-agent flow's `agentReasoning` event brought the
/// caller an agent's output: Flowise sends, after every agent, all agents run so far as
/// `[{"agentName":…,"messages":["<what it wrote>",…],…},…]`. A supervisor that only routes
/// writes no message.
fn reasoning_has_output(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Reasoning<'a> {
        #[serde(borrow)]
        data: Vec<Agent<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Agent<'a> {
        #[serde(borrow, default)]
        messages: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    serde_json::from_str::<Reasoning<'_>>(data).is_ok_and(|r| {
        r.data
            .iter()
            .flat_map(|agent| agent.messages.iter().flatten())
            .any(|message| !matches!(message.get(), "\"\"" | "null" | "[]"))
    })
}

/// Agentflow node types whose output is no work of the run's own: the Start node passes the
/// question on, a Human Input node holds the human's answer (a resumed run's first node), a
/// condition or loop picks where to go on, a sticky note is a comment.
const NO_OUTPUT_NODES: [&str; 6] = [
    "startAgentflow",
    "humanInputAgentflow",
    "conditionAgentflow",
    "conditionAgentAgentflow",
    "loopAgentflow",
    "stickyNoteAgentflow",
];

/// Whether a flow event reports a node finished whose output is the run's own work:
/// `{"event":"nextAgentFlow","data":{"nodeId":…,"status":"FINISHED"}}` for any node but those
/// of [`NO_OUTPUT_NODES`]. Flowise names nodes `<type>_<n>`.
fn node_finished(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Next {
        event: String,
        data: Option<NodeState>,
    }
    #[derive(serde::Deserialize)]
    struct NodeState {
        #[serde(rename = "nodeId")]
        node_id: Option<String>,
        status: Option<String>,
    }
    if !data.contains("\"FINISHED\"") {
        return false;
    }
    let Ok(Next {
        event,
        data:
            Some(NodeState {
                node_id: Some(node),
                status: Some(status),
            }),
    }) = serde_json::from_str(data)
    else {
        return false;
    };
    let kind = node
        .rsplit_once('_')
        .map_or(node.as_str(), |(kind, _)| kind);
    event == "nextAgentFlow" && status == "FINISHED" && !NO_OUTPUT_NODES.contains(&kind)
}

/// Tokens of the nodes in an `agentFlowExecutedData` event.
fn executed_tokens(event: &str, resume: &usage::Resume) -> u64 {
    #[derive(serde::Deserialize)]
    struct Executed<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Executed<'_>>(data.trim_start()).ok())
        .map(|e| usage::node_list_tokens(e.data.get(), resume))
        .fold(0, u64::saturating_add)
}

/// The Flowise events that settle a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Thinking,
    End,
    Error,
    Usage,
    Executed,
    Reasoning,
    Abort,
    Flow,
    Other,
}

impl Kind {
    fn of(event: &str) -> Self {
        match event {
            "token" => Self::Token,
            "thinking" => Self::Thinking,
            "end" => Self::End,
            "error" => Self::Error,
            "usageMetadata" => Self::Usage,
            "agentFlowExecutedData" => Self::Executed,
            "agentReasoning" => Self::Reasoning,
            "abort" => Self::Abort,
            "nextAgentFlow" | "agentFlowEvent" => Self::Flow,
            _ => Self::Other,
        }
    }
}

/// The `event` of a Flowise SSE data line, `{"event":"<kind>",...}`, without parsing the rest.
fn event_kind(data: &str) -> Option<&str> {
    let rest = data.strip_prefix("{\"event\":\"")?;
    rest.split_once('"').map(|(kind, _)| kind)
}

/// Bytes of the text of a `token` (or `thinking`) event's data line: as written (JSON escapes
/// too) and without parsing where Flowise wrote it, `{"event":"token","data":"<text>"}`;
/// parsed otherwise.
fn text_len(data: &str, kind: Kind) -> usize {
    let prefix = match kind {
        Kind::Thinking => "{\"event\":\"thinking\",\"data\":\"",
        _ => "{\"event\":\"token\",\"data\":\"",
    };
    if let Some(rest) = data.strip_prefix(prefix)
        && let Some(text) = rest.trim_end().strip_suffix("\"}")
    {
        return text.len();
    }
    #[derive(serde::Deserialize)]
    struct TokenEvent {
        data: String,
    }
    serde_json::from_str::<TokenEvent>(data).map_or(0, |e| e.data.len())
}

/// What the line being read holds so far: whether it can still be the blank line that ends an
/// event, `\n` or `\r\n`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing: a newline ended the line before (or nothing was read yet).
    Empty,
    /// A lone `\r`.
    Cr,
    /// Anything else. After an event it is this too: the newline that ended the event's
    /// blank line does not start another one.
    #[default]
    Text,
}

impl Line {
    /// The line after `line` was continued by `bytes`.
    fn after(line: Self, bytes: &[u8]) -> Self {
        let (line, tail) = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => (Self::Empty, &bytes[i + 1..]),
            None => (line, bytes),
        };
        match (line, tail) {
            (line, []) => line,
            (Self::Empty, [b'\r']) => Self::Cr,
            _ => Self::Text,
        }
    }
}

/// End (exclusive, in `next`) of the first complete event, if any: after its first blank line,
/// `\n` or `\r\n`. `line` is what the line being read held before `next` (the blank line may
/// straddle two chunks).
fn find_event_end(mut line: Line, next: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = next[start..].iter().position(|&b| b == b'\n') {
        let i = start + i;
        // Only a line of at most one byte here (`\r`) can still be blank.
        if i - start <= 1 && Line::after(line, &next[start..i]) != Line::Text {
            return Some(i + 1);
        }
        line = Line::Empty;
        start = i + 1;
    }
    None
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;

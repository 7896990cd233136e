//! Tests of the SSE scanner (`sse.rs`).

use super::*;

const STREAM: &str = "message:\ndata:{\"event\":\"start\",\"data\":\"\"}\n\n\
message:\ndata:{\"event\":\"token\",\"data\":\"Echo: hi\"}\n\n\
message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":12,\"output_tokens\":30,\"total_tokens\":42}}\n\n\
message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":5,\"output_tokens\":3}}\n\n\
message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n";

#[test]
fn usage_is_summed_whatever_the_chunking() {
    for chunk in [1, 2, 3, 7, 64, STREAM.len()] {
        let scanner = fed(SseScanner::default(), STREAM, chunk);
        assert_eq!(scanner.tokens(), 50, "chunk size {chunk}");
        assert!(!scanner.failed());
        assert!(scanner.answered());
    }
}

/// `scanner` fed `stream` in pieces of `chunk` bytes, as a connection may deliver it.
fn fed(mut scanner: SseScanner, stream: &str, chunk: usize) -> SseScanner {
    for piece in stream.as_bytes().chunks(chunk) {
        scanner.feed(piece);
    }
    scanner
}

fn event(kind: &str, data: &str) -> String {
    format!("message:\ndata:{{\"event\":\"{kind}\",\"data\":{data}}}\n\n")
}

#[test]
fn a_run_cut_while_answering_counts_the_text_its_last_node_streamed() {
    let usage = event("usageMetadata", r#"{"total_tokens":42}"#);
    let abort = event("abort", r#""[DONE]""#);
    let error = event("error", r#""Error: boom""#);
    // What every Agentflow run streams first.
    let flow = event("agentFlowEvent", r#""INPROGRESS""#);
    // 16 bytes of text as written (escapes too): 4 tokens at 4 bytes each, counted only
    // where an Agentflow was cut before its report.
    let text = event("token", r#""Echo: ""#) + &event("token", r#""a \"long\"""#);
    for (stream, want) in [
        (flow.clone() + &text + &abort, 4),
        (text.clone() + &usage + &abort, 42),
        (usage.clone() + &text + &abort, 42 + 4),
        (flow.clone() + &text + &event("end", r#""[DONE]""#), 0),
        // A failure mid-answer is cut as a stop is.
        (flow.clone() + &text + &error, 4),
        // A flow that never reports tokens (a Chatflow, a legacy multi-agent flow) costs the
        // same however it ends.
        (text.clone() + &abort, 0),
        (text.clone() + &error, 0),
        // Flowise 3 stopping an Agentflow: the node, the node list (without the cut node's
        // tokens, after it: it clears nothing), the flow, an error.
        (
            event(
                "agentFlowExecutedData",
                r#"[{"data":{"output":{"usageMetadata":{"total_tokens":7}}}}]"#,
            ) + &text
                + &event(
                    "nextAgentFlow",
                    r#"{"nodeId":"llm_1","status":"TERMINATED"}"#,
                )
                + &event(
                    "agentFlowExecutedData",
                    r#"[{"data":{"output":{"usageMetadata":{"total_tokens":7}}}},{"status":"TERMINATED","data":{}}]"#,
                )
                + &event("agentFlowEvent", r#""TERMINATED""#)
                + &error,
            7 + 4,
        ),
        // Flowise 3 when a node fails mid-answer: the node ERROR, the node list (the failed
        // node without usage), the flow ERROR, an error. Its streamed text is counted.
        (
            event(
                "agentFlowExecutedData",
                r#"[{"data":{"output":{"usageMetadata":{"total_tokens":7}}}}]"#,
            ) + &text
                + &event(
                    "nextAgentFlow",
                    r#"{"nodeId":"llm_1","nodeLabel":"LLM","status":"ERROR","error":"boom"}"#,
                )
                + &event(
                    "agentFlowExecutedData",
                    r#"[{"data":{"output":{"usageMetadata":{"total_tokens":7}}}},{"status":"ERROR","data":{"error":"boom"}}]"#,
                )
                + &event("agentFlowEvent", r#""ERROR""#)
                + &error,
            7 + 4,
        ),
        // A node that finished, though its label says ERROR, cuts nothing.
        (
            flow.clone()
                + &text
                + &event(
                    "nextAgentFlow",
                    r#"{"nodeId":"llm_1","nodeLabel":"ERROR","status":"FINISHED"}"#,
                )
                + &event("agentFlowExecutedData", "[]")
                + &event("end", r#""[DONE]""#),
            0,
        ),
        // A node list after the text, not cut: the node reported (or reports nothing).
        (
            flow.clone() + &text + &event("agentFlowExecutedData", "[]") + &abort,
            0,
        ),
        // Written in another key order: parsed, its text alone counted (5 bytes, 2 tokens).
        (
            flow.clone() + "message:\ndata:{\"data\":\"hello\",\"event\":\"token\"}\n\n" + &abort,
            2,
        ),
    ] {
        for chunk in [1, 5, stream.len()] {
            let scanner = fed(SseScanner::default(), &stream, chunk);
            assert_eq!(scanner.tokens(), want, "{stream}");
        }
    }
    let mut uncounted = SseScanner::uncounted();
    uncounted.feed((text + &abort).as_bytes());
    assert_eq!(uncounted.tokens(), 0);
}

#[test]
fn lines_ending_in_crlf_are_read_the_same_whatever_the_chunking() {
    let crlf = STREAM.replace('\n', "\r\n");
    for chunk in [1, 2, 3, 7, 64, crlf.len()] {
        let scanner = fed(SseScanner::default(), &crlf, chunk);
        assert_eq!(scanner.tokens(), 50, "chunk size {chunk}");
        assert!(!scanner.failed());
        assert!(scanner.answered());
    }
    // A `\r` inside a line, even at a chunk's end, ends neither the line nor the event
    // (here it is JSON whitespace): the event is read whole.
    let mut scanner = SseScanner::default();
    scanner.feed(b"message:\r\ndata:{\"event\":\"usageMetadata\",\r");
    scanner.feed(b"\"data\":{\"total_tokens\":9}}\r\n\r");
    assert_eq!(scanner.tokens(), 0, "not ended yet");
    scanner.feed(b"\n");
    assert_eq!(scanner.tokens(), 9);
}

#[test]
fn a_run_stopped_before_its_first_token_is_answered() {
    // Flowise 3.1: the node and the flow TERMINATED, then an error, then the end.
    for stop in [
        r#"{"event":"nextAgentFlow","data":{"nodeId":"llm_0","status":"TERMINATED"}}"#,
        r#"{"event":"agentFlowEvent","data":"TERMINATED"}"#,
        r#"{"event":"abort","data":"[DONE]"}"#,
    ] {
        let mut scanner = SseScanner::default();
        scanner.feed(b"message:\ndata:{\"event\":\"start\",\"data\":\"\"}\n\n");
        assert!(!scanner.answered());
        scanner.feed(format!("message:\ndata:{stop}\n\n").as_bytes());
        scanner.feed(
            b"message:\ndata:{\"event\":\"error\",\"data\":\"Flow execution was cancelled\"}\n\n",
        );
        scanner.feed(b"message:\ndata:{\"event\":\"end\",\"data\":\"[DONE]\"}\n\n");
        assert!(scanner.answered(), "{stop}");
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

#[test]
fn a_node_finished_before_a_failure_is_answered_but_the_start_node_is_not() {
    let node = |id: &str, status: &str| {
        event(
            "nextAgentFlow",
            &format!(r#"{{"nodeId":"{id}","nodeLabel":"x","status":"{status}"}}"#),
        )
    };
    let error = event("error", r#""Error: the HTTP node failed""#);
    let start = node("startAgentflow_0", "INPROGRESS") + &node("startAgentflow_0", "FINISHED");
    let listed = event(
        "agentFlowExecutedData",
        r#"[{"nodeId":"startAgentflow_0","status":"FINISHED","data":{}},{"nodeId":"llmAgentflow_0","status":"FINISHED","data":{"output":{"content":"the answer","usageMetadata":{"total_tokens":30}}}}]"#,
    );
    let llm = node("llmAgentflow_0", "INPROGRESS") + &node("llmAgentflow_0", "FINISHED") + &listed;
    for (stream, answered, tokens) in [
        // An LLM node's output reached the caller in the node list, then a node failed.
        (
            start.clone() + &llm + &node("httpAgentflow_0", "INPROGRESS") + &error,
            true,
            30,
        ),
        // Only the Start node ran, or a resumed run's Human Input node: nothing of the run's own.
        (
            start.clone() + &node("llmAgentflow_0", "INPROGRESS") + &error,
            false,
            0,
        ),
        (node("humanInputAgentflow_0", "FINISHED") + &error, false, 0),
        // A node still running is not finished; another event saying FINISHED is not a node.
        (
            start.clone()
                + &node("llmAgentflow_0", "INPROGRESS")
                + &event("agentFlowEvent", r#""FINISHED""#)
                + &error,
            false,
            0,
        ),
        // An Iteration's body is a nested run: its nodes finish, but Flowise lists none of
        // them, so nothing of theirs reached the caller.
        (
            start.clone()
                + &node("iterationAgentflow_0", "INPROGRESS")
                + &node("llmAgentflow_1", "FINISHED")
                + &error,
            false,
            0,
        ),
        // A condition only picks a branch: listed, it is still no output of the run's own.
        (
            start.clone()
                + &node("conditionAgentflow_0", "FINISHED")
                + &event(
                    "agentFlowExecutedData",
                    r#"[{"nodeId":"conditionAgentflow_0","status":"FINISHED","data":{}}]"#,
                )
                + &error,
            false,
            0,
        ),
    ] {
        for chunk in [1, 7, stream.len()] {
            let scanner = fed(SseScanner::default(), &stream, chunk);
            assert!(scanner.failed());
            assert_eq!(scanner.answered(), answered, "{stream}");
            assert!(!scanner.answering(), "no token: a hang-up aborts at once");
            assert_eq!(scanner.tokens(), tokens, "{stream}");
        }
    }
}

#[test]
fn a_node_list_too_large_to_read_still_brings_the_caller_the_nodes_output() {
    let finished = event(
        "nextAgentFlow",
        r#"{"nodeId":"llmAgentflow_0","status":"FINISHED"}"#,
    );
    let content = "x".repeat(MAX_EVENT + 4096);
    let list = event(
        "agentFlowExecutedData",
        &format!(
            r#"[{{"nodeId":"llmAgentflow_0","status":"FINISHED","data":{{"output":{{"content":"{content}"}}}}}}]"#
        ),
    );
    let error = event("error", r#""Error: the next node failed""#);
    for (before, answered) in [(finished.clone(), true), (String::new(), false)] {
        let stream = before + &list + &error;
        // Read as it comes, the list is skipped before its end; in one piece, at its end.
        for chunk in [1024, stream.len()] {
            // Nobody prices tokens: a list past MAX_EVENT is skipped unread.
            let scanner = fed(SseScanner::uncounted(), &stream, chunk);
            assert!(scanner.failed());
            assert_eq!(scanner.answered(), answered, "chunk {chunk}");
        }
    }
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
        let scanner = fed(SseScanner::default(), &stream, chunk);
        assert_eq!(scanner.tokens(), 550, "chunk size {chunk}");
        assert!(scanner.answered() && !scanner.failed());
    }
}

#[test]
fn a_stream_nobody_prices_keeps_no_node_list_and_still_tells_how_it_ended() {
    let big = "x".repeat(MAX_EVENT * 2);
    let nodes = serde_json::json!([{"data": {"output": {"content": big}}}]);
    let list = flowise_event("agentFlowExecutedData", nodes);
    for fail_at_end in [false, true] {
        let mut scanner = SseScanner::uncounted();
        for chunk in list.as_bytes().chunks(64 * 1024) {
            scanner.feed(chunk);
            assert!(scanner.pending.len() <= MAX_EVENT + 64 * 1024);
        }
        scanner.feed(agentflow_stream(&[300, 50], fail_at_end).as_bytes());
        assert!(scanner.usage.nodes.is_none(), "no node list kept");
        assert!(scanner.answered());
        assert_eq!(scanner.failed(), fail_at_end);
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
    scanner.feed(b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":7}}\n\n");
    let nodes = serde_json::json!([{"data": {"output": {"content": huge}}}]);
    for chunk in flowise_event("agentFlowExecutedData", nodes)
        .as_bytes()
        .chunks(64 * 1024)
    {
        scanner.feed(chunk);
    }
    assert_eq!(scanner.tokens(), 347);
    // And scanning goes on after it.
    scanner.feed(b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":3}}\n\n");
    assert_eq!(scanner.tokens(), 350);
}

/// Flowise 3's LLM and Agent nodes stream a reasoning model's thoughts as `thinking` events
/// before its first token: they reach the caller as its answer does.
#[test]
fn a_reasoning_models_thoughts_are_an_answer_and_count_when_the_run_is_cut() {
    let thinking = "message:\ndata:{\"event\":\"thinking\",\"data\":\"Let me see: 2 + 2\"}\n\n";
    let done = "message:\ndata:{\"event\":\"thinking\",\"data\":\"\",\"duration\":3}\n\n";
    let flow = event("agentFlowEvent", r#""INPROGRESS""#);
    let mut scanner = SseScanner::default();
    scanner.feed(flow.as_bytes());
    scanner.feed(done.as_bytes());
    assert!(
        !scanner.answering(),
        "an empty thought (its duration) is nothing yet"
    );
    scanner.feed(thinking.as_bytes());
    assert!(scanner.answering(), "the caller has the thoughts");
    // Stopped before Flowise reported the node: its streamed text counts at 4 bytes a token.
    scanner.cut();
    assert_eq!(
        scanner.tokens(),
        "Let me see: 2 + 2".len().div_ceil(4) as u64
    );
}

/// `TERMINATED` is a status, not a word anywhere in the event: a node may be labelled so.
#[test]
fn only_a_terminated_status_stops_the_run() {
    let mut scanner = SseScanner::default();
    scanner.feed(
        event(
            "nextAgentFlow",
            r#"{"nodeId":"llm_1","nodeLabel":"TERMINATED","status":"INPROGRESS"}"#,
        )
        .as_bytes(),
    );
    assert!(!scanner.answering() && !scanner.usage.cut, "a label");
    scanner.feed(
        event(
            "nextAgentFlow",
            r#"{"nodeId":"llm_1","status":"TERMINATED"}"#,
        )
        .as_bytes(),
    );
    assert!(scanner.answering() && scanner.usage.cut, "the status");
}

/// Flowise writes `:heartbeat` to every open stream every 30 s: only events are progress.
#[test]
fn comments_and_blank_lines_carry_no_content() {
    let mut scanner = SseScanner::default();
    assert!(!scanner.feed(b":heartbeat\n\n"));
    assert!(!scanner.feed(b":heartbeat\r\n\r\n"));
    assert!(scanner.feed(b"message:\ndata:{\"event\":\"start\"}\n\n"));
    // An event split across chunks: each piece of it is content, its blank line alone is not.
    assert!(scanner.feed(b"message:\ndata:{\"event\":\"tok"));
    assert!(scanner.feed(b"en\",\"data\":\"x\"}"));
    assert!(!scanner.feed(b"\n\n"));
    assert!(
        scanner.feed(b":heartbeat\n\nmessage:\ndata:{}\n\n"),
        "one event among them"
    );
    // A heartbeat split across chunks stays a comment.
    assert!(!scanner.feed(b":heart"));
    assert!(!scanner.feed(b"beat\n"));
    assert!(!scanner.feed(b"\n"));
    assert!(scanner.feed(b"data"), "a line begun");
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
fn the_blank_line_after_a_skipped_event_may_straddle_two_chunks() {
    let mut scanner = SseScanner::default();
    let big = format!(
        "message:\ndata:{{\"event\":\"token\",\"data\":\"{}\"}}\n",
        "x".repeat(MAX_EVENT + 1)
    );
    scanner.feed(big.as_bytes());
    // The skipped event's blank line arrives alone, then the next event.
    scanner.feed(b"\n");
    scanner.feed(b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":4}}\n\n");
    assert_eq!(scanner.tokens(), 4);
}

#[test]
fn a_resumed_agentflow_stream_counts_only_its_own_nodes() {
    // Resuming after a Human Input node: Flowise lists the first run's nodes (charged then)
    // and the resumed node before this run's.
    let earlier = serde_json::json!({"status": "FINISHED",
        "data": {"name": "llmAgentflow", "output": {"usageMetadata": {"total_tokens": 500}}}});
    let resumed = serde_json::json!({"nodeId": "human", "status": "FINISHED",
        "data": {"name": "humanInputAgentflow", "output": {"content": "proceed"}}});
    let mine = serde_json::json!({"status": "FINISHED",
        "data": {"name": "llmAgentflow", "output": {"usageMetadata": {"total_tokens": 30}}}});
    let mut scanner = SseScanner::resuming(usage::Resume::From("human".into()));
    scanner.feed(
        flowise_event(
            "agentFlowExecutedData",
            serde_json::json!([earlier, resumed]),
        )
        .as_bytes(),
    );
    scanner.feed(flowise_event("token", "Hello".into()).as_bytes());
    scanner
        .feed(flowise_event("usageMetadata", serde_json::json!({"total_tokens": 30})).as_bytes());
    assert_eq!(
        scanner.tokens(),
        30,
        "the last LLM node's usage, before its list"
    );
    scanner.feed(
        flowise_event(
            "agentFlowExecutedData",
            serde_json::json!([earlier, resumed, mine]),
        )
        .as_bytes(),
    );
    assert_eq!(scanner.tokens(), 30);
}

#[test]
fn a_last_event_without_a_blank_line_is_read_at_the_end() {
    let mut scanner = SseScanner::default();
    scanner.feed(b"message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"total_tokens\":9}}\n");
    assert_eq!(scanner.tokens(), 0);
    scanner.finish();
    assert_eq!(scanner.tokens(), 9);
}

#[test]
fn node_lists_count_in_the_body_memory_and_one_that_does_not_fit_is_not_read() {
    use crate::proxy::buffers::Buffers;
    let buffers = Buffers::new(
        4 * MAX_EVENT,
        prometheus_client::metrics::gauge::Gauge::default(),
    );
    let list = |tokens: u64| {
        let content = "x".repeat(MAX_EVENT / 2 * 3);
        event(
            "agentFlowExecutedData",
            &format!(
                r#"[{{"data":{{"output":{{"content":"{content}","usageMetadata":{{"total_tokens":{tokens}}}}}}}}}]"#
            ),
        )
    };
    // As a connection delivers it: in pieces.
    let feed = |scanner: &mut SseScanner, stream: String| {
        for piece in stream.as_bytes().chunks(64 * 1024) {
            scanner.feed(piece);
        }
    };
    let mut scanner = SseScanner::resuming(usage::Resume::New).counting_in(buffers.hold());
    feed(&mut scanner, list(7));
    assert_eq!(
        scanner.tokens(),
        7,
        "a list past MAX_EVENT that fits is read"
    );
    assert!(buffers.in_use() > 0, "and counts while it is kept");

    // The budget taken by other requests: the next list is not read, the last one read counts.
    let mut others = buffers.hold();
    others
        .try_grow(4 * MAX_EVENT - buffers.in_use())
        .expect("the rest of the budget");
    assert!(!scanner.usage.list_unread(), "every list so far was read");
    feed(&mut scanner, list(9));
    assert_eq!(scanner.tokens(), 7);
    assert!(
        scanner.usage.list_unread(),
        "its nodes' tokens are unknown: the run is charged at least its hold"
    );
    assert!(buffers.in_use() <= 4 * MAX_EVENT, "{}", buffers.in_use());

    // Events of the usual size are read all the same, also split across chunks.
    let usage = event("usageMetadata", r#"{"total_tokens":5}"#);
    let (head, tail) = usage.split_at(usage.len() / 2);
    scanner.feed(head.as_bytes());
    scanner.feed(tail.as_bytes());
    assert_eq!(scanner.tokens(), 12, "the report after the last list read");

    // Room again: the next list is read.
    drop(others);
    feed(&mut scanner, list(11));
    assert_eq!(scanner.tokens(), 11);
    assert!(
        !scanner.usage.list_unread(),
        "a later list read lists every node again"
    );
    drop(scanner);
    assert_eq!(buffers.in_use(), 0, "let go with the stream");
}

#[test]
fn an_agents_message_before_a_failure_is_answered_and_a_routing_supervisor_is_not() {
    let error = event("error", r#""Error: the next agent failed""#);
    let supervisor = r#"{"agentName":"Supervisor","messages":[],"next":"Writer","instructions":"Write it.","state":{}}"#;
    let writer = r#"{"agentName":"Writer","messages":["Here is the \"draft\"."],"next":"Supervisor","usedTools":[],"state":{}}"#;
    for (stream, answered) in [
        // A worker's text reached the caller, then the next agent failed.
        (
            event("agentReasoning", &format!("[{supervisor}]"))
                + &event("nextAgent", r#""Writer""#)
                + &event("agentReasoning", &format!("[{supervisor},{writer}]"))
                + &error,
            true,
        ),
        // Only the supervisor routed (no message of its own), or the messages were empty.
        (
            event("agentReasoning", &format!("[{supervisor}]")) + &error,
            false,
        ),
        (
            event(
                "agentReasoning",
                r#"[{"agentName":"A","messages":[""]},{"agentName":"B","messages":null},{"agentName":"C"}]"#,
            ) + &error,
            false,
        ),
        // Not an array of agents: nothing read from it.
        (event("agentReasoning", r#""thinking""#) + &error, false),
    ] {
        for chunk in [1, 7, stream.len()] {
            let scanner = fed(SseScanner::default(), &stream, chunk);
            assert!(scanner.failed());
            assert_eq!(scanner.answered(), answered, "{stream}");
            assert!(!scanner.answering(), "no token");
        }
    }
    // Too large to read: an agents' reasoning that large carries their messages.
    let big = format!(
        r#"[{{"agentName":"Writer","messages":["{}"]}}]"#,
        "x".repeat(MAX_EVENT + 4096)
    );
    let stream = event("agentReasoning", &big) + &error;
    for chunk in [1024, stream.len()] {
        let scanner = fed(SseScanner::uncounted(), &stream, chunk);
        assert!(scanner.answered(), "chunk {chunk}");
    }
}

#[test]
fn empty_tokens_before_a_failure_are_no_answer() {
    // An Agentflow LLM node's role-only first chunk and a tool call's chunks, then the model's
    // error: the caller got nothing.
    let failed = [
        event("token", r#""""#),
        event("token", r#""""#),
        event("error", r#""overloaded_error""#),
        event("end", r#""[DONE]""#),
    ]
    .concat();
    for chunk in [1, 5, failed.len()] {
        let scanner = fed(SseScanner::default(), &failed, chunk);
        assert!(!scanner.answering(), "chunk {chunk}");
        assert!(!scanner.answered() && scanner.failed(), "chunk {chunk}");
    }
    let answering = [event("token", r#""""#), event("token", r#""Hi""#)].concat();
    assert!(fed(SseScanner::default(), &answering, 3).answering());
}

#[test]
fn a_cut_is_ended_by_as_many_newlines_as_the_event_read_needs() {
    let whole = event("token", r#""Hi""#);
    let cases = [
        (whole.clone(), ""),
        (format!("{whole}message:\ndata:{{\"ev"), "\n\n"),
        (format!("{whole}message:\ndata:{{}}\n"), "\n"),
        (format!("{whole}message:\r"), "\n\n"),
    ];
    for (stream, want) in cases {
        for chunk in [1, 4, stream.len()] {
            let scanner = fed(SseScanner::uncounted(), &stream, chunk);
            assert_eq!(
                scanner.unfinished_event_end(),
                want,
                "{stream:?} by {chunk}"
            );
        }
    }
    // Inside an event too large to read, too.
    let mut scanner = SseScanner::default();
    let big = format!(
        "data:{{\"event\":\"token\",\"data\":\"{}",
        "x".repeat(MAX_EVENT + 1)
    );
    scanner.feed(big.as_bytes());
    assert_eq!(scanner.unfinished_event_end(), "\n\n");
}

#[test]
fn a_token_or_an_error_too_large_to_read_still_counts_as_one() {
    let huge = format!("\"{}\"", "x".repeat(MAX_EVENT + 1));
    for chunk in [1000, MAX_EVENT * 2] {
        let token = fed(SseScanner::default(), &event("token", &huge), chunk);
        assert!(
            token.answering(),
            "a Direct Reply's whole text: chunk {chunk}"
        );
        let error = [event("error", &huge), event("end", r#""[DONE]""#)].concat();
        let failed = fed(SseScanner::default(), &error, chunk);
        assert!(failed.failed() && !failed.answered(), "chunk {chunk}");
    }
}

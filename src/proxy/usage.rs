//! Token usage as Flowise reports it, for settling a charge.
//!
//! An Agentflow lists the nodes it ran in `agentFlowExecutedData`, each with the
//! `usageMetadata` of its model call, if any: in a JSON answer, and in a stream after every
//! node. A run resumed from a stopped node (a Human Input node, or an Agent waiting for a tool's
//! approval; the request carries `humanInput`) lists the nodes of the run it resumes first (they
//! were charged then), then the resumed node, then its own: only the nodes after the resumed
//! node count ([`Resume`]). Lists are read with borrowed raw values, so a large list (every
//! node's inputs and outputs) costs a scan, not a tree of allocations.

use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Which run a prediction continues, read from its `humanInput`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Resume {
    /// A new run: every node listed is its own.
    #[default]
    New,
    /// Resumes the stopped node `startNodeId`: the nodes from its first entry that did not stop
    /// on count.
    From(String),
    /// Resumes without naming the node (Flowise takes the last stopped one): only the nodes from
    /// the last Human Input node that did not stop count. (An Agent's tool approval resumed this
    /// way is charged for the whole list.)
    Unnamed,
}

impl Resume {
    /// From a Flowise prediction body. Flowise resumes on any `humanInput` JavaScript holds true.
    pub fn of(body: &serde_json::Map<String, serde_json::Value>) -> Self {
        use serde_json::Value;
        match body.get("humanInput") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Self::New,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Self::New,
            Some(Value::String(s)) if s.is_empty() => Self::New,
            Some(input) => Self::named(input.get("startNodeId").and_then(Value::as_str)),
        }
    }

    /// From a multipart prediction: Flowise reads `humanInput[startNodeId]`-style fields into an
    /// object (and a plain `humanInput` field as a string).
    pub fn of_form(form: &super::multipart::Form) -> Self {
        let resumes = form.parts.iter().any(|p| {
            p.file_name.is_none() && p.name.starts_with("humanInput") && !p.data.is_empty()
        });
        if !resumes {
            return Self::New;
        }
        Self::named(form.text("humanInput[startNodeId]"))
    }

    fn named(start: Option<&str>) -> Self {
        match start.filter(|s| !s.is_empty()) {
            Some(node) => Self::From(node.to_string()),
            None => Self::Unnamed,
        }
    }
}

/// Tokens reported in a non-streaming Flowise answer: the Agentflow's nodes, else a top-level
/// `usageMetadata`. Anything unreadable counts nothing.
pub fn json_answer_tokens(answer: &[u8], resume: &Resume) -> u64 {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(default, borrow, rename = "agentFlowExecutedData")]
        nodes: Option<&'a RawValue>,
        #[serde(default, rename = "usageMetadata")]
        usage: Option<serde_json::Value>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer<'_>>(answer) else {
        return 0;
    };
    let from_nodes = answer
        .nodes
        .map_or(0, |n| node_list_tokens(n.get(), resume));
    if from_nodes > 0 {
        from_nodes
    } else {
        answer.usage.as_ref().map_or(0, usage_tokens)
    }
}

/// Tokens of this run's nodes in an `agentFlowExecutedData` node list (a JSON array).
pub fn node_list_tokens(list: &str, resume: &Resume) -> u64 {
    let Ok(nodes) = serde_json::from_str::<Vec<&RawValue>>(list) else {
        return 0;
    };
    let nodes: Vec<Node<'_>> = nodes
        .into_iter()
        .filter_map(|node| serde_json::from_str(node.get()).ok())
        .collect();
    // The resumed node starts this run's nodes (its own work counts: an Agent resumed after a
    // tool's approval calls its model again); what came before was charged then. Flowise drops
    // the resumed node's earlier entries, so its first entry that did not stop is the resumed
    // one; a later one is the same node run again in a loop, in this run. No such entry: the
    // whole list counts.
    let start = match resume {
        Resume::New => None,
        Resume::From(id) => nodes.iter().position(|n| n.is(id) && !n.stopped()),
        Resume::Unnamed => nodes.iter().rposition(Node::resumed_human_input),
    };
    nodes[start.unwrap_or(0)..]
        .iter()
        .map(Node::tokens)
        .fold(0, u64::saturating_add)
}

/// One executed node: `{nodeId, nodeLabel, status, data: {name, output: {usageMetadata}}}`.
#[derive(Deserialize)]
struct Node<'a> {
    #[serde(default, borrow, rename = "nodeId")]
    node_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    status: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NodeData<'a> {
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NodeOutput {
    #[serde(default, rename = "usageMetadata")]
    usage: Option<serde_json::Value>,
}

impl Node<'_> {
    fn data(&self) -> Option<NodeData<'_>> {
        serde_json::from_str(self.data?.get()).ok()
    }

    /// Whether this is node `id`.
    fn is(&self, id: &str) -> bool {
        self.node_id
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .is_some_and(|node| node == id)
    }

    /// Whether the node stopped the run (waiting for a human).
    fn stopped(&self) -> bool {
        self.status.is_some_and(|s| s.get() == "\"STOPPED\"")
    }

    /// A Human Input node that did not stop the run: the one a resumed run resumed.
    fn resumed_human_input(&self) -> bool {
        let human = self
            .data()
            .and_then(|d| d.name)
            .is_some_and(|n| n.get() == "\"humanInputAgentflow\"");
        human && !self.stopped()
    }

    fn tokens(&self) -> u64 {
        self.data()
            .and_then(|d| d.output)
            .and_then(|o| serde_json::from_str::<NodeOutput>(o.get()).ok())
            .and_then(|o| o.usage)
            .map_or(0, |u| usage_tokens(&u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llm(tokens: u64) -> serde_json::Value {
        json!({"nodeId": "llm", "status": "FINISHED",
               "data": {"name": "llmAgentflow", "output": {"content": "x", "usageMetadata": {"total_tokens": tokens}}}})
    }

    fn human_input(status: &str) -> serde_json::Value {
        json!({"nodeId": "human", "status": status,
               "data": {"name": "humanInputAgentflow", "output": {"content": "proceed?"}}})
    }

    #[test]
    fn json_answers_report_agentflow_usage() {
        let answer = json!({"text": "x", "agentFlowExecutedData": [
            {"data": {"output": {"usageMetadata": {"total_tokens": 100}}}},
            {"data": {"output": {"content": "no usage"}}},
            {"data": {"output": {"usageMetadata": {"input_tokens": 10, "output_tokens": 5}}}}
        ]});
        assert_eq!(
            json_answer_tokens(answer.to_string().as_bytes(), &Resume::New),
            115
        );
        assert_eq!(json_answer_tokens(br#"{"text": "x"}"#, &Resume::New), 0);
        let top = json!({"text": "x", "usageMetadata": {"total_tokens": 9}});
        assert_eq!(
            json_answer_tokens(top.to_string().as_bytes(), &Resume::New),
            9
        );
        assert_eq!(json_answer_tokens(b"not json", &Resume::New), 0);
        // Counts from Flowise are outside input: they saturate instead of overflowing.
        let max = u64::MAX;
        let huge = json!({"agentFlowExecutedData": [
            {"data": {"output": {"usageMetadata": {"input_tokens": max, "output_tokens": max}}}},
            {"data": {"output": {"usageMetadata": {"total_tokens": max}}}}
        ]});
        assert_eq!(
            json_answer_tokens(huge.to_string().as_bytes(), &Resume::New),
            u64::MAX
        );
    }

    #[test]
    fn a_malformed_node_counts_nothing_and_spoils_nothing_else() {
        let list = json!([
            llm(10),
            "not a node",
            {"data": "not an object"},
            {"data": {"output": ["not", "an", "object"]}},
            {"data": {"output": {"usageMetadata": "not an object"}}},
            {"status": 7, "data": {"name": 3, "output": {"usageMetadata": {"total_tokens": 5}}}},
            llm(20)
        ]);
        assert_eq!(node_list_tokens(&list.to_string(), &Resume::New), 35);
        assert_eq!(node_list_tokens("{\"not\": \"a list\"}", &Resume::New), 0);
    }

    #[test]
    fn a_resumed_run_counts_only_the_nodes_after_the_node_it_resumed() {
        let human = Resume::From("human".into());
        // First run: LLM, then Human Input stops it. All of it is charged.
        let first = json!([llm(300), human_input("STOPPED")]);
        assert_eq!(node_list_tokens(&first.to_string(), &Resume::New), 300);
        // Resumed: the first run's nodes, the resumed Human Input, then this run's nodes.
        let resumed = json!([llm(300), human_input("FINISHED"), llm(40)]);
        assert_eq!(node_list_tokens(&resumed.to_string(), &human), 40);
        assert_eq!(node_list_tokens(&resumed.to_string(), &Resume::Unnamed), 40);
        // An Agent that stopped for a tool's approval resumes the same way.
        let agent = json!({"nodeId": "agent", "status": "FINISHED",
            "data": {"name": "agentAgentflow", "output": {"usageMetadata": {"total_tokens": 7}}}});
        let approved = json!([llm(300), agent, llm(2)]);
        assert_eq!(
            node_list_tokens(&approved.to_string(), &Resume::From("agent".into())),
            9,
            "the resumed agent's own call counts"
        );
        // A new run never skips: a Human Input node inside an iteration may read as finished.
        assert_eq!(node_list_tokens(&resumed.to_string(), &Resume::New), 340);
        // A loop back to the resumed node in this run: it stops again, and what ran in between
        // is this run's.
        let looped = json!([
            llm(300),
            human_input("FINISHED"),
            llm(40),
            human_input("STOPPED")
        ]);
        assert_eq!(node_list_tokens(&looped.to_string(), &human), 40);
        // The resumed node failed: its earlier stop is still listed before the failure.
        let failed = json!([llm(300), human_input("STOPPED"), {"nodeId": "human", "status": "ERROR", "data": {"error": "x"}}]);
        assert_eq!(node_list_tokens(&failed.to_string(), &human), 0);
        // No entry of the named node: the whole list counts.
        assert_eq!(
            node_list_tokens(&resumed.to_string(), &Resume::From("other".into())),
            340
        );
        // Ids are compared as JSON strings, escapes read.
        let quoted =
            json!([llm(300), {"nodeId": "h\"1", "status": "FINISHED", "data": {}}, llm(5)]);
        assert_eq!(
            node_list_tokens(&quoted.to_string(), &Resume::From("h\"1".into())),
            5
        );
    }

    #[test]
    fn the_resume_is_read_from_the_request() {
        let body = |v: serde_json::Value| v.as_object().cloned().expect("object");
        assert_eq!(Resume::of(&body(json!({"question": "hi"}))), Resume::New);
        assert_eq!(Resume::of(&body(json!({"humanInput": null}))), Resume::New);
        assert_eq!(
            Resume::of(&body(
                json!({"humanInput": {"type": "proceed", "startNodeId": "h1"}})
            )),
            Resume::From("h1".into())
        );
        assert_eq!(
            Resume::of(&body(json!({"humanInput": {"type": "proceed"}}))),
            Resume::Unnamed
        );
        assert_eq!(
            Resume::of(&body(
                json!({"humanInput": {"type": "proceed", "startNodeId": ""}})
            )),
            Resume::Unnamed
        );
        let form = |fields: &[(&str, &str)]| super::super::multipart::Form {
            parts: fields
                .iter()
                .map(|(name, value)| super::super::multipart::Part {
                    name: (*name).into(),
                    file_name: None,
                    content_type: None,
                    data: bytes::Bytes::from(value.to_string()),
                })
                .collect(),
        };
        assert_eq!(Resume::of_form(&form(&[("question", "hi")])), Resume::New);
        assert_eq!(
            Resume::of_form(&form(&[
                ("humanInput[type]", "proceed"),
                ("humanInput[startNodeId]", "h1")
            ])),
            Resume::From("h1".into())
        );
        assert_eq!(
            Resume::of_form(&form(&[("humanInput", "{\"type\":\"proceed\"}")])),
            Resume::Unnamed
        );
        // What JavaScript holds false is a new run to Flowise.
        for falsy in [json!(false), json!(0), json!(""), json!(0.0)] {
            assert_eq!(
                Resume::of(&body(json!({"humanInput": falsy}))),
                Resume::New,
                "{falsy}"
            );
        }
    }
}

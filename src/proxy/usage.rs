//! Token usage as Flowise reports it, for settling a charge.
//!
//! An Agentflow lists the nodes it ran in `agentFlowExecutedData`, each with the
//! `usageMetadata` of its model call, if any: in a JSON answer, and in a stream after every
//! node. A run resumed after a Human Input node lists the nodes of the run it resumes first (they
//! were charged then), then the resumed Human Input node, then its own: only the nodes after the
//! last resumed Human Input node count. Lists are read with borrowed raw values, so a large list
//! (every node's inputs and outputs) costs a scan, not a tree of allocations.

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

/// Tokens reported in a non-streaming Flowise answer: the Agentflow's nodes, else a top-level
/// `usageMetadata`. Anything unreadable counts nothing.
pub fn json_answer_tokens(answer: &[u8]) -> u64 {
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
    let from_nodes = answer.nodes.map_or(0, |n| node_list_tokens(n.get()));
    if from_nodes > 0 {
        from_nodes
    } else {
        answer.usage.as_ref().map_or(0, usage_tokens)
    }
}

/// Tokens of this run's nodes in an `agentFlowExecutedData` node list (a JSON array).
pub fn node_list_tokens(list: &str) -> u64 {
    let Ok(nodes) = serde_json::from_str::<Vec<&RawValue>>(list) else {
        return 0;
    };
    nodes
        .into_iter()
        .filter_map(|node| serde_json::from_str::<Node<'_>>(node.get()).ok())
        .fold(0, |total, node| {
            if node.resumed_human_input() {
                0
            } else {
                total.saturating_add(node.tokens())
            }
        })
}

/// One executed node: `{nodeId, nodeLabel, status, data: {name, output: {usageMetadata}}}`.
#[derive(Deserialize)]
struct Node<'a> {
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

    /// A Human Input node that did not stop the run: the one a resumed run resumed.
    fn resumed_human_input(&self) -> bool {
        let human = self
            .data()
            .and_then(|d| d.name)
            .is_some_and(|n| n.get() == "\"humanInputAgentflow\"");
        human && self.status.is_none_or(|s| s.get() != "\"STOPPED\"")
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

    fn human(status: &str) -> serde_json::Value {
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
        assert_eq!(json_answer_tokens(answer.to_string().as_bytes()), 115);
        assert_eq!(json_answer_tokens(br#"{"text": "x"}"#), 0);
        let top = json!({"text": "x", "usageMetadata": {"total_tokens": 9}});
        assert_eq!(json_answer_tokens(top.to_string().as_bytes()), 9);
        assert_eq!(json_answer_tokens(b"not json"), 0);
        // Counts from Flowise are outside input: they saturate instead of overflowing.
        let max = u64::MAX;
        let huge = json!({"agentFlowExecutedData": [
            {"data": {"output": {"usageMetadata": {"input_tokens": max, "output_tokens": max}}}},
            {"data": {"output": {"usageMetadata": {"total_tokens": max}}}}
        ]});
        assert_eq!(json_answer_tokens(huge.to_string().as_bytes()), u64::MAX);
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
        assert_eq!(node_list_tokens(&list.to_string()), 35);
        assert_eq!(node_list_tokens("{\"not\": \"a list\"}"), 0);
    }

    #[test]
    fn a_resumed_run_counts_only_the_nodes_after_the_human_input_it_resumed() {
        // First run: LLM, then Human Input stops it. All of it is charged.
        let first = json!([llm(300), human("STOPPED")]);
        assert_eq!(node_list_tokens(&first.to_string()), 300);
        // Resumed: the first run's nodes, the resumed Human Input, then this run's nodes.
        let resumed = json!([llm(300), human("FINISHED"), llm(40), human("STOPPED")]);
        assert_eq!(node_list_tokens(&resumed.to_string()), 40);
        // Resumed again: only what follows the last resumed Human Input.
        let again = json!([
            llm(300),
            human("FINISHED"),
            llm(40),
            human("FINISHED"),
            llm(2)
        ]);
        assert_eq!(node_list_tokens(&again.to_string()), 2);
    }
}

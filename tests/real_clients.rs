//! The official Flowise clients, unchanged, against an in-process flowgate with a user token in
//! front of the real Flowise: the npm `flowise-sdk` (1.0.9) and the PyPI `flowise` client
//! (1.0.4), installed by `scripts/clients.sh setup`, run as subprocesses for a JSON and a
//! streaming prediction. Both first ask `GET /api/v1/chatflows-streaming/{id}` without
//! credentials, which Flowise answers.

mod support;

use std::process::Command;
use std::time::Duration;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, eventually_status};
use support::team::Team;

const NODE: &str = r#"
const { FlowiseClient } = require('flowise-sdk');
const client = new FlowiseClient({ baseUrl: process.env.BASE, apiKey: process.env.TOKEN });
(async () => {
  const streaming = process.env.STREAM === '1';
  const answer = await client.createPrediction({ chatflowId: process.env.ID, question: 'hello sdk', streaming });
  // The SDK streams only where flowgate (as Flowise) says the chatflow can.
  if (streaming && answer && typeof answer[Symbol.asyncIterator] === 'function') {
    for await (const event of answer) console.log(JSON.stringify(event));
  } else {
    console.log(JSON.stringify(answer));
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

const PYTHON: &str = r#"
import json, os
from flowise import Flowise, PredictionData
client = Flowise(base_url=os.environ["BASE"], api_key=os.environ["TOKEN"])
streaming = os.environ["STREAM"] == "1"
for event in client.create_prediction(PredictionData(chatflowId=os.environ["ID"], question="hello sdk", streaming=streaming)):
    print(event if isinstance(event, str) else json.dumps(event))
"#;

fn clients() -> (String, String) {
    let cache = std::env::var("FLOWGATE_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/flowgate",
            std::env::var("HOME").expect("HOME set")
        )
    });
    let node_dir = format!("{cache}/clients/node");
    let python = format!("{cache}/clients/python/venv/bin/python");
    assert!(
        std::path::Path::new(&format!("{node_dir}/node_modules/flowise-sdk")).exists()
            && std::path::Path::new(&python).exists(),
        "the official clients are not installed: run scripts/clients.sh setup (scripts/test.sh does)"
    );
    (node_dir, python)
}

/// Runs one client; returns its stdout (panics with stderr on failure).
async fn run(client: &str, base: &str, token: &str, id: &str, stream: bool) -> String {
    let (node_dir, python) = clients();
    let mut command = if client == "node" {
        let mut c = Command::new("node");
        c.args(["-e", NODE]).current_dir(&node_dir);
        c
    } else {
        let mut c = Command::new(&python);
        c.args(["-c", PYTHON]);
        c
    };
    command
        .env("BASE", base)
        .env("TOKEN", token)
        .env("ID", id)
        .env("STREAM", if stream { "1" } else { "0" });
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("client finished within 30 s")
    .expect("join")
    .expect("client runs");
    assert!(
        out.status.success(),
        "{client} (stream {stream}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_official_sdks_predict_and_stream_through_flowgate() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let team = Team::new("real-clients").await;
        let gate = Flowgate::start().await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually_status(&gate, &alice, &id, 200).await;
        // A chatflow Flowise cannot stream, which the real one here does not have: the fake
        // answers `chatflows-streaming` with false.
        let fake_team = Team::with_fake_flowise("real-clients-json").await;
        let answering = FakeFlowise::start(Mode::Answer { tokens: 2 }).await;
        let json_gate = Flowgate::with_flowise(&answering.url).await;
        let (json_id, json_alice) = (fake_team.flowise_id.clone(), fake_team.alice());
        eventually_status(&json_gate, &json_alice, &json_id, 200).await;
        for client in ["node", "python"] {
            let answer = run(client, &gate.base, &alice, &id, false).await;
            assert!(answer.contains("Echo: hello sdk"), "{client}: {answer}");
            let events = run(client, &gate.base, &alice, &id, true).await;
            assert!(
                events.contains("Echo: hello sdk") && events.contains("[DONE]"),
                "{client} streaming: {events}"
            );
            // Asked to stream a chatflow Flowise cannot stream: the client learns so from
            // Flowise's `chatflows-streaming` and reads the JSON answer.
            let answer = run(client, &json_gate.base, &json_alice, &json_id, true).await;
            assert!(answer.contains("Echo: hello sdk"), "{client}: {answer}");
        }
        team.cleanup().await;
        fake_team.cleanup().await;
    })
    .await
    .expect("bounded to 120 s");
}

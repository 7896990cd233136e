//! Predictions with file uploads (`multipart/form-data`) through flowgate to the real Flowise.

mod support;

use serde_json::{Value, json};

use support::gate::{Flowgate, eventually_status};
use support::team::Team;

/// POSTs `body` as a prediction of `id` with `content_type`; the status and the JSON answer.
async fn post(
    gate: &Flowgate,
    bearer: &str,
    id: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(bearer)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn multipart_predictions_with_files_are_forwarded_and_their_session_is_bound() {
    let team = Team::new("proxy-multipart").await;
    let gate = Flowgate::start().await;
    let id = team.flowise_id.clone();
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let boundary = "test-boundary-7f3a";
    let victim = "fg-0000000000000000-someone-elses-session";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"chatId\"\r\n\r\n{victim}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\nsome notes\r\n\
         --{boundary}--\r\n"
    );
    let (alice, form) = (
        team.alice(),
        format!("multipart/form-data; boundary={boundary}"),
    );
    let (status, answer) = post(&gate, &alice, &id, &form, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "Echo: hello", "{answer}");
    assert_ne!(
        answer["chatId"].as_str(),
        Some(victim),
        "the client's session id never reaches Flowise as-is"
    );

    let text_only = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nhi\r\n--{boundary}--\r\n"
    );
    // Media types are case-insensitive (RFC 9110 §8.3.1).
    let shouting = format!("Multipart/Form-Data; boundary={boundary}");
    let (_, answer) = post(&gate, &alice, &id, &shouting, text_only).await;
    assert_eq!(answer["text"], "Echo: hi");
    assert!(
        answer["chatId"]
            .as_str()
            .is_some_and(|c| c.starts_with("fg-")),
        "{answer}"
    );

    let loud = json!({"question": "loud"}).to_string();
    let (status, _) = post(&gate, &alice, &id, "Application/JSON; charset=UTF-8", loud).await;
    assert_eq!(status, 200);

    let broken = "not multipart at all".to_string();
    let (status, _) = post(
        &gate,
        &alice,
        &id,
        "multipart/form-data; boundary=nope",
        broken,
    )
    .await;
    assert_eq!(status, 400);

    // What Flowise's form parser would answer 500 for, or read otherwise than asked, is 400
    // here, before anything is charged or sent.
    let refused = |body: String| {
        let (gate, alice, id, form) = (&gate, &alice, &id, &form);
        async move {
            let (status, answer) = post(gate, alice, id, form, body).await;
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            (status, message.to_string())
        }
    };
    let misnamed = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nhi\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.txt\"\r\n\r\nsome notes\r\n\
         --{boundary}--\r\n"
    );
    let (status, message) = refused(misnamed).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("under 'files' only"), "{message}");
    let streaming = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nhi\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"streaming\"\r\n\r\nyes\r\n\
         --{boundary}--\r\n"
    );
    let (status, message) = refused(streaming).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("'streaming'"), "{message}");
    team.cleanup().await;
}

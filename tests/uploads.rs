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
    body: impl Into<reqwest::Body>,
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
    let unnamed = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nhi\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"\"\r\n\r\nx\r\n\
         --{boundary}--\r\n"
    );
    let (status, message) = refused(unnamed).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("not a plain file name"), "{message}");
    // Flowise's parser takes a text field of at most 1 MiB.
    let long = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\n{}\r\n\
         --{boundary}--\r\n",
        "x".repeat(1024 * 1024 + 1)
    );
    let (status, message) = refused(long).await;
    assert_eq!(status, 413, "{message}");
    let latin1 = [
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\n")
            .into_bytes(),
        b"caf\xe9".to_vec(),
        format!("\r\n--{boundary}--\r\n").into_bytes(),
    ]
    .concat();
    let (status, answer) = post(&gate, &alice, &id, &form, latin1).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("not UTF-8"), "{answer}");

    // An Agentflow's form is an input as a question is: forwarded, Flowise answers it.
    let form_only = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"form[question]\"\r\n\r\nby form\r\n\
         --{boundary}--\r\n"
    );
    let (status, answer) = post(&gate, &alice, &id, &form, form_only).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["form"]["question"], "by form", "{answer}");

    // A text part goes to Flowise as the UTF-8 text flowgate checked, whatever type or charset
    // it was sent with: Flowise's parser would take a part typed as a file's for a file (and
    // drop it), and decode one by its charset.
    for typed in [
        "application/octet-stream",
        "text/plain; xcharset=utf-8; charset=utf-16le",
    ] {
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\
             Content-Type: {typed}\r\n\r\ntyped\r\n--{boundary}--\r\n"
        );
        let (status, answer) = post(&gate, &alice, &id, &form, body).await;
        assert_eq!(status, 200, "{typed}: {answer}");
        assert_eq!(answer["text"], "Echo: typed", "{typed}: {answer}");
    }
    team.cleanup().await;
}

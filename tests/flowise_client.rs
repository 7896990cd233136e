//! The Flowise client against the real Flowise 3.1.2 (scripts/flowise.sh): every call, the
//! quirks recorded in docs/flowise-notes.md, and which failures are transient.

mod support;

use std::time::Duration;

use flowgate::flowise::{
    ApiKey, ChatflowWrite, Deletion, FlowiseApi, FlowiseClient, FlowiseError, Timeouts,
    api_key_header,
};

fn echo(name: &str) -> ChatflowWrite {
    ChatflowWrite {
        name: Some(name.to_string()),
        flow_type: Some("AGENTFLOW".into()),
        flow_data: Some(support::echo_flow_data().to_string()),
        deployed: Some(false),
        category: Some("flowgate-test".into()),
    }
}

#[tokio::test]
async fn a_chatflow_is_created_read_listed_updated_and_deleted() {
    let flowise = support::flowise();
    let name = support::unique("fgtest-client-crud");

    let created = flowise.create(&echo(&name)).await.expect("created");
    assert_eq!(created.name, name);
    assert_eq!(created.flow_type, "AGENTFLOW");
    assert_eq!(created.deployed, Some(false));
    assert_eq!(created.category.as_deref(), Some("flowgate-test"));
    assert_eq!(created.flow_data_json(), Some(support::echo_flow_data()));
    assert!(!created.api_key_bound());
    assert!(created.created_date.is_some());

    let read = flowise
        .get(&created.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(read.id, created.id);

    let listed = flowise.list().await.expect("listed");
    assert_eq!(
        listed.iter().filter(|c| c.name == name).count(),
        1,
        "the listing holds every type, AGENTFLOW included"
    );

    let changes = ChatflowWrite {
        deployed: Some(true),
        ..Default::default()
    };
    let updated = flowise
        .update(&created.id, &changes)
        .await
        .expect("updated");
    assert_eq!(updated.deployed, Some(true));
    assert_eq!(updated.name, name, "a PUT merges: unsent fields stay");

    assert_eq!(
        flowise.delete(&created.id).await.expect("deleted"),
        Deletion::Deleted
    );
    assert_eq!(flowise.get(&created.id).await.expect("read"), None);
}

#[tokio::test]
async fn unknown_ids_are_absent_and_deleting_them_is_already_gone() {
    let flowise = support::flowise();
    let unknown = "3f1c2a7e-1111-4222-8333-444455556666";
    assert_eq!(flowise.get(unknown).await.expect("answered"), None);
    let malformed = "11111111-2222-3333-4444-555555555555";
    assert_eq!(
        flowise.get(malformed).await.expect("answered"),
        None,
        "an id Flowise calls invalid names no chatflow"
    );
    assert_eq!(
        flowise.delete(unknown).await.expect("answered"),
        Deletion::AlreadyGone,
        "Flowise's 500 'not found' on DELETE means already gone"
    );
    let error = flowise
        .update(unknown, &ChatflowWrite::default())
        .await
        .expect_err("no such chatflow");
    assert_eq!(error.reason(), "not_found");
    assert!(!error.transient());
}

#[tokio::test]
async fn a_wrong_api_key_is_a_permanent_unauthorized_error() {
    let (url, _) = support::flowise_env();
    let flowise = FlowiseClient::new(
        url.parse().expect("url"),
        Some("not-the-key".into()),
        Timeouts::default(),
    )
    .expect("client");
    let error = flowise.list().await.expect_err("refused");
    assert!(matches!(error, FlowiseError::Unauthorized(_)), "{error:?}");
    assert!(!error.transient());
}

/// The key file a Secret mounts is read again (by `flowgate run` every 10 s): a rotated key is
/// used from the next request on, and a file emptied by mistake keeps the key that works.
#[tokio::test]
async fn a_rotated_key_file_is_used_from_the_next_request_on() {
    let (url, key) = support::flowise_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api-key");
    std::fs::write(&path, "the-old-key\n").expect("write");
    let file = ApiKey::load(&path, "FLOWGATE_FLOWISE_API_KEY_FILE", api_key_header).expect("key");
    let flowise = FlowiseClient::with_api_key(
        url.parse().expect("url"),
        Some(file.clone()),
        Timeouts::default(),
    )
    .expect("client");
    let refused = flowise.list().await.expect_err("the old key is refused");
    assert!(
        matches!(refused, FlowiseError::Unauthorized(_)),
        "{refused:?}"
    );

    std::fs::write(&path, format!("{key}\n")).expect("write");
    assert!(file.reload(), "the file changed");
    flowise.list().await.expect("the rotated key is used");

    std::fs::write(&path, "").expect("write");
    assert!(!file.reload());
    flowise
        .list()
        .await
        .expect("an emptied file keeps the key in use");
}

#[tokio::test]
async fn a_base_url_that_answers_html_is_detected() {
    let (url, key) = support::flowise_env();
    // Flowise answers unknown routes with its UI's HTML and 200.
    let flowise = FlowiseClient::new(
        format!("{url}/not-flowise-api/").parse().expect("url"),
        Some(key),
        Timeouts::default(),
    )
    .expect("client");
    let error = flowise.list().await.expect_err("not the API");
    assert!(
        matches!(error, FlowiseError::NotJson { status: 200, .. }),
        "{error:?}"
    );
    assert!(
        !error.transient(),
        "a wrong URL needs a configuration change"
    );
}

#[tokio::test]
async fn a_closed_port_is_a_transient_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let flowise = FlowiseClient::new(
        format!("http://127.0.0.1:{port}").parse().expect("url"),
        None,
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        },
    )
    .expect("client");
    let error = flowise.list().await.expect_err("nothing listens");
    assert_eq!(error.reason(), "connect");
    assert!(
        error.to_string().contains("Connection refused"),
        "the message names the cause: {error}"
    );
    assert!(error.transient());
}

#[tokio::test]
async fn flow_data_without_nodes_is_rejected_with_a_server_error() {
    // The client always sends flowData as a string; Flowise rejects a string without nodes with
    // a 500 — a transient-looking status for a permanent problem, which is why the controller
    // checks flowData before it calls Flowise.
    let flowise = support::flowise();
    let name = support::unique("fgtest-client-bad");
    let mut bad = echo(&name);
    bad.flow_data = Some("{}".into());
    let error = flowise.create(&bad).await.expect_err("rejected");
    assert_eq!(error.reason(), "server_error", "{error}");
    support::delete_flowise_chatflows(&name).await;
}

/// A server answering every request with `status` and the JSON `body`; its URL.
async fn answering(status: u16, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut resp = hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(body.as_bytes()),
                    ));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    resp.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// A client (with a key) of a server answering every request with `status` and `body`.
async fn answering_client(status: u16, body: &'static str) -> FlowiseClient {
    let url = answering(status, body).await;
    FlowiseClient::new(
        url.parse().expect("url"),
        Some("key".into()),
        Timeouts::default(),
    )
    .expect("client")
}

/// What a GET's refusal means: Flowise's own "not found in the database" (a 500 before 3.0.13,
/// a 404 since) is no such chatflow; a gateway's 404, or a workspace not found, is an error.
#[tokio::test]
async fn a_chatflow_is_missing_only_when_flowise_says_so() {
    let id = "3f1c2a7e-1111-4222-8333-444455556666";
    let cases: [(u16, &'static str, Result<bool, &str>); 4] = [
        (
            500,
            r#"{"statusCode":500,"message":"Error: chatflowsService.getChatflowById - Error: Chatflow 3f1c not found in the database!"}"#,
            Ok(false),
        ),
        (
            404,
            r#"{"statusCode":404,"success":false,"message":"Chatflow 3f1c not found in the database!","stack":{}}"#,
            Ok(false),
        ),
        (
            404,
            r#"{"message":"no Route matched with those values"}"#,
            Err("not_found"),
        ),
        (
            404,
            r#"{"statusCode":404,"message":"Workspace undefined not found!"}"#,
            Err("not_found"),
        ),
    ];
    for (status, body, want) in cases {
        let client = answering_client(status, body).await;
        let found = client
            .get(id)
            .await
            .map(|found| found.is_some())
            .map_err(|e| e.reason());
        assert_eq!(found, want, "{status} {body}");
    }
}

/// What a DELETE's refusal means: only Flowise's own "not found in the database" is a chatflow
/// already gone; a key without the flow type's delete permission (Flowise 3.1.3 answers 500)
/// is refused, for good; a gateway's 404 is no answer about the chatflow.
#[tokio::test]
async fn a_delete_refused_is_gone_only_when_flowise_says_so() {
    let id = "3f1c2a7e-1111-4222-8333-444455556666";
    let cases: [(u16, &'static str, Result<Deletion, &str>); 4] = [
        (
            500,
            r#"{"statusCode":500,"message":"Error: chatflowsService.deleteChatflow - Chatflow 3f1c not found in the database!"}"#,
            Ok(Deletion::AlreadyGone),
        ),
        (
            500,
            r#"{"statusCode":500,"message":"Error: chatflowsService.deleteChatflow - You do not have permission to delete this chatflow type"}"#,
            Err("forbidden"),
        ),
        (
            404,
            r#"{"message":"no Route matched with those values"}"#,
            Err("not_found"),
        ),
        (
            404,
            r#"{"statusCode":404,"message":"Workspace undefined not found!"}"#,
            Err("not_found"),
        ),
    ];
    for (status, body, want) in cases {
        let client = answering_client(status, body).await;
        let found = client.delete(id).await.map_err(|e| e.reason());
        assert_eq!(found, want, "{status} {body}");
        if let Err(reason) = want {
            let error = client.delete(id).await.expect_err("refused");
            assert!(!error.transient(), "{reason}: retried for ever otherwise");
        }
    }
}

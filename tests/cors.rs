//! Browsers calling flowgate from another origin (`FLOWGATE_CORS_ORIGINS`): a preflight from an
//! allowed origin is answered by flowgate alone (no token, nothing sent to Flowise), every answer
//! to that origin says so — errors included — and other origins, or a flowgate without the
//! setting, get no `Access-Control-Allow-Origin`. An `OPTIONS` that is not a preflight is not a
//! route, as before.

mod support;

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

use support::fake_flowise::{FakeFlowise, Mode};
use support::gate::{Flowgate, Options, predict};
use support::header;
use support::team::Team;

const PAGE: &str = "https://chat.example.com";

async fn preflight(gate: &Flowgate, id: &str, origin: &str) -> (u16, HeaderMap) {
    let resp = reqwest::Client::new()
        .request(
            Method::OPTIONS,
            format!("{}/api/v1/prediction/{id}", gate.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("flowgate answers");
    (resp.status().as_u16(), resp.headers().clone())
}

/// A prediction sent as a page of `origin` would send it, with `bearer` if any.
async fn from_page(
    gate: &Flowgate,
    id: &str,
    origin: &str,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .header("origin", origin)
        .json(&json!({"question": "hi"}));
    if let Some(bearer) = bearer {
        req = req.bearer_auth(bearer);
    }
    req.send().await.expect("flowgate answers")
}

#[tokio::test]
async fn pages_of_allowed_origins_may_call_the_proxy_from_a_browser() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let team = Team::with_fake_flowise("cors").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let gate = Flowgate::start_with(Options {
            flowise_url: Some(fake.url.clone()),
            cors_origins: Some(format!("{PAGE}, http://localhost:5173")),
            ..Options::default()
        })
        .await;
        let (alice, id) = (team.alice(), team.flowise_id.clone());
        support::eventually(15, "the chatflow indexed", || async {
            (predict(&gate, &alice, &id, json!({"question": "hi"}))
                .await
                .0
                == 200)
                .then_some(())
        })
        .await;
        let before = fake.requests();

        // The preflight: answered without a token, never sent to Flowise.
        let (status, headers) = preflight(&gate, &id, PAGE).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "access-control-allow-origin"), Some(PAGE));
        let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST"), "{methods}");
        let allowed = header(&headers, "access-control-allow-headers").unwrap_or_default();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        assert_eq!(header(&headers, "access-control-max-age"), Some("3600"));
        assert_eq!(header(&headers, "access-control-allow-credentials"), None);
        assert_eq!(fake.requests(), before, "a preflight never reaches Flowise");
        // Another page's preflight gets no permission, and is counted apart.
        let (_, headers) = preflight(&gate, &id, "https://evil.example").await;
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
        assert_eq!(
            support::metric(
                &gate.ops,
                r#"flowgate_proxy_requests_total{route="cors_preflight_refused",status="200"}"#
            )
            .await,
            Some(1.0)
        );
        // An OPTIONS that is no preflight is answered as before.
        let resp = reqwest::Client::new()
            .request(
                Method::OPTIONS,
                format!("{}/api/v1/prediction/{id}", gate.base),
            )
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(resp.status(), 405);

        // The prediction itself, and an error a page must be able to read.
        let resp = from_page(&gate, &id, PAGE, Some(&alice)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(resp.headers(), "access-control-allow-origin"),
            Some(PAGE)
        );
        let exposed = header(resp.headers(), "access-control-expose-headers").unwrap_or_default();
        assert!(exposed.contains("x-request-id"), "{exposed}");
        assert!(header(resp.headers(), "x-request-id").is_some());
        let vary = resp
            .headers()
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        assert!(vary.contains("origin"), "{vary}");
        let resp = from_page(&gate, &id, PAGE, None).await;
        assert_eq!(resp.status(), 401);
        assert_eq!(
            header(resp.headers(), "access-control-allow-origin"),
            Some(PAGE)
        );
        // Another page's request is answered, but the browser may not let it read the answer.
        let resp = from_page(&gate, &id, "https://evil.example", Some(&alice)).await;
        assert_eq!(header(resp.headers(), "access-control-allow-origin"), None);
        assert_eq!(
            support::metric(
                &gate.ops,
                r#"flowgate_proxy_requests_total{route="cors_preflight",status="200"}"#
            )
            .await,
            Some(1.0),
            "the one allowed preflight"
        );

        // Without the setting: no CORS headers, and OPTIONS is not a route.
        let plain = Flowgate::with_flowise(&fake.url).await;
        let (status, headers) = preflight(&plain, &id, PAGE).await;
        assert_eq!(status, 405);
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

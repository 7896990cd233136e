//! Creates whose outcome is unknown. Flowise picks a chatflow's id itself, so a create cannot be
//! made idempotent: one that timed out, or whose connection was cut, may still be committed after
//! the controller's next listing found nothing, and a second create then makes a duplicate (two
//! chatflows carrying one Chatflow's marker: a Conflict until someone deletes one by hand).
//! [`CreatesInDoubt`] refuses to send a chatflow's create again until the first has had time to
//! land; the listing in between finds it by its marker if it did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{ChatflowWrite, Deletion, FlowiseApi, FlowiseChatflow, FlowiseError};

/// [`FlowiseApi`] with creates held back while an earlier create of the same chatflow (the same
/// category, which is flowgate's marker) may still land.
pub struct CreatesInDoubt {
    inner: Arc<dyn FlowiseApi>,
    /// How long after an unanswered create it may still land: twice the request timeout.
    window: Duration,
    /// When each create not known to have failed was sent, by [`key`]. A create's entry is
    /// written before it is sent and removed once its outcome is known, so that one abandoned
    /// midway (the Lease lost, the reconcile cancelled) counts as unanswered too.
    sent: Mutex<HashMap<String, Instant>>,
}

/// The marker alone: a definition renamed meanwhile is the same chatflow.
fn key(chatflow: &ChatflowWrite) -> String {
    chatflow
        .category
        .as_deref()
        .or(chatflow.name.as_deref())
        .unwrap_or_default()
        .to_string()
}

impl CreatesInDoubt {
    pub fn new(inner: Arc<dyn FlowiseApi>, window: Duration) -> Self {
        Self {
            inner,
            window,
            sent: Mutex::default(),
        }
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `key` as being sent now, unless a create of it is still in doubt.
    fn begin(&self, key: &str) -> Result<(), FlowiseError> {
        let now = Instant::now();
        let mut sent = self.sent();
        sent.retain(|_, at| now.duration_since(*at) < self.window);
        if let Some(at) = sent.get(key) {
            return Err(FlowiseError::CreateInDoubt {
                window: self.window,
                again_in: self.window.saturating_sub(now.duration_since(*at)),
            });
        }
        sent.insert(key.to_string(), now);
        Ok(())
    }
}

impl FlowiseApi for CreatesInDoubt {
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
        self.inner.list()
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
        self.inner.get(id)
    }

    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        async move {
            let key = key(chatflow);
            self.begin(&key)?;
            let result = self.inner.create(chatflow).await;
            match &result {
                Err(error) if error.outcome_unknown() => {}
                _ => {
                    self.sent().remove(&key);
                }
            }
            result
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        self.inner.update(id, changes)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
        self.inner.delete(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowise::fake::FakeFlowise;
    use std::sync::atomic::Ordering;

    const WINDOW: Duration = Duration::from_secs(60);

    fn body(marker: &str) -> ChatflowWrite {
        ChatflowWrite {
            name: Some("support-bot".into()),
            flow_type: Some("AGENTFLOW".into()),
            flow_data: Some(r#"{"nodes":[],"edges":[]}"#.into()),
            deployed: Some(false),
            category: Some(marker.into()),
        }
    }

    fn doubting() -> (Arc<FakeFlowise>, CreatesInDoubt) {
        let fake = Arc::new(FakeFlowise::default());
        (fake.clone(), CreatesInDoubt::new(fake, WINDOW))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_create_is_not_sent_again_until_it_had_time_to_land() {
        let (fake, flowise) = doubting();
        let create = body("flowgate:team-a/support-bot");
        fake.set_late(true);
        let first = flowise.create(&create).await.expect_err("timed out");
        assert!(matches!(first, FlowiseError::Timeout(_)), "{first}");
        fake.set_late(false);
        tokio::time::advance(Duration::from_secs(20)).await;
        let again = flowise.create(&create).await.expect_err("held back");
        assert!(
            matches!(again, FlowiseError::CreateInDoubt { again_in, .. } if again_in == Duration::from_secs(40)),
            "{again}"
        );
        assert!(again.transient());
        // The same message a moment later (it goes into status), and for a renamed definition.
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut renamed = create.clone();
        renamed.name = Some("support-bot-2".into());
        let later = flowise.create(&renamed).await.expect_err("held back");
        assert_eq!(later.to_string(), again.to_string());
        // Another chatflow's create is not held back.
        flowise
            .create(&body("flowgate:team-b/support-bot"))
            .await
            .expect("created");
        assert_eq!(fake.creates.load(Ordering::SeqCst), 2);
        // The first landed late, where the next listing finds it by its marker.
        fake.land();
        assert_eq!(fake.all().len(), 2);
        // Past the window, a create nothing has found is sent again.
        tokio::time::advance(Duration::from_secs(39)).await;
        flowise.create(&create).await.expect("sent again");
        assert_eq!(fake.creates.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateways_503_is_in_doubt_and_a_success_is_not() {
        let (fake, flowise) = doubting();
        let create = body("flowgate:team-a/support-bot");
        fake.set_down(true);
        let unavailable = flowise.create(&create).await.expect_err("503");
        assert!(unavailable.outcome_unknown(), "{unavailable}");
        fake.set_down(false);
        let held = flowise.create(&create).await.expect_err("held back");
        assert!(matches!(held, FlowiseError::CreateInDoubt { .. }), "{held}");
        tokio::time::advance(WINDOW).await;
        flowise.create(&create).await.expect("created");
        flowise
            .create(&create)
            .await
            .expect("a success leaves no doubt");
        assert_eq!(fake.creates.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_gateways_error_page_is_an_unknown_outcome() {
        let page = FlowiseError::NotJson {
            status: 504,
            content_type: "text/html".into(),
            url: "http://flowise/api/v1/chatflows".into(),
        };
        assert!(page.outcome_unknown());
    }

    #[test]
    fn refusals_are_known_outcomes() {
        for known in [
            FlowiseError::Status {
                status: 400,
                message: "nodes is not iterable".into(),
            },
            FlowiseError::Status {
                status: 500,
                message: "TypeError".into(),
            },
            FlowiseError::Unauthorized("no".into()),
            FlowiseError::Forbidden("no".into()),
        ] {
            assert!(!known.outcome_unknown(), "{known}");
        }
    }

    /// Flowise that never answers a create.
    struct Hanging;

    impl FlowiseApi for Hanging {
        fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
            futures::future::pending().boxed()
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
            futures::future::pending().boxed()
        }
        fn create<'a>(
            &'a self,
            _: &'a ChatflowWrite,
        ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
            futures::future::pending().boxed()
        }
        fn update<'a>(
            &'a self,
            _: &'a str,
            _: &'a ChatflowWrite,
        ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
            futures::future::pending().boxed()
        }
        fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
            futures::future::pending().boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_abandoned_midway_is_in_doubt() {
        let flowise = CreatesInDoubt::new(Arc::new(Hanging), WINDOW);
        let create = body("flowgate:team-a/support-bot");
        // Sent, and dropped before any answer (the Lease lost meanwhile).
        let mut pending = flowise.create(&create);
        assert!(futures::poll!(&mut pending).is_pending());
        drop(pending);
        let held = flowise.create(&create).await.expect_err("held back");
        assert!(matches!(held, FlowiseError::CreateInDoubt { .. }), "{held}");
    }
}

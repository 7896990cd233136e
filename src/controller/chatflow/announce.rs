//! Creates recorded in status before they are sent. A create abandoned midway (the controller
//! killed, its drain cut short, its Lease lost) may still land in Flowise after another
//! controller's next listing found nothing; [`crate::flowise::CreatesInDoubt`] remembers such a
//! create only in the process that sent it. `status.createSentAt`, written before the create is
//! sent and removed once its outcome is known, tells every controller: until it is the window
//! old, the create is not sent again unless the chatflow appears.
//!
//! The field has a field manager of its own, so that the reconcile's status writes (which
//! start from the object as the cache last saw it) neither keep nor remove it.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::*;

/// The field manager of `status.createSentAt`.
const INTENT_MANAGER: &str = "flowgate-create-intent";

/// `cf` as the API server has it now.
pub(super) async fn fresh(ctx: &Context, cf: &Chatflow) -> Result<Chatflow, ControllerError> {
    let ns = cf.namespace().ok_or(ControllerError::Unnamed)?;
    let api: Api<Chatflow> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(api.get(&cf.name_any()).await?)
}

/// `ctx.flowise` for one reconcile of `cf`, with its create announced first.
pub(super) struct Announced<'a> {
    ctx: &'a Context,
    cf: &'a Chatflow,
    /// A create was sent in this reconcile.
    sent: AtomicBool,
}

impl<'a> Announced<'a> {
    pub(super) fn new(ctx: &'a Context, cf: &'a Chatflow) -> Self {
        Self {
            ctx,
            cf,
            sent: AtomicBool::new(false),
        }
    }

    /// A create announced by anyone (this reconcile or an earlier one, here or on another
    /// replica) that is still in doubt: how long until it may be sent again.
    pub(super) fn in_doubt(&self, now: jiff::Timestamp) -> Option<Duration> {
        let at = self.cf.status.as_ref()?.create_sent_at.as_ref()?.0;
        // Two seconds more: the stamp is written to the second, and this process's own record
        // of the create (`flowise::CreatesInDoubt`) is taken after the stamp's write. Ended
        // before that record, the doubt would let a create be announced that the record then
        // refuses, and the new stamp would hold the next try a whole window more.
        let window = jiff::SignedDuration::try_from(self.ctx.settings.create_window).ok()?
            + jiff::SignedDuration::from_secs(2);
        let age = now.duration_since(at);
        // A time ahead of this clock (another replica's runs ahead) counts from now; one a
        // window or more ahead is no create flowgate sent.
        if age >= window || age <= -window {
            return None;
        }
        Duration::try_from(window - age.max(jiff::SignedDuration::ZERO)).ok()
    }

    /// After the reconcile, with what came of it: a create this reconcile sent whose outcome is
    /// known, or a chatflow found, leaves nothing in doubt.
    pub(super) async fn settle(&self, outcome: &Outcome, error: Option<&FlowiseError>) {
        let sent = self.sent.load(Ordering::Relaxed);
        let found = matches!(outcome, Outcome::Synced { .. } | Outcome::Shared { .. });
        let announced = self
            .cf
            .status
            .as_ref()
            .is_some_and(|s| s.create_sent_at.is_some());
        // Not known: no answer in time, or a create this process still doubts.
        let unknown = |e: &FlowiseError| {
            e.outcome_unknown() || matches!(e, FlowiseError::CreateInDoubt { .. })
        };
        let known = found || (sent && !error.is_some_and(unknown));
        if !known || !(sent || announced) {
            return;
        }
        // Best effort: one left behind only holds a create back until the window passes. (An
        // object carrying it was read from the API server, [`fresh`]: it is not one already
        // cleared.)
        if let Err(error) = self.write(None).await {
            tracing::warn!(chatflow = %object_key(self.cf), %error, "could not clear status.createSentAt");
        }
    }

    async fn write(&self, at: Option<jiff::Timestamp>) -> Result<(), ControllerError> {
        let status = match at {
            Some(at) => serde_json::json!({"createSentAt": Time(at)}),
            // Applying nothing gives up the field: the API server removes it.
            None => serde_json::json!({}),
        };
        apply_status(self.ctx, self.cf, status, INTENT_MANAGER).await
    }
}

impl FlowiseApi for Announced<'_> {
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
        self.ctx.flowise.list()
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
        self.ctx.flowise.get(id)
    }

    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        async move {
            let now = jiff::Timestamp::now();
            if let Some(again_in) = self.in_doubt(now) {
                return Err(FlowiseError::CreateInDoubt {
                    window: self.ctx.settings.create_window,
                    again_in,
                });
            }
            self.write(Some(now))
                .await
                .map_err(|e| FlowiseError::Unannounced(e.to_string()))?;
            self.sent.store(true, Ordering::Relaxed);
            self.ctx.flowise.create(chatflow).await
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        self.ctx.flowise.update(id, changes)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
        self.ctx.flowise.delete(id)
    }
}

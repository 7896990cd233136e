//! A Chatflow's finalizer: the chatflows it owns in Flowise deleted, or kept, when it goes.

use super::*;

/// The Chatflow is being deleted: with `deletionPolicy: Delete`, delete the chatflows that carry
/// its marker. Adopted chatflows are always retained. Needs no valid spec.
pub(super) async fn cleanup(cf: &Chatflow, ctx: &Context) -> Result<Action, ControllerError> {
    let adopted = cf.spec.definition.is_none()
        && (cf.spec.flowise_id.is_some() || cf.spec.flowise_name.is_some());
    if cf.spec.deletion_policy == DeletionPolicy::Retain || adopted {
        return Ok(Action::await_change());
    }
    // An invalid spec that never reached Flowise (no id in status) has nothing there to delete:
    // its deletion must not wait for a Flowise that may be down or refuse the key.
    let never_synced = cf.status.as_ref().is_none_or(|s| s.flowise_id.is_none());
    if never_synced && validate(cf).is_err() {
        return Ok(Action::await_change());
    }
    let ns = cf
        .metadata
        .namespace
        .as_deref()
        .ok_or(ControllerError::Unnamed)?;
    let marker = marker(ns, &cf.name_any());
    // A create still in doubt may land after the listing below found nothing: the finalizer
    // stays until its window has passed, and the listing then finds (and deletes) what landed.
    let fresh = announce::fresh(ctx, cf).await?;
    if let Some(again_in) = announce::Announced::new(ctx, &fresh).in_doubt(jiff::Timestamp::now()) {
        let error = FlowiseError::CreateInDoubt {
            window: ctx.settings.create_window,
            again_in,
        };
        return Err(cleanup_failed(cf, ctx, error).await);
    }
    let listed = match ctx.flowise.list().await {
        Ok(listed) => listed,
        Err(error) => return Err(cleanup_failed(cf, ctx, error).await),
    };
    let owned: Vec<FlowiseChatflow> = listed
        .into_iter()
        .filter(|c| has_marker(c, &marker))
        .collect();
    for chatflow in owned {
        // One this Chatflow never held, another holds (adopted after this one's namesake
        // retained it; also while the holder's edited spec is not compared yet): deleting it
        // would take it, and its chat history, from under them. One this Chatflow held is
        // deleted, whoever claims it now (a claim in Conflict comes to hold it as soon as this
        // one is being deleted, which claims nothing).
        let holder = (!held_before(cf, &chatflow.id))
            .then(|| crate::controller::claims::others(&ctx.chatflows, cf, &chatflow.id))
            .into_iter()
            .flatten()
            .find_map(|other| other.keeps.then_some(other.name));
        if let Some(holder) = holder {
            let note = format!(
                "kept Flowise chatflow {} '{}': held by {holder}",
                chatflow.id, chatflow.name,
            );
            ctx.event(cf, EventType::Normal, "Kept", "Cleanup", note)
                .await;
            continue;
        }
        let deleted = match ctx.flowise.delete(&chatflow.id).await {
            Ok(deletion) => deletion,
            Err(error) => return Err(cleanup_failed(cf, ctx, error).await),
        };
        if deleted == Deletion::Deleted {
            let note = format!(
                "deleted Flowise chatflow {} '{}'",
                chatflow.id, chatflow.name
            );
            tracing::info!(chatflow = %object_key(cf), flowise_id = %chatflow.id, "deleted in Flowise");
            ctx.event(cf, EventType::Normal, "Deleted", "Cleanup", note)
                .await;
        }
    }
    Ok(Action::await_change())
}

/// Says on the Chatflow why it is not gone yet, and the way out: until Flowise answers (a key
/// revoked or without `chatflows:delete` never does) the finalizer stays, and so does the
/// Chatflow, and its namespace if that is being deleted.
async fn cleanup_failed(cf: &Chatflow, ctx: &Context, error: FlowiseError) -> ControllerError {
    let note = format!(
        "cannot delete the chatflow in Flowise: {error}; retrying. To delete the Chatflow \
         without touching Flowise, set spec.deletionPolicy: Retain"
    );
    ctx.event(cf, EventType::Warning, "CleanupFailed", "Cleanup", note)
        .await;
    error.into()
}

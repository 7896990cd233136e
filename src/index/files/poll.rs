//! The poll loop: the directory is read every second, loaded once a change has held, and
//! resolved against Flowise's listing, which is fetched beside the loop: a Flowise that does
//! not answer holds up no reload of the files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Holders, LastReadable, ResourcesDir, fingerprint, load_keeping, resolve};
use crate::flowise::{FlowiseApi, FlowiseChatflow, FlowiseError};
use crate::index::watch::SnapshotHandle;
use crate::index::{Resources, compile};
use crate::ops::Gate;

/// How soon a failed Flowise listing is tried again.
const LISTING_RETRY: Duration = Duration::from_secs(5);

/// How long a change of the files waits for the listing it starts: a Chatflow just added may
/// name a chatflow just created, but a grant taken away must not wait for a Flowise that does
/// not answer.
const LISTING_WAIT: Duration = Duration::from_secs(2);

/// Polls a due sync waits for the files to hold still before it loads them anyway.
const OVERDUE_POLLS: u32 = 5;

/// Loads, resolves and publishes the directory's resources whenever a file changes and every
/// `resync`; `ready` opens after the first publish.
pub fn spawn(
    dir: ResourcesDir,
    flowise: Arc<dyn FlowiseApi>,
    resync: Duration,
    ready: Gate,
    shutdown: CancellationToken,
) -> SnapshotHandle {
    let handle = SnapshotHandle::default();
    let publisher = handle.clone();
    tokio::spawn(async move {
        let mut seen = None;
        // The fingerprint of the poll before: a change is loaded once it has held for a poll.
        let mut previous = None;
        let mut kept = LastReadable::new();
        let mut next_sync = Instant::now() + resync;
        let mut logged: BTreeMap<String, String> = BTreeMap::new();
        let mut listing = Listing::new(flowise);
        let mut held = Holders::new();
        // Polls since a sync fell due.
        let mut overdue = 0_u32;
        // The files as last loaded, resolved again when a listing arrives.
        let mut files: Option<Resources> = None;
        // What is published is behind the files or the listing.
        let mut stale = false;
        loop {
            // The file system is read on a blocking thread: a tree of many files, or a slow
            // mount, must not hold up a runtime thread every second.
            let walked = dir.clone();
            let now_fingerprint = blocking(move || fingerprint(&walked)).await;
            let sync_due = Instant::now() >= next_sync;
            let files_changed = seen != now_fingerprint;
            // A sync waits for changes to hold, but not for ever: a file rewritten every
            // second must not stop every reload of the others.
            overdue = if sync_due { overdue + 1 } else { 0 };
            let forced = overdue > OVERDUE_POLLS;
            let due = forced || due(&seen, &previous, &now_fingerprint, sync_due);
            previous.clone_from(&now_fingerprint);
            let loaded = if due {
                // A copy: a panic while loading must not take what each file last held.
                let (walked, mut last) = (dir.clone(), kept.clone());
                let loaded = blocking(move || {
                    let loaded = load_keeping(&walked, &mut last);
                    (loaded, last, fingerprint(&walked))
                })
                .await;
                match loaded {
                    // A file changed while it was read: what was read may be half of it. Read
                    // again once the change has held for a poll.
                    Some((_, _, after)) if !forced && Some(&after) != now_fingerprint.as_ref() => {
                        previous = Some(after);
                        None
                    }
                    loaded => {
                        // Tried once per change (and sync), loaded or not.
                        overdue = 0;
                        next_sync = Instant::now() + resync;
                        seen = now_fingerprint;
                        loaded.map(|(loaded, last, _)| (loaded, last))
                    }
                }
            } else {
                None
            };
            if let Some(((resources, problems), last)) = loaded {
                kept = last;
                for problem in &problems {
                    tracing::warn!(dir = %dir.path.display(), "{problem}");
                }
                // A sync publishes when its listing arrives; a change at once.
                stale |= files_changed;
                files = Some(resources);
                // A listing already under way began before this change: what it lists may
                // predate a chatflow the change names, so Flowise is listed again after it.
                if !listing.start() && files_changed {
                    listing.again = true;
                }
                if files_changed
                    && listing.last.is_some()
                    && let Some(result) = listing.wait(LISTING_WAIT).await
                {
                    listing.arrived(result, &mut next_sync, resync);
                }
            }
            if let Some(resources) = files.as_ref().filter(|_| stale && listing.known()) {
                stale = false;
                let mut resources = resources.clone();
                let now = Timestamp::now();
                let list = match (&listing.last, &listing.failed) {
                    (Some(last), _) => Ok(last.as_slice()),
                    (None, failed) => Err(failed.clone().unwrap_or_default()),
                };
                resolve(&mut resources, list, now, &mut held);
                log_status_changes(&resources, &mut logged);
                match blocking(move || compile(&resources)).await {
                    Some(mut snapshot) => {
                        snapshot.compiled_at = Some(now);
                        publisher.publish(snapshot);
                        ready.open();
                    }
                    // A bug (logged). Fail closed, as the cluster's index does: the last
                    // snapshot may grant what the files no longer do.
                    None => {
                        publisher.publish(crate::index::Snapshot::default());
                        ready.close();
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                Some(result) = listing.results.recv() => {
                    listing.arrived(result, &mut next_sync, resync);
                    stale = true;
                }
            }
        }
    });
    handle
}

/// Flowise's chatflows, listed on a task of their own.
struct Listing {
    flowise: Arc<dyn FlowiseApi>,
    /// The last listing Flowise gave: one failed listing must not take every chatflow away.
    last: Option<Vec<FlowiseChatflow>>,
    /// Why the last listing failed, while there is no earlier one to fall back on.
    failed: Option<String>,
    /// The listing under way.
    task: Option<JoinHandle<()>>,
    /// List again once the listing under way arrives: the files changed after it began.
    again: bool,
    sender: mpsc::Sender<Result<Vec<FlowiseChatflow>, FlowiseError>>,
    results: mpsc::Receiver<Result<Vec<FlowiseChatflow>, FlowiseError>>,
}

impl Listing {
    fn new(flowise: Arc<dyn FlowiseApi>) -> Self {
        let (sender, results) = mpsc::channel(1);
        Self {
            flowise,
            last: None,
            failed: None,
            task: None,
            again: false,
            sender,
            results,
        }
    }

    /// Lists Flowise again, unless a listing is under way; whether it did.
    fn start(&mut self) -> bool {
        if self.task.is_some() {
            return false;
        }
        let (flowise, sender) = (self.flowise.clone(), self.sender.clone());
        self.task = Some(tokio::spawn(async move {
            // The receiver outlives the task (it is aborted with it).
            let _ = sender.send(flowise.list().await).await;
        }));
        true
    }

    /// The listing under way, if it arrives within `wait`.
    async fn wait(&mut self, wait: Duration) -> Option<Result<Vec<FlowiseChatflow>, FlowiseError>> {
        tokio::time::timeout(wait, self.results.recv())
            .await
            .ok()
            .flatten()
    }

    /// Takes a listing's result; a failure brings the next sync forward.
    fn arrived(
        &mut self,
        result: Result<Vec<FlowiseChatflow>, FlowiseError>,
        next_sync: &mut Instant,
        resync: Duration,
    ) {
        self.task = None;
        if std::mem::take(&mut self.again) {
            self.start();
        }
        match result {
            Ok(list) => {
                self.last = Some(list);
                self.failed = None;
            }
            Err(error) => {
                *next_sync = Instant::now() + LISTING_RETRY.min(resync);
                if self.last.is_some() {
                    tracing::warn!(%error, "cannot list Flowise's chatflows; keeping the last listing");
                } else {
                    self.failed = Some(error.to_string());
                }
            }
        }
    }

    /// Whether a listing has arrived, or failed, since the loop began.
    fn known(&self) -> bool {
        self.last.is_some() || self.failed.is_some()
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Whether to load the directory now: it changed since it was last loaded (`seen`), or a
/// sync is due, and it has stayed as it is since the poll before (`previous`): a file written
/// in place (`helm template > all.yaml`, `cp` over it, an editor that truncates first) is not
/// loaded half written, which would drop the objects of its missing part (a CreditPolicy, and
/// its predictions would be free) or the `suspended: true` or `expiresAt` that ends its last
/// object. (A write that starts after this poll is caught by the fingerprint taken after the
/// load.) The first load is not held back.
pub(super) fn due<T: PartialEq>(
    seen: &Option<T>,
    previous: &Option<T>,
    now: &Option<T>,
    sync_due: bool,
) -> bool {
    now.is_some() && (seen != now || sync_due) && (previous == now || seen.is_none())
}

/// Runs `read` on a blocking thread; `None` if that thread panicked (logged).
async fn blocking<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(read)
        .await
        .inspect_err(|error| tracing::error!(%error, "loading the resources directory failed"))
        .ok()
}

/// "Status only logged": one line per Chatflow whose Ready condition changed.
fn log_status_changes(resources: &Resources, logged: &mut BTreeMap<String, String>) {
    for cf in &resources.chatflows {
        let key = format!(
            "{}/{}",
            cf.metadata.namespace.as_deref().unwrap_or_default(),
            cf.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(cond) = cf.status.as_ref().and_then(|s| s.conditions.first()) else {
            continue;
        };
        let line = format!("{} {} {}", cond.status, cond.reason, cond.message);
        if logged.get(&key) != Some(&line) {
            let flowise_id = cf
                .status
                .as_ref()
                .and_then(|s| s.flowise_id.clone())
                .unwrap_or_default();
            tracing::info!(chatflow = %key, ready = %cond.status, reason = %cond.reason, detail = %cond.message, %flowise_id, "chatflow status");
            logged.insert(key, line);
        }
    }
}

//! How a reconcile fails ([`ControllerError`]: transient or not, when a retry is due) and when
//! a failed object is tried again ([`Backoff`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::flowise::FlowiseError;

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A call to Flowise failed.
    #[error(transparent)]
    Flowise(#[from] FlowiseError),
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ControllerError>>),
    /// The object lacks a namespace or name (never for objects from the API server).
    #[error("object without namespace or name")]
    Unnamed,
    /// A status could not be serialized (never for the plain types it holds).
    #[error("cannot serialize status: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The Lease was lost while the reconcile ran; it stopped at its next await, so nothing more
    /// reaches Flowise or the API server from this replica.
    #[error("the controller Lease was lost; the reconcile was stopped")]
    LeaseLost,
    /// The reconcile panicked (a bug in flowgate): tried again at the sync interval.
    #[error("the reconcile failed inside flowgate (panicked: {0})")]
    Panicked(String),
}

impl ControllerError {
    /// Whether retrying soon may help (see [`FlowiseError::transient`]). API server errors count as
    /// transient except when it refuses the request as invalid or forbidden.
    pub fn transient(&self) -> bool {
        match self {
            Self::Flowise(error) => error.transient(),
            Self::Kube(kube::Error::Api(status)) => !matches!(status.code, 400 | 403 | 404 | 422),
            Self::Kube(_) => true,
            Self::Finalizer(error) => match error.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.transient(),
                _ => true,
            },
            Self::Unnamed | Self::Serialize(_) | Self::Panicked(_) => false,
            Self::LeaseLost => true,
        }
    }

    /// When retrying is known to be of use: a create in doubt is not resolved before its window
    /// ends, and is at once after it (a backoff would drift past it, doubling from 1 s).
    pub fn due_in(&self) -> Option<Duration> {
        match self {
            Self::Flowise(FlowiseError::CreateInDoubt { again_in, .. }) => Some(*again_in),
            Self::Finalizer(error) => match error.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.due_in(),
                _ => None,
            },
            _ => None,
        }
    }

    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Flowise(error) => error.reason(),
            Self::Kube(_) => "kube",
            Self::Finalizer(error) => match error.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "finalizer",
            },
            Self::Unnamed => "unnamed",
            Self::Serialize(_) => "serialize",
            Self::LeaseLost => "lease_lost",
            Self::Panicked(_) => "panicked",
        }
    }

    pub(super) fn finalizer(error: kube::runtime::finalizer::Error<ControllerError>) -> Self {
        match error {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Self::Finalizer(Box::new(other)),
        }
    }
}

/// Per-object retry delays for transient errors.
#[derive(Default)]
pub(crate) struct Backoff {
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before the next attempt for `key`: 1 s doubling per failure, at most `max`.
    pub fn next(&self, key: &str, max: Duration) -> Duration {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = attempts.entry(key.to_string()).or_insert(0);
        let delay = Duration::from_secs(1u64 << (*n).min(16));
        *n = n.saturating_add(1);
        delay.min(max)
    }

    /// Forgets the failures of `key` (it reconciled).
    pub fn reset(&self, key: &str) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let backoff = Backoff::default();
        let cap = Duration::from_secs(10);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next("a", cap).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.next("b", cap).as_secs(), 1, "per object");
        backoff.reset("a");
        assert_eq!(backoff.next("a", cap).as_secs(), 1);
    }

    #[test]
    fn flowise_errors_keep_their_transience_through_the_finalizer() {
        let refused = ControllerError::Flowise(FlowiseError::Unauthorized("no".into()));
        assert!(!refused.transient());
        let wrapped = ControllerError::finalizer(kube::runtime::finalizer::Error::CleanupFailed(
            ControllerError::Flowise(FlowiseError::Timeout(Duration::from_secs(1))),
        ));
        assert!(wrapped.transient());
        assert_eq!(wrapped.reason(), "timeout");
    }
}

//! A panic while answering a request is flowgate's own bug: the caller gets a JSON 500, not a
//! reset connection, and a prediction it was forwarding is refunded, not charged as a client's
//! hang-up would be ([`super::abandon::InFlight`] asks [`unwinding`]).

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

thread_local! {
    /// Set while what a request that panicked held is being dropped.
    static UNWOUND: Cell<bool> = const { Cell::new(false) };
}

/// Whether what is being dropped on this thread belongs to a request that panicked: dropped
/// while the panic unwinds (the locals of the futures it passes through), or after it was
/// caught (the rest of the request's state).
pub(super) fn unwinding() -> bool {
    std::thread::panicking() || UNWOUND.get()
}

/// Runs `answering` to its end. A panic in it is logged and becomes `Err`; what the request
/// held is dropped before this returns, while [`unwinding`] says so.
pub(super) async fn caught<F: Future>(answering: F) -> Result<F::Output, super::ProxyError> {
    // Declared first, dropped last: the flag is cleared only once `answering` is gone.
    let mut scope = Scope(false);
    let mut answering = std::pin::pin!(answering);
    match AssertUnwindSafe(answering.as_mut()).catch_unwind().await {
        Ok(answer) => Ok(answer),
        Err(panic) => {
            tracing::error!(
                panic = crate::telemetry::panic_message(&*panic),
                "a request panicked"
            );
            scope.enter();
            Err(super::ProxyError::Internal(
                "flowgate failed while answering (its log has the request id)".into(),
            ))
        }
    }
}

struct Scope(bool);

impl Scope {
    fn enter(&mut self) {
        self.0 = true;
        UNWOUND.set(true);
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.0 {
            UNWOUND.set(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records whether it was dropped while [`unwinding`] said so.
    struct Witness(std::sync::Arc<std::sync::Mutex<Option<bool>>>);

    impl Drop for Witness {
        fn drop(&mut self) {
            *self.0.lock().expect("lock") = Some(unwinding());
        }
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error_and_what_it_held_is_dropped_as_unwound() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let witness = Witness(seen.clone());
        let answered = caught(async move {
            let _held = witness;
            tokio::task::yield_now().await;
            panic!("a bug");
        })
        .await;
        assert!(matches!(
            answered,
            Err(super::super::ProxyError::Internal(_))
        ));
        assert_eq!(
            *seen.lock().expect("lock"),
            Some(true),
            "dropped as unwound"
        );
        assert!(!unwinding(), "and the flag is cleared after");
    }

    /// A future that holds a [`Witness`] in itself, not in a local of an `async` body: a panic
    /// passing through its `poll` leaves it whole, to be dropped after the panic was caught.
    struct Holding<F> {
        _witness: Witness,
        inner: std::pin::Pin<Box<F>>,
    }

    impl<F: Future> Future for Holding<F> {
        type Output = F::Output;

        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn what_a_panic_passed_by_is_dropped_as_unwound_after_it_was_caught() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let holding = Holding {
            _witness: Witness(seen.clone()),
            inner: Box::pin(async {
                tokio::task::yield_now().await;
                panic!("a bug");
            }),
        };
        assert!(caught(holding).await.is_err());
        assert_eq!(
            *seen.lock().expect("lock"),
            Some(true),
            "dropped as unwound"
        );
        assert!(!unwinding(), "and the flag is cleared after");
    }

    #[tokio::test]
    async fn an_answer_passes_and_its_state_is_not_dropped_as_unwound() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let witness = Witness(seen.clone());
        let answered = caught(async move {
            let _held = witness;
            tokio::task::yield_now().await;
            7
        })
        .await;
        assert_eq!(answered.ok(), Some(7));
        assert_eq!(*seen.lock().expect("lock"), Some(false));
    }
}

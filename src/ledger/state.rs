//! Settle and refund as a pure transition, shared by both backends: given the reservation's
//! state and held amounts, what changes in the buckets, the reservation and the usage log.

use super::{LedgerError, ReservationId, ReservationState, saturated};

/// How a reservation is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Close {
    Settle { actual: Vec<u64>, tokens: u64 },
    Refund,
}

/// A reservation line as stored.
pub(super) struct HeldLine {
    pub idx: i32,
    pub policy: String,
    pub bucket: String,
    pub window_start: i64,
    pub amount: i64,
}

/// What a settle or refund changes, per line of the reservation (in line order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transition {
    pub state: ReservationState,
    /// Added to each bucket's `used` (negative: released).
    pub bucket_delta: Vec<i64>,
    /// What each line holds afterwards.
    pub held: Vec<i64>,
    /// `credits` of each usage row.
    pub logged: Vec<i64>,
    pub tokens: i64,
}

/// The transition from `state` with `held` amounts, or `None` when the reservation is already
/// final and the call is a no-op.
pub(super) fn close(
    id: ReservationId,
    state: ReservationState,
    held: &[i64],
    close: &Close,
) -> Result<Option<Transition>, LedgerError> {
    let actual = match close {
        Close::Settle { actual, .. } => {
            if actual.len() != held.len() {
                return Err(LedgerError::LineCount {
                    id,
                    lines: held.len(),
                    given: actual.len(),
                });
            }
            actual.iter().map(|&a| saturated(a)).collect::<Vec<_>>()
        }
        Close::Refund => vec![0; held.len()],
    };
    // What the usage log has recorded so far: nothing while reserved, the held amount once the
    // sweep logged the expiry or the reserve logged a final cost.
    let already_logged: Vec<i64> = match state {
        ReservationState::Reserved => vec![0; held.len()],
        ReservationState::Expired | ReservationState::Charged => held.to_vec(),
        ReservationState::Settled | ReservationState::Refunded | ReservationState::Adjusted => {
            return Ok(None);
        }
    };
    let (target, tokens) = match close {
        Close::Settle { tokens, .. } => (ReservationState::Settled, saturated(*tokens)),
        Close::Refund => (ReservationState::Refunded, 0),
    };
    Ok(Some(Transition {
        state: target,
        bucket_delta: actual.iter().zip(held).map(|(a, h)| a - h).collect(),
        logged: actual
            .iter()
            .zip(&already_logged)
            .map(|(a, l)| a - l)
            .collect(),
        held: actual,
        tokens,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationState::*;

    const ID: ReservationId = ReservationId(7);

    fn settle(actual: &[u64]) -> Close {
        Close::Settle {
            actual: actual.to_vec(),
            tokens: 1500,
        }
    }

    #[test]
    fn settling_a_reservation_charges_the_actual_amount() {
        let t = close(ID, Reserved, &[2, 1], &settle(&[5, 1]))
            .expect("valid")
            .expect("applies");
        assert_eq!(t.state, Settled);
        assert_eq!(t.bucket_delta, vec![3, 0]);
        assert_eq!(t.held, vec![5, 1]);
        assert_eq!(t.logged, vec![5, 1]);
        assert_eq!(t.tokens, 1500);
    }

    #[test]
    fn refunding_a_reservation_releases_it_and_logs_nothing_charged() {
        let t = close(ID, Reserved, &[2, 1], &Close::Refund)
            .expect("valid")
            .expect("applies");
        assert_eq!(t.state, Refunded);
        assert_eq!(t.bucket_delta, vec![-2, -1]);
        assert_eq!(t.held, vec![0, 0]);
        assert_eq!(t.logged, vec![0, 0]);
        assert_eq!(t.tokens, 0);
    }

    #[test]
    fn a_late_close_of_an_expired_reservation_corrects_what_the_expiry_logged() {
        let refund = close(ID, Expired, &[3], &Close::Refund)
            .expect("valid")
            .expect("applies");
        assert_eq!((refund.bucket_delta, refund.logged), (vec![-3], vec![-3]));

        let settle = close(ID, Expired, &[3], &settle(&[4]))
            .expect("valid")
            .expect("applies");
        assert_eq!(settle.state, Settled);
        assert_eq!((settle.bucket_delta, settle.logged), (vec![1], vec![1]));
    }

    #[test]
    fn a_final_cost_charge_is_undone_by_a_refund_and_corrected_by_a_settle() {
        let refund = close(ID, Charged, &[2, 1], &Close::Refund)
            .expect("valid")
            .expect("applies");
        assert_eq!(refund.state, Refunded);
        assert_eq!(refund.bucket_delta, vec![-2, -1]);
        assert_eq!(refund.logged, vec![-2, -1]);

        let settle = close(ID, Charged, &[2, 1], &settle(&[2, 3]))
            .expect("valid")
            .expect("applies");
        assert_eq!(settle.state, Settled);
        assert_eq!(
            (settle.bucket_delta, settle.logged),
            (vec![0, 2], vec![0, 2])
        );
    }

    #[test]
    fn final_states_are_not_changed_again() {
        for state in [Settled, Refunded] {
            assert_eq!(close(ID, state, &[1], &Close::Refund).expect("valid"), None);
            assert_eq!(close(ID, state, &[1], &settle(&[9])).expect("valid"), None);
        }
    }

    #[test]
    fn settle_needs_one_amount_per_line() {
        let err = close(ID, Reserved, &[1, 1], &settle(&[1])).expect_err("mismatch");
        assert!(matches!(
            err,
            LedgerError::LineCount {
                lines: 2,
                given: 1,
                ..
            }
        ));
    }
}

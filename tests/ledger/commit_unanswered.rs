//! PostgreSQL only: a batch's COMMIT whose answer never comes back. A relay between the ledger
//! and PostgreSQL reads the client's messages and, armed, breaks the connection at the first
//! `COMMIT`: passing it on late (the server commits after the client gave up) or not at all
//! (the server rolls back). Either way the caller is answered as the database decided, and
//! charged exactly once.

use super::*;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use flowgate::config::LedgerUrl;
use flowgate::ledger::CreditLedger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does with a `COMMIT` once armed (each armed fault fires once, in order).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Hangs up on the client, passes it on half a second later, then hangs up on the server:
    /// the server commits, and the answer is lost.
    Deliver,
    /// Hangs up on both sides without passing it on.
    Swallow,
    /// As `Swallow`, and refuses new connections for a while (a server restarting).
    SwallowAndGo(Duration),
    /// Passes nothing more either way and hangs up on no one: a replica frozen (its node gone,
    /// its VM paused) after its batch's writes, before their COMMIT.
    Hold,
}

struct CommitRelay {
    addr: std::net::SocketAddr,
    armed: Arc<Mutex<VecDeque<Fault>>>,
    fired: Arc<Mutex<Vec<Fault>>>,
}

/// Until when the relay hangs up on every new connection.
type Away = Arc<Mutex<Option<tokio::time::Instant>>>;

impl CommitRelay {
    async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay = Self {
            addr: listener.local_addr().expect("address"),
            armed: Arc::default(),
            fired: Arc::default(),
        };
        let (armed, fired) = (relay.armed.clone(), relay.fired.clone());
        let away = Away::default();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let gone = *away.lock().expect("lock");
                if gone.is_some_and(|until| tokio::time::Instant::now() < until) {
                    continue;
                }
                let (target, armed, fired, away) =
                    (target.clone(), armed.clone(), fired.clone(), away.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        pass(client, server, armed, fired, away).await;
                    }
                });
            }
        });
        relay
    }

    /// Queues `fault` for the next `COMMIT` not already given one.
    fn arm(&self, fault: Fault) {
        self.armed.lock().expect("lock").push_back(fault);
    }

    fn fired(&self) -> Vec<Fault> {
        self.fired.lock().expect("lock").clone()
    }
}

/// Copies the server's bytes back as they come; reads the client's message by message (the
/// startup message has no type byte, every later one has), and acts on an armed `COMMIT`.
async fn pass(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<Mutex<VecDeque<Fault>>>,
    fired: Arc<Mutex<Vec<Fault>>>,
    away: Away,
) {
    let (mut from_client, to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let mut to_client = to_client;
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut started = false;
    loop {
        let mut message = Vec::new();
        let mut head = vec![0; if started { 5 } else { 4 }];
        if from_client.read_exact(&mut head).await.is_err() {
            break;
        }
        let length = u32::from_be_bytes(head[head.len() - 4..].try_into().expect("4 bytes"));
        let mut body = vec![0; (length as usize).saturating_sub(4)];
        if from_client.read_exact(&mut body).await.is_err() {
            break;
        }
        // The startup message (protocol 3.0) ends the untyped part; an SSL or GSS request
        // would be followed by another untyped message.
        let startup = !started && body.get(..4) == Some(&[0, 3, 0, 0]);
        let commit = started && head[0] == b'Q' && body.starts_with(b"COMMIT");
        message.extend_from_slice(&head);
        message.extend_from_slice(&body);
        started |= startup;
        let fault = if commit {
            armed.lock().expect("lock").pop_front()
        } else {
            None
        };
        if let Some(fault) = fault {
            fired.lock().expect("lock").push(fault);
            if let Fault::Hold = fault {
                let _frozen = (&from_client, &to_server, &back);
                std::future::pending::<()>().await;
            }
            if let Fault::SwallowAndGo(gone) = fault {
                *away.lock().expect("lock") = Some(tokio::time::Instant::now() + gone);
            }
            back.abort();
            drop(from_client);
            if let Fault::Deliver = fault {
                // Late: the client has given up and asks on a fresh connection meanwhile, while
                // the old transaction still holds its locks.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = to_server.write_all(&message).await;
                let _ = to_server.flush().await;
            }
            // Dropping both halves of both sockets hangs up on each side.
            return;
        }
        if to_server.write_all(&message).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// A ledger on the test's schema, reached through a relay.
async fn through_relay(test: &str) -> (crate::support::Store, CommitRelay, Arc<dyn CreditLedger>) {
    let store = crate::support::postgres(test).await;
    let LedgerUrl::Postgres(url) = &store.url else {
        unreachable!("a PostgreSQL store");
    };
    // postgres://user@host:port/db?… — the relay in place of host:port.
    let (user, rest) = url.split_once('@').expect("postgres URL with user@");
    let (host_port, path) = rest.split_once('/').expect("postgres URL with a database");
    let relay = CommitRelay::to(host_port.to_string()).await;
    let relayed = LedgerUrl::Postgres(format!("{user}@{}/{path}", relay.addr));
    let ledger = ledger::open(&relayed).await.expect("ledger opens");
    (store, relay, ledger)
}

async fn reservations(store: &crate::support::Store) -> i64 {
    store.count("SELECT count(*) FROM reservations").await
}

/// Reserves 3 of alice's 10 with `fault` armed: the reserve is answered `Reserved`, the fault
/// fired once, and the database holds exactly that one charge.
async fn reserve_through(
    test: &str,
    fault: Fault,
) -> (crate::support::Store, Arc<dyn CreditLedger>, ReservationId) {
    let (store, relay, ledger) = through_relay(test).await;
    relay.arm(fault);
    let outcome = ledger
        .reserve(request("alice", vec![line(POLICY, "*", 10, 3)]))
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: the reserve is answered ({e})"));
    assert_eq!(relay.fired().len(), 1, "{fault:?} happened");
    let id = outcome.id();
    assert_eq!(used(&*ledger, POLICY, "*").await, 3);
    assert_eq!(reservations(&store).await, 1, "charged once");
    (store, ledger, id)
}

/// The COMMIT went out and its answer was lost: the reservation the caller was given is the one
/// in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_applied_but_unanswered_answers_the_reserve_it_made() {
    let (_store, ledger, id) = reserve_through("commit_unanswered_applied", Fault::Deliver).await;
    let refunded = ledger
        .refund(id, now())
        .await
        .expect("the reservation refunds");
    assert!(refunded.applied);
    assert_eq!(used(&*ledger, POLICY, "*").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_arrived_runs_the_batch_again_and_charges_once() {
    reserve_through("commit_unanswered_lost", Fault::Swallow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_commit_is_asked_about_again_once_the_database_is_back() {
    let away = Fault::SwallowAndGo(Duration::from_millis(1500));
    reserve_through("commit_unanswered_away", away).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_whose_commit_is_unanswered_is_answered_as_applied() {
    let (store, relay, ledger) = through_relay("commit_unanswered_settle").await;
    let id = ledger
        .reserve(request("alice", vec![line(POLICY, "*", 10, 3)]))
        .await
        .expect("reserve")
        .id();
    relay.arm(Fault::Deliver);
    let settled = ledger
        .settle(id, &[5], 50, now())
        .await
        .expect("the settle is answered as committed");
    assert_eq!(relay.fired().len(), 1);
    assert!(settled.applied);
    assert_eq!(settled.state, ReservationState::Settled);
    assert_eq!(used(&*ledger, POLICY, "*").await, 5);
    assert_eq!(reservations(&store).await, 1);
}

/// The batch's COMMIT is lost and it rolled back, so its reserve runs again alone (the
/// one-operation path); that one's COMMIT goes unanswered too. Asked on another connection, the
/// caller is answered as the database decided — before, it was refused while a delivered
/// reservation stayed charged, and a flat cost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_run_alone_whose_commit_is_unanswered_is_answered_as_decided() {
    for (test, second) in [
        ("commit_unanswered_alone_applied", Fault::Deliver),
        ("commit_unanswered_alone_lost", Fault::Swallow),
    ] {
        let (store, relay, ledger) = through_relay(test).await;
        relay.arm(Fault::Swallow);
        relay.arm(second);
        let id = ledger
            .reserve(request("alice", vec![line(POLICY, "*", 10, 3)]))
            .await
            .unwrap_or_else(|e| panic!("{second:?}: the reserve is answered ({e})"))
            .id();
        assert_eq!(relay.fired().len(), 2, "{second:?}: both COMMITs were cut");
        assert_eq!(used(&*ledger, POLICY, "*").await, 3, "{second:?}");
        assert_eq!(reservations(&store).await, 1, "{second:?}: charged once");
        let refunded = ledger.refund(id, now()).await.expect("refund");
        assert!(
            refunded.applied,
            "{second:?}: the answered id is the one charged"
        );
    }
}

/// An admin's adjustment (always its own transaction) whose COMMIT went out and whose answer
/// was lost is answered as applied, once; one whose COMMIT never arrived runs again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_whose_commit_is_unanswered_is_applied_once() {
    for (test, fault) in [
        ("commit_unanswered_adjust_applied", Fault::Deliver),
        ("commit_unanswered_adjust_lost", Fault::Swallow),
    ] {
        let (store, relay, ledger) = through_relay(test).await;
        relay.arm(fault);
        let outcome = ledger
            .adjust(crate::adjust::adjustment("*", -4))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: the adjustment is answered ({e})"));
        assert_eq!(relay.fired().len(), 1, "{fault:?} happened");
        assert!(
            matches!(outcome, AdjustOutcome::Adjusted { used: 4, .. }),
            "{fault:?}: {outcome:?}"
        );
        assert_eq!(
            used(&*ledger, POLICY, "*").await,
            4,
            "{fault:?}: applied once"
        );
        assert_eq!(reservations(&store).await, 1, "{fault:?}");
    }
}

/// A replica frozen inside a batch leaves its session idle in the transaction, holding the
/// budget's row: PostgreSQL ends that session within flowgate's default
/// `idle_in_transaction_session_timeout` (10 s; the server's own default is never), its batch
/// rolls back, and another replica's reserve on that budget goes on instead of waiting for TCP
/// keepalive's two hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_inside_a_batch_holds_the_budget_only_briefly() {
    let (store, relay, frozen) = through_relay("commit_unanswered_frozen").await;
    relay.arm(Fault::Hold);
    let stuck = tokio::spawn(async move {
        frozen
            .reserve(request("alice", vec![line(POLICY, "*", 10, 3)]))
            .await
    });
    while relay.fired().is_empty() {
        assert!(!stuck.is_finished(), "the reserve waits for its COMMIT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = ledger::open(&store.url).await.expect("ledger opens");
    let reserved = tokio::time::timeout(
        Duration::from_secs(40),
        other.reserve(request("bob", vec![line(POLICY, "*", 10, 4)])),
    )
    .await
    .expect("the other replica is answered long before keepalive's two hours")
    .expect("and reserves");
    assert!(
        matches!(reserved, ReserveOutcome::Reserved { .. }),
        "{reserved:?}"
    );
    assert_eq!(
        used(&*other, POLICY, "*").await,
        4,
        "the frozen batch rolled back"
    );
    assert!(!stuck.is_finished(), "the frozen replica is still waiting");
    stuck.abort();
}

//! The credits ledger: budgets charged atomically before a prediction is forwarded.
//!
//! One trait, [`CreditLedger`], with two backends that pass the same scenario suite
//! (`tests/ledger.rs`): embedded SQLite, the default, and PostgreSQL for several proxy replicas
//! sharing one database. [`open`] picks one from `FLOWGATE_LEDGER_URL`.
//!
//! # Buckets
//!
//! A budget is a bucket keyed by (policy, bucket, window start): `bucket` is the subject for a
//! `PerSubject` policy and `"*"` for a `Shared` one, the window comes from [`window`].
//! A new period therefore starts from an empty bucket by itself. The bucket holds only `used`;
//! the limit comes with every request from the *current* policy spec, so an edited policy
//! applies at once (a limit lowered below `used` refuses the next request).
//!
//! # The life of a reservation
//!
//! ```text
//!                 settle ──▶ Settled   (bucket charged the actual amount)
//!                ╱
//!  reserve ──▶ Reserved ── refund ──▶ Refunded  (held amount released)
//!                ╲
//!                 sweep, once created + ttl has passed
//!                   ╲
//!                    ▶ Expired ── settle ──▶ Settled   (charge adjusted to the actual amount)
//!                      (still       ╲
//!                       charged)     refund ──▶ Refunded  (held amount released)
//!
//!  reserve, final ──▶ Charged ── refund ──▶ Refunded  (held amount released)
//!  (a flat cost)        ╲
//!                        settle ──▶ Settled  (charge adjusted to the actual amount)
//!
//!  adjust ──▶ Adjusted  (an admin's correction of one bucket, either way; final)
//! ```
//!
//! - [`CreditLedger::reserve`] is one atomic operation over every budget line of a request:
//!   either each line fits (`used + amount <= limit`) and all are charged, or none is and the
//!   outcome is [`ReserveOutcome::Exhausted`] naming the first line, in request order, that does
//!   not fit. Running out is a value, not an error. The reservation is committed (fsync for
//!   SQLite, COMMIT for PostgreSQL) before `reserve` returns.
//! - [`CreditLedger::settle`] replaces the held amounts by the actual ones, which may be larger
//!   (tokens billed after the fact): the bucket may go over its limit and the next reserve is
//!   refused. [`CreditLedger::refund`] releases the held amounts.
//! - A reservation neither settled nor refunded by `created + ttl` was left by a proxy that
//!   crashed. [`CreditLedger::sweep`] marks it `Expired` and **keeps it charged** at the
//!   reserved amount: after a `kill -9` the request had most likely been forwarded and answered
//!   by Flowise, and "no lost charges" wins over "never overcharge". A late settle or refund of
//!   an expired reservation still applies.
//! - A reserve marked [`ReserveRequest::final_cost`] (every line's amount is the whole cost, as
//!   for a flat price per prediction) is charged in full at once: the reservation is `Charged`,
//!   its usage rows are logged in the same write, and nothing needs to settle it — one write per
//!   prediction instead of two. Only a refund (Flowise failed) or a correcting settle changes it,
//!   as for an expired reservation; the sweep leaves it alone.
//! - `Settled` and `Refunded` are final. A second settle or refund is a no-op that reports the
//!   current state ([`Resolution::applied`] is false).
//! - With an idempotency key (scoped to the subject), a reserve that finds a reservation with
//!   the same (subject, key) in any state but `Refunded` returns [`ReserveOutcome::Duplicate`]
//!   and charges nothing; a refunded key may reserve anew.
//!
//! Dropping a `reserve` future does not cancel it on SQLite: the reservation may still be
//! committed, and then it expires and stays charged like any other abandoned one. PostgreSQL's
//! writers, which a slow database can keep waiting, drop a reserve whose future was dropped
//! before its batch began, and refund one whose batch was running
//! ([`CreditLedger::refunds_dropped_reserves`]).
//!
//! # Usage log
//!
//! Every settle, refund, expiry and final-cost reserve writes one [`UsageRecord`] per budget
//! line. Its `credits` is what the event changed in the charge recorded by the log, so summing a
//! reservation's rows gives what it is charged: settle logs the actual amount, refund 0, expiry
//! and a final-cost reserve the held amount; a settle or refund after those logs the correction
//! (`actual - held`, or `-held`). An adjustment logs what it changed, `-credits` (negative for
//! credits given back), with an empty chatflow.
//!
//! # Retention
//!
//! Nothing above deletes: reservations, their lines and the usage log grow with every
//! prediction. [`CreditLedger::prune_reservations`] and [`CreditLedger::prune_usage`] delete
//! what is older than a cutoff, a bounded chunk per call so that pruning a large backlog never
//! holds the writer (or a PostgreSQL lock) for long; [`retention::prune`] walks them to the end.
//!
//! - A reservation is deleted, with its lines, once it is not `Reserved` and was last changed
//!   before the cutoff. Its idempotency key is forgotten with it, and a settle or refund that
//!   arrives after that fails with [`LedgerError::UnknownReservation`].
//! - A usage row is deleted once its time is before the cutoff.
//! - A bucket is deleted by [`CreditLedger::prune_buckets`] once its window started more than
//!   [`LONGEST_WINDOW`] before the cutoff: it had ended by then, and no request charges or reads
//!   a past window. A `Never` window (it starts at the epoch) is never deleted.
//!
//! Reservations are walked in id order from a cursor, a chunk at a time; a chunk in which
//! nothing was created before the cutoff ends the walk (ids grow with time). Usage rows are
//! taken oldest first through the time index. Neither reads the table beyond its chunk.

mod error;
mod period;
mod postgres;
mod reads;
pub mod retention;
mod sqlite;
mod state;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;

pub use error::LedgerError;
pub use period::{LONGEST_WINDOW, PeriodError, window};
pub use reads::{BucketBalance, UsageFilter, UsageRecord};
use reads::{UsageParam, buckets_query, usage_query};

use crate::config::LedgerUrl;

/// What every ledger operation returns.
pub type LedgerFuture<'a, T> = BoxFuture<'a, Result<T, LedgerError>>;

/// Budgets charged atomically; see the module documentation for the state machine.
///
/// Every method takes the time it should consider "now", so tests and replays inject the clock
/// and the ledger never reads it.
pub trait CreditLedger: Send + Sync {
    /// Charges every line of the request, or none. Durable before it returns.
    fn reserve(&self, request: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome>;

    /// Whether a `reserve` future dropped before it answered leaves nothing charged: not
    /// reserved, or refunded by the ledger itself. Otherwise its caller must see it land and
    /// refund it.
    fn refunds_dropped_reserves(&self) -> bool {
        false
    }

    /// Replaces the held amounts by `actual` (one per line, in the order of the reservation's
    /// lines) and records `tokens`. Idempotent.
    fn settle<'a>(
        &'a self,
        id: ReservationId,
        actual: &'a [u64],
        tokens: u64,
        now: Timestamp,
    ) -> LedgerFuture<'a, Resolution>;

    /// Releases the held amounts. Idempotent.
    fn refund(&self, id: ReservationId, now: Timestamp) -> LedgerFuture<'_, Resolution>;

    /// Changes one bucket's `used` by `-credits` (positive `credits` give credits back, negative
    /// take them), never refused for the budget: an admin's correction. It is written as a
    /// reservation in the final state `Adjusted` with one line, and one usage row, in one
    /// durable transaction; with an idempotency key it is applied once.
    fn adjust(&self, request: AdjustRequest) -> LedgerFuture<'_, AdjustOutcome>;

    /// Spends one request of the rate allowance `key` has across every replica sharing this
    /// ledger (GCRA: `interval` per request, at most `burst` ahead of now); `None` when the
    /// ledger does not share allowances, and each replica counts its own (SQLite: one replica).
    /// Unlike the other methods it reads the database's clock, the one all replicas share.
    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: Duration,
    ) -> LedgerFuture<'a, Option<RateTake>> {
        let _ = (key, interval, burst);
        Box::pin(async { Ok(None) })
    }

    /// Takes chat `chat`'s turn across every replica sharing this ledger: `Taken` with the turn
    /// to hand to [`CreditLedger::end_turn`], `Busy` while another replica's turn holds it;
    /// `None` when the ledger does not share turns (SQLite: one replica). The caller holds no
    /// turn of its own in `chat` while it asks. A turn is held until it is ended, or for a lease
    /// (a minute) after its replica last renewed it, which a running replica does on its own.
    /// A take given up on before its answer is ended as if taken. Reads the database's clock.
    fn begin_turn<'a>(&'a self, chat: &'a str) -> LedgerFuture<'a, Option<SharedTurn>> {
        let _ = chat;
        Box::pin(async { Ok(None) })
    }

    /// Ends a turn [`CreditLedger::begin_turn`] took, soon after: never waits.
    fn end_turn(&self, turn: u64) {
        let _ = turn;
    }

    /// At shutdown, once nothing charges it any more: finishes what is queued (the refunds of
    /// requests cut by the drain) and lets go of what this replica holds in the ledger (chat
    /// turns), within `limit`. Nothing to do by default.
    fn close(&self, limit: std::time::Duration) -> LedgerFuture<'_, ()> {
        let _ = limit;
        Box::pin(async { Ok(()) })
    }

    /// Marks reservations whose `created + ttl` is at or before `now` as expired (they stay
    /// charged) and returns how many there were.
    fn sweep(&self, now: Timestamp) -> LedgerFuture<'_, u64>;

    /// Credits used in one bucket in `window` (0 if the bucket was never charged). May exceed
    /// the limit after a settle that charged more than was reserved.
    fn balance<'a>(
        &'a self,
        policy: &'a str,
        bucket: &'a str,
        window: &'a Window,
    ) -> LedgerFuture<'a, i64>;

    /// Aggregate use of a policy in `window`, for its status: a bucket is exhausted once its
    /// `used` reaches its limit by [`Limits::of_bucket`].
    fn policy_usage<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        limits: Limits,
    ) -> LedgerFuture<'a, PolicyUsage>;

    /// The buckets of a policy in `window`, most used first (then by bucket), at most `limit`;
    /// with `bucket`, only that one (none if it was never charged).
    fn buckets<'a>(
        &'a self,
        policy: &'a str,
        window: &'a Window,
        bucket: Option<&'a str>,
        limit: u32,
    ) -> LedgerFuture<'a, Vec<BucketBalance>>;

    /// Usage log rows matching `filter`, newest first.
    fn usage(&self, filter: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>>;

    /// Looks at the (at most) `chunk` reservations with ids after `after` and deletes those that
    /// are not `Reserved` and were last changed before `before`, with their lines. See
    /// "Retention" in the module documentation.
    fn prune_reservations(
        &self,
        before: Timestamp,
        after: ReservationId,
        chunk: u32,
    ) -> LedgerFuture<'_, PrunedChunk>;

    /// Deletes the (at most) `chunk` oldest usage rows whose time is before `before`; returns
    /// how many it deleted.
    fn prune_usage(&self, before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64>;

    /// Deletes (at most `chunk`) buckets whose window started before `started_before`, except
    /// `Never` windows (which start at the epoch); returns how many it deleted. The caller keeps
    /// `started_before` at least [`LONGEST_WINDOW`] in the past, so only ended windows go.
    fn prune_buckets(&self, started_before: Timestamp, chunk: u32) -> LedgerFuture<'_, u64>;
}

/// A PostgreSQL URL without libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`,
/// `sslkey`), or why those cannot be met. Reads no file.
pub(crate) fn postgres_url_without_tls(raw: &str) -> Result<String, String> {
    postgres::tls::split(raw).map(|(rest, _)| rest)
}

/// Opens (and creates, or migrates) the ledger `url` names.
pub async fn open(url: &LedgerUrl) -> Result<Arc<dyn CreditLedger>, LedgerError> {
    Ok(match url {
        LedgerUrl::Sqlite(path) => Arc::new(sqlite::SqliteLedger::open(path).await?),
        LedgerUrl::Postgres(url) => Arc::new(postgres::PostgresLedger::connect(url).await?),
    })
}

/// Writes a consistent copy of the SQLite ledger at `url` to the new file `dest`, while flowgate
/// may be writing to it (`VACUUM INTO`: one read transaction, so the copy holds every charge
/// committed before it started and none after). A PostgreSQL ledger is backed up with
/// PostgreSQL's own tools.
pub async fn backup(url: &LedgerUrl, dest: &std::path::Path) -> Result<(), LedgerError> {
    match url {
        LedgerUrl::Sqlite(path) => {
            let (path, dest) = (path.clone(), dest.to_path_buf());
            tokio::task::spawn_blocking(move || sqlite::backup(&path, &dest))
                .await
                .map_err(|_| LedgerError::Stopped)?
        }
        LedgerUrl::Postgres(_) => Err(LedgerError::Unsupported(
            "a PostgreSQL ledger is backed up with pg_dump (or your provider's backups)",
        )),
    }
}

/// A calendar window of a budget period; see [`window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First instant of the period; part of the bucket key.
    pub start: Timestamp,
    /// First instant of the next period (`None` for `Never`): when the budget resets.
    pub end: Option<Timestamp>,
}

/// One budget a request is charged on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetLine {
    /// The CreditPolicy, as `namespace/name`.
    pub policy: String,
    /// The subject for a `PerSubject` policy, `"*"` for a `Shared` one.
    pub bucket: String,
    /// Credits per period, from the current policy spec.
    pub limit: u64,
    /// `limit` is the subject's own (a budget override), not the policy's: the bucket keeps
    /// it, so that [`CreditLedger::policy_usage`] counts the subject against it.
    pub own_limit: bool,
    /// The current period.
    pub window: Window,
    /// Credits to hold.
    pub amount: u64,
}

/// A request for credits before a prediction is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Who is charged (recorded in the usage log; scopes the idempotency key).
    pub subject: String,
    /// Which chatflow, as `namespace/name` (recorded in the usage log).
    pub chatflow: String,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Every budget that applies; all are charged or none.
    pub lines: Vec<BudgetLine>,
    /// The time of the request.
    pub now: Timestamp,
    /// How long the proxy may take to settle or refund before the reservation counts as
    /// abandoned.
    pub ttl: Duration,
    /// The amounts are the whole cost (no part depends on the answer): charge them as final,
    /// `Charged`, with no settle to follow. See the module documentation.
    pub final_cost: bool,
}

impl ReserveRequest {
    /// The state a reservation starts in: `Charged` for a final cost, else `Reserved`.
    fn initial_state(&self) -> ReservationState {
        if self.final_cost {
            ReservationState::Charged
        } else {
            ReservationState::Reserved
        }
    }
}

/// One request of a shared rate allowance ([`CreditLedger::take_rate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateTake {
    /// The request was within the allowance, and spent it.
    pub admitted: bool,
    /// How far the key's instant is ahead of now afterwards.
    pub ahead: Duration,
}

/// A chat's turn as replicas share it ([`CreditLedger::begin_turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedTurn {
    /// This replica's turn, until [`CreditLedger::end_turn`] ends it.
    Taken(u64),
    /// Another replica's turn holds the chat.
    Busy,
}

/// An admin's change to one bucket in one window ([`CreditLedger::adjust`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustRequest {
    /// The CreditPolicy, as `namespace/name`.
    pub policy: String,
    /// The subject for a `PerSubject` policy, `"*"` for a `Shared` one; also the usage row's
    /// subject.
    pub bucket: String,
    pub window: Window,
    /// Credits given (positive: `used` goes down, possibly below 0) or taken (negative).
    pub credits: i64,
    /// Scoped to the policy and the bucket ([`AdjustRequest::key_scope`]): never the same as a
    /// prediction's key, which callers choose.
    pub idempotency_key: Option<String>,
    pub now: Timestamp,
    /// Who made it (an identity key), kept with its usage row.
    pub actor: String,
    /// Why, as the admin said, kept with its usage row.
    pub reason: Option<String>,
    /// The subject's own budget, where an override applies to it: kept as the limit of a
    /// bucket the adjustment creates (a bucket already there keeps its last reserve's).
    pub own_limit: Option<i64>,
}

impl AdjustRequest {
    /// The stored reservation's `subject`, which scopes its idempotency key: no identity key
    /// (`user:…`, `sa:…`) starts like it, so a caller cannot take an adjustment's key with a
    /// prediction of their own.
    fn key_scope(&self) -> String {
        format!("adjust {} {}", self.policy, self.bucket)
    }

    /// What the bucket's `used` changes by: `-credits`.
    fn delta(&self) -> Result<i64, LedgerError> {
        self.credits.checked_neg().ok_or(LedgerError::OutOfRange {
            what: "credits",
            value: self.credits.unsigned_abs(),
        })
    }
}

/// What [`CreditLedger::adjust`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustOutcome {
    /// Applied: the bucket's `used` afterwards.
    Adjusted { id: ReservationId, used: i64 },
    /// The idempotency key was used before; nothing changed.
    Duplicate {
        id: ReservationId,
        state: ReservationState,
    },
}

/// Identifies a reservation; unique within one ledger database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationId(pub i64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a reservation is in its life (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Charged at the reserved amount, waiting for settle or refund.
    Reserved,
    /// Charged at the actual amount; final.
    Settled,
    /// Released; final.
    Refunded,
    /// Abandoned and swept; still charged at the reserved amount.
    Expired,
    /// Charged in full when reserved (a final cost); changed only by a refund or a correcting
    /// settle.
    Charged,
    /// An admin's adjustment of a bucket ([`CreditLedger::adjust`]); final.
    Adjusted,
}

impl ReservationState {
    /// The name stored in the database and used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Settled => "settled",
            Self::Refunded => "refunded",
            Self::Expired => "expired",
            Self::Charged => "charged",
            Self::Adjusted => "adjusted",
        }
    }

    fn parse(stored: &str) -> Result<Self, LedgerError> {
        Ok(match stored {
            "reserved" => Self::Reserved,
            "settled" => Self::Settled,
            "refunded" => Self::Refunded,
            "expired" => Self::Expired,
            "charged" => Self::Charged,
            "adjusted" => Self::Adjusted,
            other => return Err(LedgerError::Corrupt(format!("reservation state '{other}'"))),
        })
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`CreditLedger::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Every line was charged.
    Reserved {
        id: ReservationId,
        /// Credits left per line (policy, remaining), in request order.
        remaining: Vec<(String, u64)>,
    },
    /// Nothing was charged: this budget does not fit the request.
    Exhausted {
        /// The first policy, in request order, that does not fit.
        policy: String,
        /// What is left of it (0 when it is used up or overdrawn).
        remaining: u64,
        /// When its window ends and the budget resets (`None` for `Never`).
        reset_at: Option<Timestamp>,
    },
    /// The idempotency key was used before; nothing was charged.
    Duplicate {
        id: ReservationId,
        state: ReservationState,
    },
}

/// What one call of [`CreditLedger::prune_reservations`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrunedChunk {
    /// Reservations deleted.
    pub deleted: u64,
    /// Where the next chunk starts; `None` when the walk is over (the chunk was short, or
    /// nothing in it was created before the cutoff).
    pub next: Option<ReservationId>,
}

impl PrunedChunk {
    /// The outcome of a chunk of `seen` rows (of at most `chunk`) ending at id `last`, whose
    /// oldest was created at `oldest_us`.
    fn of(deleted: u64, seen: u64, chunk: u32, last: i64, oldest_us: i64, before: i64) -> Self {
        let more = seen >= u64::from(chunk) && oldest_us < before;
        Self {
            deleted,
            next: more.then_some(ReservationId(last)),
        }
    }
}

/// What a settle or refund found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The reservation's state after the call.
    pub state: ReservationState,
    /// False when the call was a no-op (the reservation was already final).
    pub applied: bool,
    /// Each line's bucket `used` right after the call, changed or not (in line order; `None`
    /// for a bucket no longer there; empty when nothing was applied): where a settle left the
    /// budget, for `alertAtPercent`.
    pub used: Vec<Option<i64>>,
}

/// A policy's limits as its spec has them now, to read its buckets against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Credits per period.
    pub credits: u64,
    /// The credits each budget override gives.
    pub overrides: Vec<u64>,
}

impl Limits {
    /// A bucket's own limit (the override its last reserve was charged against, kept with
    /// [`BudgetLine::own_limit`]) while some override still gives that many.
    pub fn own(&self, own_limit: Option<i64>) -> Option<u64> {
        own_limit
            .and_then(|own| u64::try_from(own).ok())
            .filter(|own| self.overrides.contains(own))
    }

    /// A bucket's limit: its own (the override its last reserve was charged against, kept with
    /// [`BudgetLine::own_limit`]) while some override still gives that many, else the policy's.
    /// A bucket keeps its own limit until its next successful reserve, so an override lowered
    /// or removed since (the subject refused ever after) must not keep counting. The ledger
    /// knows buckets, not whom an override names: a subject whose override by name changed
    /// counts against the policy's credits here until its next reserve (the admin API's
    /// balance of one subject reads its name's override, `admin::credits`).
    pub fn of_bucket(&self, own_limit: Option<i64>) -> u64 {
        self.own(own_limit).unwrap_or(self.credits)
    }
}

/// Aggregate use of one policy in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyUsage {
    /// Credits charged over all buckets (held reservations included).
    pub credits_used: i64,
    /// Buckets with nothing left (`used >= limit`).
    pub buckets_exhausted: u64,
}

/// A budget line in database units: microseconds since the epoch and signed 64-bit credits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Charge<'a> {
    policy: &'a str,
    bucket: &'a str,
    window_start: i64,
    amount: i64,
    /// Saturated at `i64::MAX`: a larger limit is unlimited in practice.
    limit: i64,
    /// What the bucket keeps as its own limit: `limit` for a budget override, else none.
    own_limit: Option<i64>,
}

impl<'a> Charge<'a> {
    fn of(line: &'a BudgetLine) -> Result<Self, LedgerError> {
        Ok(Self {
            policy: &line.policy,
            bucket: &line.bucket,
            window_start: line.window.start.as_microsecond(),
            amount: credits("amount", line.amount)?,
            limit: i64::try_from(line.limit).unwrap_or(i64::MAX),
            own_limit: line
                .own_limit
                .then(|| i64::try_from(line.limit).unwrap_or(i64::MAX)),
        })
    }

    /// The bucket key, for a consistent lock order.
    fn key(&self) -> (&'a str, &'a str, i64) {
        (self.policy, self.bucket, self.window_start)
    }

    /// Whether `amount` more fits a bucket that has `used`, without overflowing. A spent budget
    /// (`used >= limit`) admits nothing, not even a prediction whose flat cost is 0 (a policy
    /// that prices only tokens).
    fn fits(&self, used: i64) -> bool {
        used < self.limit && used <= self.limit - self.amount
    }

    /// What is left when the bucket has `used`.
    fn remaining(&self, used: i64) -> u64 {
        u64::try_from(self.limit.saturating_sub(used)).unwrap_or(0)
    }
}

/// A reservation `id` made of `charges`, its buckets at `used_after` (in the same order): what
/// is left of each policy.
fn reserved<'c>(
    id: i64,
    charges: impl IntoIterator<Item = &'c Charge<'c>>,
    used_after: impl IntoIterator<Item = i64>,
) -> ReserveOutcome {
    ReserveOutcome::Reserved {
        id: ReservationId(id),
        remaining: charges
            .into_iter()
            .zip(used_after)
            .map(|(charge, used)| (charge.policy.to_string(), charge.remaining(used)))
            .collect(),
    }
}

/// An amount Flowise's answer decided (a settle's cost, its tokens): past 2^63 it is 2^63 - 1, as
/// the bucket it is added to saturates there, rather than a settle refused and left to the sweep.
fn saturated(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn credits(what: &'static str, value: u64) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| LedgerError::OutOfRange { what, value })
}

/// How a settle or refund is retried while the ledger fails transiently
/// ([`LedgerError::transient`]: a lost connection, a failover, a busy database): 0.2 s doubling
/// to 10 s, with jitter, for up to `total` (as long as a reservation may stay open). Each still
/// corrects a reservation the sweep charged meanwhile, and both are idempotent.
pub fn correction_backoff(total: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(total))
}

/// `now + ttl` in microseconds, saturating far in the future.
fn expiry(now: Timestamp, ttl: Duration) -> i64 {
    let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
    now.as_microsecond().saturating_add(ttl)
}

fn timestamp(micros: i64) -> Result<Timestamp, LedgerError> {
    Timestamp::from_microsecond(micros)
        .map_err(|e| LedgerError::Corrupt(format!("timestamp {micros}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(limit: u64, amount: u64) -> BudgetLine {
        BudgetLine {
            policy: "ns/p".into(),
            bucket: "alice".into(),
            limit,
            own_limit: false,
            window: Window {
                start: Timestamp::UNIX_EPOCH,
                end: None,
            },
            amount,
        }
    }

    #[test]
    fn a_charge_fits_up_to_the_limit_and_never_overflows() {
        let c = line(10, 3);
        let charge = Charge::of(&c).expect("fits i64");
        assert!(charge.fits(7));
        assert!(!charge.fits(8));
        assert_eq!(charge.remaining(7), 3);
        assert_eq!(charge.remaining(12), 0, "overdrawn");

        let tokens_only = line(10, 0);
        let charge = Charge::of(&tokens_only).expect("fits i64");
        assert!(charge.fits(9));
        assert!(!charge.fits(10), "spent: refused even at a flat cost of 0");
        assert!(!charge.fits(11), "overdrawn by a settle");

        let huge = line(u64::MAX, i64::MAX as u64);
        let charge = Charge::of(&huge).expect("limit saturates");
        assert!(charge.fits(0));
        assert!(!charge.fits(1));
    }

    #[test]
    fn an_amount_beyond_i64_is_refused() {
        let err = Charge::of(&line(10, u64::MAX)).expect_err("too large");
        assert_eq!(err.reason(), "OutOfRange");
        assert!(!err.transient());
    }

    #[test]
    fn states_round_trip_through_their_stored_names() {
        for state in [
            ReservationState::Reserved,
            ReservationState::Settled,
            ReservationState::Refunded,
            ReservationState::Expired,
            ReservationState::Charged,
        ] {
            assert_eq!(
                ReservationState::parse(state.as_str()).expect("known"),
                state
            );
        }
        assert!(ReservationState::parse("lost").is_err());
    }

    #[test]
    fn a_prune_walk_goes_on_only_after_a_full_chunk_holding_something_old() {
        let before = 1_000;
        let full_and_old = PrunedChunk::of(3, 10, 10, 77, 999, before);
        assert_eq!(full_and_old.next, Some(ReservationId(77)));
        assert_eq!(full_and_old.deleted, 3);
        assert_eq!(
            PrunedChunk::of(0, 10, 10, 77, 1_000, before).next,
            None,
            "all new"
        );
        assert_eq!(
            PrunedChunk::of(9, 9, 10, 77, 0, before).next,
            None,
            "the table's end"
        );
        assert_eq!(PrunedChunk::of(0, 0, 10, 0, 0, before).next, None, "empty");
    }

    #[test]
    fn expiry_saturates() {
        assert_eq!(
            expiry(Timestamp::UNIX_EPOCH, Duration::from_secs(2)),
            2_000_000
        );
        assert_eq!(expiry(Timestamp::MAX, Duration::MAX), i64::MAX);
    }
}

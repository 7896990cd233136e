//! The PostgreSQL schema, created once under an advisory lock, and the statements every
//! pooled connection prepares.

use tokio_postgres::{Client, Statement};

use crate::ledger::LedgerError;

/// Serializes schema creation between replicas starting together ("flowgate" in ASCII).
const SCHEMA_LOCK: i64 = 0x666c_6f77_6761_7465;
const SCHEMA_VERSION: i32 = 1;

// Every table and index is looked up (in the schema the tables are in) before it is created:
// CREATE INDEX takes a share lock on its table even when the index exists, and held to the commit
// of this transaction that would stop every replica's writes while one starts (or deadlock with
// a write that locks two tables); and CREATE TABLE IF NOT EXISTS needs CREATE on the schema even
// when the table exists, which a role that does not own it (PostgreSQL 15 grants `public` to no
// one) lacks: it could not start on tables a DBA made for it.
const SCHEMA: &str = "
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.ledger_schema') IS NULL THEN
CREATE TABLE ledger_schema (version integer PRIMARY KEY);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.buckets') IS NULL THEN
CREATE TABLE buckets (
    policy       text   NOT NULL,
    bucket       text   NOT NULL,
    window_start bigint NOT NULL, -- microseconds since the epoch
    used         bigint NOT NULL,
    PRIMARY KEY (policy, bucket, window_start));
END IF; END $$;
-- Added after version 1, without a new version: a budget override's limit, from the last reserve.
-- Looked up first: ALTER TABLE would lock the table even when the column is there.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'buckets' AND column_name = 'own_limit') THEN
        ALTER TABLE buckets ADD COLUMN own_limit bigint;
    END IF;
END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.buckets_by_window') IS NULL THEN
    CREATE INDEX IF NOT EXISTS buckets_by_window ON buckets (policy, window_start);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.buckets_by_start') IS NULL THEN
    CREATE INDEX IF NOT EXISTS buckets_by_start ON buckets (window_start);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.reservations') IS NULL THEN
CREATE TABLE reservations (
    id              bigserial PRIMARY KEY,
    subject         text   NOT NULL,
    chatflow        text   NOT NULL,
    idempotency_key text,
    state           text   NOT NULL,
    created_us      bigint NOT NULL,
    expires_us      bigint NOT NULL,
    updated_us      bigint NOT NULL,
    tokens          bigint NOT NULL DEFAULT 0);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.reservations_by_key') IS NULL THEN
    CREATE UNIQUE INDEX IF NOT EXISTS reservations_by_key ON reservations (subject, idempotency_key)
        WHERE idempotency_key IS NOT NULL AND state <> 'refunded';
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.reservations_open') IS NULL THEN
    CREATE INDEX IF NOT EXISTS reservations_open ON reservations (expires_us)
        WHERE state = 'reserved';
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.reservation_lines') IS NULL THEN
CREATE TABLE reservation_lines (
    reservation_id bigint  NOT NULL,
    idx            integer NOT NULL,
    policy         text    NOT NULL,
    bucket         text    NOT NULL,
    window_start   bigint  NOT NULL,
    amount         bigint  NOT NULL, -- what the line holds now
    PRIMARY KEY (reservation_id, idx));
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.usage') IS NULL THEN
CREATE TABLE usage (
    id             bigserial PRIMARY KEY,
    time_us        bigint NOT NULL,
    reservation_id bigint NOT NULL,
    subject        text   NOT NULL,
    chatflow       text   NOT NULL,
    policy         text   NOT NULL,
    credits        bigint NOT NULL,
    tokens         bigint NOT NULL,
    outcome        text   NOT NULL);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.usage_by_time') IS NULL THEN
    CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time_us);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.usage_by_subject') IS NULL THEN
    CREATE INDEX IF NOT EXISTS usage_by_subject ON usage (subject, time_us);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.usage_by_policy') IS NULL THEN
    CREATE INDEX IF NOT EXISTS usage_by_policy ON usage (policy, time_us);
END IF; END $$;
-- Added after version 1, without a new version: who made each adjustment, and why.
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.adjustments') IS NULL THEN
CREATE TABLE adjustments (
    reservation_id bigint PRIMARY KEY,
    actor          text   NOT NULL,
    reason         text);
END IF; END $$;
-- Added after version 1, without a new version: the rate allowances replicas share (GCRA: when
-- each key's allowance is whole again). A row whose instant has passed is a key never seen.
-- Unlogged: a take waits for no WAL flush (a logged take halved the throughput of a limited
-- path), and a crash of the database, or a failover to a standby, whole-fills every allowance.
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.rate_limits') IS NULL THEN
CREATE UNLOGGED TABLE rate_limits (
    key        text   PRIMARY KEY,
    full_at_us bigint NOT NULL);
END IF; END $$;
-- Added later, without a new version: how many requests the row's last take admitted.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'rate_limits' AND column_name = 'taken') THEN
        ALTER TABLE rate_limits ADD COLUMN taken bigint NOT NULL DEFAULT 0;
    END IF;
END $$;
-- Added later, without a new version: the interval (microseconds a request) the row's instant
-- was counted in, so that after an edit of the rule what was spent counts as as many requests
-- under the new one. NULL (a row from before): counted as the new rule's.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'rate_limits' AND column_name = 'every_us') THEN
        ALTER TABLE rate_limits ADD COLUMN every_us bigint;
    END IF;
END $$;
-- Earlier flowgates made it logged; it is made unlogged once, keeping its rows. Looked up
-- first: ALTER TABLE would lock (and rewrite) the table even when it is unlogged already.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('rate_limits')
               AND relpersistence = 'p') THEN
        ALTER TABLE rate_limits SET UNLOGGED;
    END IF;
END $$;
-- Added after version 1, without a new version: the chats with a prediction under way, as
-- replicas share them. A turn is its replica's (a random id per process) until deleted, or until
-- it expires when its replica stopped renewing it. Unlogged: a turn's commit waits for no disk,
-- and a crash of the database frees every chat (as a restart of a single replica does).
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.chat_turns') IS NULL THEN
CREATE UNLOGGED TABLE chat_turns (
    chat       text   PRIMARY KEY,
    replica    text   NOT NULL,
    turn       bigint NOT NULL,
    expires_us bigint NOT NULL);
END IF; END $$;
DO $$ BEGIN IF to_regclass(quote_ident(current_schema()) || '.chat_turns_by_replica') IS NULL THEN
    CREATE INDEX IF NOT EXISTS chat_turns_by_replica ON chat_turns (replica, turn);
END IF; END $$;
";

/// Held (for its session) by the replica building [`late_indexes`]: another would drop the index
/// it is building, which shows as invalid until the build ends. The lock's key is this seed
/// hashed with the schema's name: ledgers of other schemas in the database (other
/// installations) build theirs at the same time rather than skip it.
const LATE_INDEX_LOCK: i64 = SCHEMA_LOCK + 1;

/// Indexes added after version 1, on tables a running ledger may have grown large: built with
/// `CREATE INDEX CONCURRENTLY`, outside any transaction, after start, so that writes go on while
/// they build (a plain `CREATE INDEX` would hold every replica's writes for as long). One that an
/// interrupted build left invalid is dropped and built again. The usage log's by-chatflow index is
/// what a chatflow admin's usage read uses (it always names a chatflow); without it, PostgreSQL
/// walks the log by time. A role that may not create it leaves the reads slower, nothing else.
pub(super) async fn late_indexes(client: &Client) -> Result<(), tokio_postgres::Error> {
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended(current_schema(), $1))",
            &[&LATE_INDEX_LOCK],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(());
    }
    let state: Option<bool> = client
        .query_one(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = \
             to_regclass(quote_ident(current_schema()) || '.usage_by_chatflow'))",
            &[],
        )
        .await?
        .get(0);
    let built = async {
        // A build takes as long as the table is large, and waits for older transactions (a
        // pg_dump): the role's or URL's time limits, meant for requests, would cut it every
        // time and leave an invalid index behind (updated on each write, used by no read).
        client
            .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
            .await?;
        if state == Some(false) {
            tracing::info!("dropping the usage log's chatflow index an interrupted build left");
            client
                .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS usage_by_chatflow")
                .await?;
        }
        if state != Some(true) {
            tracing::info!("building the usage log's chatflow index (writes go on meanwhile)");
            client
                .batch_execute(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_by_chatflow \
                     ON usage (chatflow, time_us)",
                )
                .await?;
        }
        Ok(())
    }
    .await;
    if built.is_err() {
        // What a failed build left, invalid, goes (best effort: the next start drops it too).
        let _ = client
            .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS usage_by_chatflow")
            .await;
    }
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended(current_schema(), $1))",
            &[&LATE_INDEX_LOCK],
        )
        .await?;
    built
}

/// Creates the tables if needed under an advisory lock, so replicas starting together do not
/// race on `CREATE … IF NOT EXISTS`; refuses a schema written by a newer flowgate.
pub(super) async fn create_schema(client: &mut Client) -> Result<(), LedgerError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    // A newer flowgate's schema is refused before this one's DDL touches it (a rollback to an
    // older build must not lock or alter the newer one's tables first).
    let existing: Option<String> = tx
        .query_one(
            "SELECT to_regclass(quote_ident(current_schema()) || '.ledger_schema')::text",
            &[],
        )
        .await?
        .try_get(0)?;
    if existing.is_some() {
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM ledger_schema", &[])
            .await?
            .try_get(0)?;
        if let Some(found) = found.filter(|found| *found > SCHEMA_VERSION) {
            return Err(LedgerError::SchemaTooNew {
                found: found.into(),
                known: SCHEMA_VERSION.into(),
            });
        }
    }
    tx.batch_execute(SCHEMA).await?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM ledger_schema", &[])
        .await?
        .try_get(0)?;
    match found {
        None => {
            tx.execute(
                "INSERT INTO ledger_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(found) if found > SCHEMA_VERSION => {
            return Err(LedgerError::SchemaTooNew {
                found: found.into(),
                known: SCHEMA_VERSION.into(),
            });
        }
        Some(found) => return Err(LedgerError::Corrupt(format!("schema version {found}"))),
    }
    tx.commit().await?;
    Ok(())
}

/// Every statement, prepared once per connection.
pub(super) struct Statements {
    pub(super) lock_buckets: Statement,
    pub(super) set_used: Statement,
    pub(super) lock_reservations: Statement,
    pub(super) close_many: Statement,
    pub(super) lines_of_many: Statement,
    pub(super) insert_many: Statement,
    pub(super) insert_reservation: Statement,
    pub(super) find_key: Statement,
    pub(super) charge: Statement,
    pub(super) charge_existing: Statement,
    pub(super) used_of: Statement,
    pub(super) lock_reservation: Statement,
    pub(super) lines_of: Statement,
    pub(super) adjust: Statement,
    pub(super) rehold: Statement,
    pub(super) log: Statement,
    pub(super) finish: Statement,
    pub(super) sweep: Statement,
    pub(super) prune_reservations: Statement,
    pub(super) prune_usage: Statement,
    pub(super) prune_buckets: Statement,
    pub(super) policy_usage: Statement,
    pub(super) take_rates: Statement,
    pub(super) prune_shared: Statement,
    pub(super) begin_turns: Statement,
    pub(super) end_turns: Statement,
    pub(super) renew_turns: Statement,
}

impl Statements {
    pub(super) async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let (
            insert_reservation,
            find_key,
            charge,
            charge_existing,
            used_of,
            lock_reservation,
            lines_of,
        ) = futures::try_join!(
            // The reservation and its lines, in one round trip; with state `charged` (a final
            // cost) also its usage rows.
            client.prepare(
                "WITH reservation AS (
                     INSERT INTO reservations (subject, chatflow, idempotency_key, state,
                                               created_us, expires_us, updated_us)
                     VALUES ($1::text, $2::text, $3::text, $11::text, $4::int8, $5::int8, $4::int8)
                     ON CONFLICT (subject, idempotency_key)
                         WHERE idempotency_key IS NOT NULL AND state <> 'refunded'
                     DO NOTHING
                     RETURNING id
                 ), line AS (
                     SELECT * FROM unnest($6::int4[], $7::text[], $8::text[], $9::int8[],
                                          $10::int8[])
                         AS line (idx, policy, bucket, window_start, amount)
                 ), held AS (
                     INSERT INTO reservation_lines
                         (reservation_id, idx, policy, bucket, window_start, amount)
                     SELECT reservation.id, line.*
                     FROM reservation, line
                 ), logged AS (
                     INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy,
                                        credits, tokens, outcome)
                     SELECT $4::int8, reservation.id, $1::text, $2::text, line.policy,
                            line.amount, 0, $11::text
                     FROM reservation, line
                     WHERE $11::text = 'charged'
                     ORDER BY line.idx
                 )
                 SELECT id FROM reservation"
            ),
            client.prepare(
                "SELECT id, state FROM reservations
                 WHERE subject = $1::text AND idempotency_key = $2::text AND state <> 'refunded'"
            ),
            // The row is locked even when the WHERE refuses the update: the check is exact.
            client.prepare(
                "INSERT INTO buckets AS b (policy, bucket, window_start, used, own_limit)
                 VALUES ($1::text, $2::text, $3::int8, $4::int8, $6::int8)
                 ON CONFLICT (policy, bucket, window_start)
                 DO UPDATE SET used = b.used + EXCLUDED.used, own_limit = EXCLUDED.own_limit
                     WHERE b.used < $5::int8 AND b.used <= $5::int8 - EXCLUDED.used
                 RETURNING used"
            ),
            // An amount a new bucket could not take may still fit one an admin gave credits to
            // (a negative `used`): only an existing row is charged.
            client.prepare(
                "UPDATE buckets AS b SET used = b.used + $4::int8, own_limit = $6::int8
                 WHERE b.policy = $1::text AND b.bucket = $2::text AND b.window_start = $3::int8
                   AND b.used < $5::int8 AND b.used <= $5::int8 - $4::int8
                 RETURNING used"
            ),
            client.prepare(
                "SELECT used FROM buckets
                 WHERE policy = $1::text AND bucket = $2::text AND window_start = $3::int8"
            ),
            client.prepare(
                "SELECT state, subject, chatflow FROM reservations WHERE id = $1::int8 FOR UPDATE"
            ),
            client.prepare(
                "SELECT idx, policy, bucket, window_start, amount FROM reservation_lines
                 WHERE reservation_id = $1::int8 ORDER BY idx"
            ),
        )?;
        let (lock_buckets, set_used, lock_reservations, close_many, lines_of_many, insert_many) = futures::try_join!(
            // A batch's buckets, created if missing and locked in byte order (the order of
            // `lock_order`, whatever the database's collation); whether this created each (an
            // updated row's `xmax` is this transaction).
            client.prepare(
                "INSERT INTO buckets AS b (policy, bucket, window_start, used)
                 SELECT k.policy, k.bucket, k.window_start, 0
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS k (policy, bucket, window_start)
                 ORDER BY k.policy COLLATE \"C\", k.bucket COLLATE \"C\", k.window_start
                 ON CONFLICT (policy, bucket, window_start) DO UPDATE SET used = b.used
                 RETURNING policy, bucket, window_start, used, b.xmax = 0"
            ),
            // A batch's final bucket values (its buckets are locked); the own limit only where
            // a reserve of the batch set one (or set none). The buckets the batch created and
            // then charged nothing (its reserves on them refused) are deleted: as if never
            // locked, as on SQLite, where a refused reserve writes nothing.
            client.prepare(
                "WITH unused AS (
                     DELETE FROM buckets AS d
                     USING unnest($7::text[], $8::text[], $9::int8[])
                         AS g (policy, bucket, window_start)
                     WHERE d.policy = g.policy AND d.bucket = g.bucket
                       AND d.window_start = g.window_start
                 )
                 UPDATE buckets AS b SET used = v.used,
                     own_limit = CASE WHEN v.reserved THEN v.own_limit ELSE b.own_limit END
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int8[])
                      AS v (policy, bucket, window_start, used, reserved, own_limit)
                 WHERE b.policy = v.policy AND b.bucket = v.bucket
                   AND b.window_start = v.window_start"
            ),
            client.prepare(
                "SELECT id, state, subject, chatflow FROM reservations
                 WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE"
            ),
            // Every settle and refund a batch decided, in one statement: the reservations'
            // states, the lines whose amount changes, and the usage rows (in input order).
            // A batch closes a reservation at most once (a closed one is final).
            client.prepare(
                "WITH finished AS (
                     UPDATE reservations AS r
                     SET state = f.state, tokens = f.tokens, updated_us = f.now
                     FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[])
                          AS f (id, state, tokens, now)
                     WHERE r.id = f.id
                 ), reheld AS (
                     UPDATE reservation_lines AS l SET amount = u.amount
                     FROM unnest($5::int8[], $6::int4[], $7::int8[])
                          AS u (reservation_id, idx, amount)
                     WHERE l.reservation_id = u.reservation_id AND l.idx = u.idx
                       AND l.amount <> u.amount
                 )
                 INSERT INTO usage
                     (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
                 SELECT u.time_us, u.reservation_id, u.subject, u.chatflow, u.policy, u.credits,
                        u.tokens, u.outcome
                 FROM unnest($8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[],
                             $13::int8[], $14::int8[], $15::text[]) WITH ORDINALITY
                      AS u (time_us, reservation_id, subject, chatflow, policy, credits, tokens,
                            outcome, n)
                 ORDER BY u.n"
            ),
            client.prepare(
                "SELECT reservation_id, idx, policy, bucket, window_start, amount
                 FROM reservation_lines WHERE reservation_id = ANY($1::int8[])
                 ORDER BY reservation_id, idx"
            ),
            // Many reservations without an idempotency key and their lines (line.n: the
            // 1-based position of its reservation), and the usage rows of those `charged` (a
            // final cost); their ids in input order. The ids are taken before inserting, so no
            // order of RETURNING rows is relied on.
            client.prepare(
                "WITH input AS (
                     SELECT nextval('reservations_id_seq') AS id, r.*
                     FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $11::text[])
                          WITH ORDINALITY
                          AS r (subject, chatflow, created_us, expires_us, state, n)
                 ), reservation AS (
                     INSERT INTO reservations (id, subject, chatflow, state,
                                               created_us, expires_us, updated_us)
                     SELECT id, subject, chatflow, state, created_us, expires_us, created_us
                     FROM input
                 ), line AS (
                     SELECT * FROM unnest($5::int8[], $6::int4[], $7::text[], $8::text[],
                                          $9::int8[], $10::int8[])
                          AS line (n, idx, policy, bucket, window_start, amount)
                 ), held AS (
                     INSERT INTO reservation_lines
                         (reservation_id, idx, policy, bucket, window_start, amount)
                     SELECT input.id, line.idx, line.policy, line.bucket, line.window_start,
                            line.amount
                     FROM line JOIN input ON input.n = line.n
                 ), logged AS (
                     INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy,
                                        credits, tokens, outcome)
                     SELECT input.created_us, input.id, input.subject, input.chatflow,
                            line.policy, line.amount, 0, input.state
                     FROM line JOIN input ON input.n = line.n
                     WHERE input.state = 'charged'
                     ORDER BY line.n, line.idx
                 )
                 SELECT id FROM input ORDER BY n"
            ),
        )?;
        let (adjust, rehold, log, finish, sweep, policy_usage) = futures::try_join!(
            client.prepare(
                "UPDATE buckets SET used = CASE
                     WHEN $4::int8 > 0 AND used > 9223372036854775807 - $4::int8
                     THEN 9223372036854775807 ELSE used + $4::int8 END
                 WHERE policy = $1::text AND bucket = $2::text AND window_start = $3::int8
                 RETURNING used"
            ),
            client.prepare(
                "UPDATE reservation_lines SET amount = u.amount
                 FROM unnest($2::int4[], $3::int8[]) AS u (idx, amount)
                 WHERE reservation_id = $1::int8 AND reservation_lines.idx = u.idx"
            ),
            client.prepare(
                "INSERT INTO usage
                     (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
                 SELECT $1::int8, $2::int8, $3::text, $4::text, u.policy, u.credits, $5::int8, $6::text
                 FROM unnest($7::text[], $8::int8[]) WITH ORDINALITY AS u (policy, credits, n)
                 ORDER BY u.n"
            ),
            client.prepare(
                "UPDATE reservations SET state = $2::text, tokens = $3::int8, updated_us = $4::int8
                 WHERE id = $1::int8"
            ),
            client.prepare(
                "WITH expired AS (
                     UPDATE reservations SET state = 'expired', updated_us = $1::int8
                     WHERE state = 'reserved' AND expires_us <= $1::int8
                     RETURNING id, subject, chatflow
                 ), logged AS (
                     INSERT INTO usage
                         (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
                     SELECT $1::int8, e.id, e.subject, e.chatflow, l.policy, l.amount, 0, 'expired'
                     FROM expired e JOIN reservation_lines l ON l.reservation_id = e.id
                     ORDER BY e.id, l.idx
                 )
                 SELECT count(*) FROM expired"
            ),
            client.prepare(
                // The sum is numeric: buckets saturated at 2^63 - 1 (a settle of absurd token
                // counts) would overflow an int8, and fail every read of the policy. A bucket's
                // own limit counts while an override ($4) still gives it (`Limits::of_bucket`).
                "SELECT LEAST(COALESCE(SUM(used), 0), 9223372036854775807)::int8,
                        COUNT(*) FILTER (WHERE used >= CASE WHEN own_limit = ANY($4::int8[])
                                                            THEN own_limit ELSE $3::int8 END)
                 FROM buckets WHERE policy = $1::text AND window_start = $2::int8"
            ),
        )?;
        let (take_rates, prune_shared, begin_turns, end_turns, renew_turns) = futures::try_join!(
            // Requests of allowances, on the database's clock, which every replica shares:
            // $2 requests of key $1 (distinct), $3 the interval and $4 the burst, in
            // microseconds. Each request moves the key's instant one interval on unless that is
            // more than the burst ahead (GCRA), so the first few are admitted and the rest not.
            // How many were, and how far ahead the instant is then. The upsert locks the keys'
            // rows in byte order, as every statement on the table does, so replicas taking at
            // once queue on them and never deadlock; a key whose requests are all refused is
            // written unchanged, locked all the same.
            // The instant kept is scaled by the ratio of the intervals when the rule's rate was
            // edited since it was counted (`every_us`), as `proxy::ratelimit::rescaled` does:
            // 60 sent under 60 a minute are 60 under 60 an hour, not a minute's worth.
            // A key's position in the arrays reaches the update as `-EXCLUDED.taken` (an update
            // looking the key up in the arrays instead took time quadratic in the keys: 1.9 s
            // for 4,096); a row inserted keeps it, and its count is worked out on return.
            client.prepare(
                "WITH now AS (
                     SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS us
                 )
                 INSERT INTO rate_limits AS r (key, full_at_us, taken, every_us)
                 SELECT asked.key,
                        now.us + least(asked.n, asked.burst / asked.every + 1) * asked.every,
                        -asked.i,
                        asked.every
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY
                          AS asked (key, n, every, burst, i),
                      now
                 ORDER BY asked.key COLLATE \"C\"
                 ON CONFLICT (key) DO UPDATE SET (full_at_us, taken, every_us) = (
                     SELECT base.us + admitted.n * asked.every, admitted.n, asked.every
                     FROM (SELECT ($2::int8[])[i] AS n, ($3::int8[])[i] AS every,
                                  ($4::int8[])[i] AS burst
                           FROM (SELECT (-EXCLUDED.taken)::int4 AS i) position) asked,
                          now,
                          -- At most one period ahead: an instant kept from a longer period
                          -- counts as spent under the new rule (see proxy::ratelimit).
                          LATERAL (SELECT greatest(r.full_at_us - now.us, 0) AS us) kept,
                          LATERAL (SELECT now.us + CASE
                                       WHEN r.every_us IS NULL OR r.every_us = asked.every
                                           THEN least(kept.us, asked.burst + asked.every)
                                       ELSE least(kept.us::numeric * asked.every
                                                      / greatest(r.every_us, 1),
                                                  asked.burst + asked.every)::int8
                                   END AS us) base,
                          LATERAL (SELECT CASE WHEN base.us - now.us > asked.burst THEN 0
                                          ELSE least(asked.n, (asked.burst - (base.us - now.us))
                                                              / asked.every + 1)
                                          END AS n) admitted)
                 RETURNING r.key, r.full_at_us - (SELECT us FROM now),
                           CASE WHEN r.taken >= 0 THEN r.taken
                                ELSE least(($2::int8[])[(-r.taken)::int4],
                                           ($4::int8[])[(-r.taken)::int4]
                                           / ($3::int8[])[(-r.taken)::int4] + 1)
                           END"
            ),
            // Allowances whose instant has passed, and turns whose lease has. Rows another
            // statement holds are skipped (the next sweep gets them): locking the rest in the
            // order of the table would deadlock with a take or a batch of turns, which lock
            // several rows in byte order.
            client.prepare(
                "WITH now AS (
                     SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS us
                 ), rates AS (
                     DELETE FROM rate_limits WHERE key IN (
                         SELECT key FROM rate_limits WHERE full_at_us < (SELECT us FROM now)
                         FOR UPDATE SKIP LOCKED)
                 )
                 DELETE FROM chat_turns WHERE chat IN (
                     SELECT chat FROM chat_turns WHERE expires_us < (SELECT us FROM now)
                     FOR UPDATE SKIP LOCKED)"
            ),
            // The turns of chats $1 (distinct) for replica $2 as its turns $3, leased for $4
            // microseconds; the numbers of those taken. A chat is taken when it has no turn, or
            // one whose lease passed, or one of this replica (which holds none of its own while
            // it asks: that row's end is on its way).
            client.prepare(
                "WITH now AS (
                     SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS us
                 )
                 INSERT INTO chat_turns (chat, replica, turn, expires_us)
                 SELECT asked.chat, $2::text, asked.turn, now.us + $4::int8
                 FROM unnest($1::text[], $3::int8[]) AS asked (chat, turn), now
                 ORDER BY asked.chat COLLATE \"C\"
                 ON CONFLICT (chat) DO UPDATE
                     SET replica = EXCLUDED.replica, turn = EXCLUDED.turn,
                         expires_us = EXCLUDED.expires_us
                     WHERE chat_turns.replica = EXCLUDED.replica
                        OR chat_turns.expires_us <= (SELECT us FROM now)
                 RETURNING turn"
            ),
            // Replica $1's turns $2 end (a turn taken over since has another number). Rows are
            // locked in byte order of their chats, as every statement on this table locks them
            // (the sweep skips locked rows): no deadlock with another replica's batch asking
            // for the same chats.
            client.prepare(
                "WITH doomed AS (
                     SELECT chat FROM chat_turns
                     WHERE replica = $1::text AND turn = ANY($2::int8[])
                     ORDER BY chat COLLATE \"C\" FOR UPDATE
                 )
                 DELETE FROM chat_turns
                 WHERE chat IN (SELECT chat FROM doomed)
                   AND replica = $1::text AND turn = ANY($2::int8[])"
            ),
            // Replica $1's turns $2 (those it holds) are leased $3 microseconds from now, and
            // its other rows deleted.
            // Locked in byte order first (see the ends); the held turns are a hashed set.
            client.prepare(
                "WITH mine AS (
                     SELECT chat, turn IN (SELECT unnest($2::int8[])) AS held
                     FROM chat_turns WHERE replica = $1::text
                     ORDER BY chat COLLATE \"C\" FOR UPDATE
                 ), gone AS (
                     DELETE FROM chat_turns
                     WHERE chat IN (SELECT chat FROM mine WHERE NOT held) AND replica = $1::text
                 )
                 UPDATE chat_turns
                 SET expires_us = (extract(epoch FROM clock_timestamp()) * 1000000)::int8 + $3::int8
                 WHERE chat IN (SELECT chat FROM mine WHERE held) AND replica = $1::text"
            ),
        )?;
        let (prune_reservations, prune_usage, prune_buckets) = futures::try_join!(
            // One chunk of reservations after a cursor, in id order, and of those the closed
            // ones last changed before the cutoff deleted with their lines; the chunk's size,
            // last id and oldest creation time. Rows locked by a settle or refund are skipped
            // (the next run gets them), so a prune never waits on a request's write, nor two
            // replicas pruning at once on each other.
            client.prepare(
                "WITH chunk AS (
                     SELECT id, created_us FROM reservations WHERE id > $1::int8
                     ORDER BY id LIMIT $3::int8
                     FOR UPDATE SKIP LOCKED
                 ), gone AS (
                     DELETE FROM reservations r USING chunk
                     WHERE r.id = chunk.id AND r.state <> 'reserved' AND r.updated_us < $2::int8
                     RETURNING r.id
                 ), lines AS (
                     DELETE FROM reservation_lines l USING gone WHERE l.reservation_id = gone.id
                 ), adjusted AS (
                     DELETE FROM adjustments a USING gone WHERE a.reservation_id = gone.id
                 )
                 SELECT (SELECT count(*) FROM gone), count(*), COALESCE(max(id), 0)::int8,
                        COALESCE(min(created_us), 0)::int8
                 FROM chunk"
            ),
            // The oldest usage rows before the cutoff, through the time index.
            client.prepare(
                "DELETE FROM usage WHERE id IN (
                     SELECT id FROM usage WHERE time_us < $1::int8
                     ORDER BY time_us LIMIT $2::int8
                     FOR UPDATE SKIP LOCKED)"
            ),
            // Buckets of windows that started before $1 (not `Never`'s, at the epoch), through
            // `buckets_by_start`; requests only touch current windows, so nothing waits.
            client.prepare(
                "DELETE FROM buckets WHERE (policy, bucket, window_start) IN (
                     SELECT policy, bucket, window_start FROM buckets
                     WHERE window_start > 0 AND window_start < $1::int8
                     ORDER BY window_start LIMIT $2::int8
                     FOR UPDATE SKIP LOCKED)"
            ),
        )?;
        Ok(Self {
            prune_reservations,
            prune_usage,
            prune_buckets,
            lock_buckets,
            set_used,
            lock_reservations,
            close_many,
            lines_of_many,
            insert_many,
            insert_reservation,
            find_key,
            charge,
            charge_existing,
            used_of,
            lock_reservation,
            lines_of,
            adjust,
            rehold,
            log,
            finish,
            sweep,
            policy_usage,
            take_rates,
            prune_shared,
            begin_turns,
            end_turns,
            renew_turns,
        })
    }
}

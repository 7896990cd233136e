//! A small connection pool: a semaphore bounds the connections, idle ones wait on a stack
//! with their statements prepared. A few dozen lines instead of a dependency.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, IsolationLevel, Transaction};

use super::tls::TlsParams;

use super::schema::{Statements, create_schema};
use crate::ledger::LedgerError;

/// Connections per ledger (per replica).
const POOL_SIZE: usize = 8;
/// Connections reads (balances, listings, the usage log) may hold at once: the rest stay free
/// for the writers, so that slow reads never hold up a reservation.
const READERS: usize = POOL_SIZE - 2;
/// Longest a read may run; past it the query is cancelled and its connection closed.
pub(super) const READ_LIMIT: Duration = Duration::from_secs(30);
/// Used when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Used when the URL sets no `tcp_user_timeout`: a connection whose writes go unacknowledged
/// this long (a partition, a server gone without a word) is closed, instead of after the
/// kernel's ~15 minutes of retransmissions with a writer and its batch waiting on it.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle time before TCP keepalive probes, unless the URL sets `keepalives_idle` (libpq's and
/// tokio-postgres's default is two hours): a pooled connection a NAT or a failover dropped is
/// found dead in the background, within this plus [`TCP_USER_TIMEOUT`], instead of failing the
/// batch that next takes it 30 s later.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(15);
/// The library's default `keepalives_idle`, to tell whether the URL set one.
const LIBRARY_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// `idle_in_transaction_session_timeout` for flowgate's sessions where neither the role, the
/// database nor the URL sets one. A replica frozen inside a batch (its node gone, its VM paused)
/// leaves its session idle in the transaction, with the row locks of the budgets it touched,
/// until the server notices: by TCP keepalive, two hours. Every other replica's reserves on
/// those budgets would wait as long. flowgate's transactions never sit idle: their statements
/// follow each other within a round trip.
const IDLE_IN_TRANSACTION: &str = "10s";

/// One pooled connection and its prepared statements.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) st: Statements,
    /// A transaction begun by hand (`BEGIN` sent), or a query whose answer was not read yet,
    /// and not yet known to be over (its user failed or was cancelled). The pool closes such a
    /// connection instead of keeping it: that ends the transaction, and its row locks, at once,
    /// and no later user waits behind a query given up on.
    pub(super) open: bool,
}

impl Conn {
    async fn prepare(client: Client) -> Result<Self, LedgerError> {
        let st = Statements::prepare(&client).await?;
        Ok(Self {
            client,
            st,
            open: false,
        })
    }
}

/// Connects; the connection's task runs on `runtime`. Called on the pool's runtime (see
/// [`Pool::get`]), so that its socket is registered there too.
async fn open_client(
    config: &Config,
    tls: &TlsParams,
    runtime: &Handle,
) -> Result<Client, LedgerError> {
    let (client, connection) = config.connect(connector(tls).await?).await?;
    runtime.spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "ledger PostgreSQL connection ended");
        }
    });
    // In one round trip. The idle limit only where the setting is off: a limit the role, the
    // database or the URL's `options` set is theirs to keep. READ COMMITTED whatever they set,
    // for the statements run outside [`begin`]'s transactions too (rate takes, chat turns): a
    // stricter level fails contended ones with serialization errors, which nothing retries.
    client
        .execute(
            "SELECT set_config('default_transaction_isolation', 'read committed', false), \
                 CASE WHEN current_setting('idle_in_transaction_session_timeout') IN ('0', '0ms') \
                 THEN set_config('idle_in_transaction_session_timeout', $1, false) END",
            &[&IDLE_IN_TRANSACTION],
        )
        .await?;
    Ok(client)
}

/// The TLS connector, built for each connection as libpq reads its files for each (rotated
/// certificates and keys are used from the next connection on), off the runtime's threads: it
/// reads files, the system's roots a whole directory of them.
async fn connector(
    tls: &TlsParams,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LedgerError> {
    let tls = tls.clone();
    tokio::task::spawn_blocking(move || tls.connector())
        .await
        .map_err(|_| LedgerError::Stopped)?
}

/// A transaction at READ COMMITTED, whatever the database's or role's
/// `default_transaction_isolation`: the ledger's exactness comes from its locks and conditional
/// writes, and a stricter level would only fail the contended ones with serialization errors.
pub(super) async fn begin(client: &mut Client) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
}

/// `config` with flowgate's timeouts and application name where the URL sets none.
fn defaults(mut config: Config) -> Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_idle() == LIBRARY_KEEPALIVES_IDLE {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_application_name().is_none() {
        config.application_name("flowgate-ledger");
    }
    config
}

/// A fixed set of connections, created on demand and reused.
pub(super) struct Pool {
    config: Config,
    /// TLS as the URL asks ([`super::tls`]); `sslmode=disable` never uses it.
    tls: TlsParams,
    runtime: Handle,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    /// Of `permits`, those reads may hold ([`READERS`]).
    reads: Semaphore,
}

impl Pool {
    /// Connects, creates the schema if it is missing, and keeps that first connection.
    pub(super) async fn connect(config: Config, tls: TlsParams) -> Result<Self, LedgerError> {
        let config = defaults(config);
        let runtime = Handle::current();
        let mut client = open_client(&config, &tls, &runtime).await?;
        create_schema(&mut client).await?;
        let first = Conn::prepare(client).await?;
        Ok(Self {
            config,
            tls,
            runtime,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(POOL_SIZE),
            reads: Semaphore::new(READERS),
        })
    }

    /// Builds the indexes added after tables may have grown ([`super::schema::late_indexes`]) on
    /// a connection of its own, in the background: the ledger serves meanwhile.
    pub(super) fn build_late_indexes(&self) {
        let (config, tls, runtime) = (self.config.clone(), self.tls.clone(), self.runtime.clone());
        self.runtime.spawn(async move {
            let built = async {
                let client = open_client(&config, &tls, &runtime).await?;
                super::schema::late_indexes(&client)
                    .await
                    .map_err(LedgerError::from)
            }
            .await;
            if let Err(error) = built {
                tracing::warn!(%error, "building the usage log's chatflow index failed: a chatflow's usage is read without it");
            }
        });
    }

    /// A pool of at most `size` connections, opened when first asked for (the schema exists:
    /// [`Pool::connect`] made it).
    pub(super) fn lazy(config: Config, tls: TlsParams, size: usize) -> Self {
        Self {
            config: defaults(config),
            tls,
            runtime: Handle::current(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            // Its users are the shared tasks' rounds, which are writes.
            reads: Semaphore::new(0),
        }
    }

    /// A connection for a read, among at most [`READERS`] at once. It counts as [`Conn::open`]
    /// until the read marks it done: a read given up on (its caller gone, [`read`] timed out)
    /// closes the connection, and the server cancels the query, instead of a writer waiting
    /// behind it.
    pub(super) async fn get_for_read(&self) -> Result<Pooled<'_>, LedgerError> {
        let read = self
            .reads
            .acquire()
            .await
            .map_err(|_| LedgerError::Stopped)?;
        let mut conn = self.get().await?;
        conn.open = true;
        conn._read = Some(read);
        Ok(conn)
    }

    pub(super) async fn get(&self) -> Result<Pooled<'_>, LedgerError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| LedgerError::Stopped)?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|conn| !conn.client.is_closed());
            idle.pop()
        };
        let conn = match idle {
            Some(conn) => conn,
            // On the pool's runtime, not that of whichever thread asked: a socket belongs to the
            // runtime it was opened on, and a proxy thread's runtime ends before the pool.
            None => {
                let (config, tls, runtime) =
                    (self.config.clone(), self.tls.clone(), self.runtime.clone());
                self.runtime
                    .spawn(async move {
                        Conn::prepare(open_client(&config, &tls, &runtime).await?).await
                    })
                    .await
                    .map_err(|_| LedgerError::Stopped)??
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self,
            _permit: permit,
            _read: None,
        })
    }
}

/// A connection lent out; it goes back to the pool when dropped (a `Transaction` left open by
/// a cancelled future is rolled back first, as tokio-postgres queues the ROLLBACK; a batch's
/// hand-begun transaction left open closes the connection instead, see [`Conn::open`]).
pub(super) struct Pooled<'p> {
    conn: Option<Conn>,
    pool: &'p Pool,
    _permit: SemaphorePermit<'p>,
    /// Held by a read ([`Pool::get_for_read`]).
    _read: Option<SemaphorePermit<'p>>,
}

/// Runs `query`, a read on a connection from [`Pool::get_for_read`], within [`READ_LIMIT`].
pub(super) async fn read<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(READ_LIMIT, query).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(LedgerError::ReadTimeout(READ_LIMIT)),
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Only `drop` takes the connection out.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        // A transaction left open holds its bucket and reservation locks until it ends. Kept
        // idle, it would hold them (other replicas' reserves on those budgets waiting) until
        // some later `get` took this connection and rolled it back; dropped, the client closes
        // and PostgreSQL ends the transaction now. A reconnect is the price, on a rare path.
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.open && !conn.client.is_closed() {
            // Closed rather than kept, the client still waits for the server's answer before
            // it lets go of the socket: ask the server to cancel, so that a database that hangs
            // does not collect the connections of requests that gave up.
            let cancel = conn.client.cancel_token();
            let tls = self.pool.tls.clone();
            self.pool.runtime.spawn(async move {
                if let Ok(tls) = connector(&tls).await {
                    let _ = cancel.cancel_query(tls).await;
                }
            });
            return;
        }
        if !conn.client.is_closed() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn reads_leave_connections_to_the_writers() {
        // A server that accepts and never answers: each connection attempt hangs, holding the
        // permits its user took, as reads stuck on a slow query would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("flowgate")
            .connect_timeout(Duration::from_secs(60));
        let tls = super::super::tls::split("postgres://127.0.0.1/l?sslmode=disable")
            .expect("valid")
            .1;
        let pool = Arc::new(Pool {
            config,
            tls,
            runtime: Handle::current(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(POOL_SIZE),
            reads: Semaphore::new(READERS),
        });
        for _ in 0..POOL_SIZE * 2 {
            let pool = pool.clone();
            tokio::spawn(async move {
                let _ = pool.get_for_read().await;
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            pool.reads.available_permits(),
            0,
            "the reads took their share"
        );
        assert_eq!(
            pool.permits.available_permits(),
            POOL_SIZE - READERS,
            "and left the rest to the writers"
        );
    }
}

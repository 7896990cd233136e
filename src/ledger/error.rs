//! Why a ledger operation failed, and whether trying again may help.

use super::{ReservationId, postgres, sqlite};

/// Why a ledger operation failed. Running out of credits is not an error
/// ([`ReserveOutcome::Exhausted`]).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("SQLite ledger: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A group commit failed; every operation in the batch failed with it.
    #[error("ledger batch failed: {message}")]
    Commit { message: String, transient: bool },
    #[error("cannot start the SQLite ledger's writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The ledger's writer has ended (the ledger is shutting down).
    #[error("the ledger has stopped")]
    Stopped,
    /// With its causes in the message: tokio-postgres' own is only "db error" or "error
    /// performing TLS handshake".
    #[error("PostgreSQL ledger: {}", crate::telemetry::report(.0))]
    Postgres(tokio_postgres::Error),
    /// The TLS the ledger URL asks for cannot be set up (a file missing, no roots).
    #[error("PostgreSQL ledger TLS: {0}")]
    Tls(String),
    #[error("the ledger database has schema version {found}; this flowgate knows up to {known}")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("reservation {0} does not exist")]
    UnknownReservation(ReservationId),
    #[error("reservation {id} has {lines} budget lines but {given} amounts were given")]
    LineCount {
        id: ReservationId,
        lines: usize,
        given: usize,
    },
    #[error("{what} {value} is larger than the ledger's counters hold (2^63-1)")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
    /// SQLite kept another journal mode than WAL (a filesystem without shared memory or
    /// locking): reads would block the writer's commits, and two processes could corrupt it.
    #[error(
        "the SQLite ledger {path} cannot use WAL (journal_mode stayed {mode}): put it on a local \
         filesystem"
    )]
    NoWal {
        path: std::path::PathBuf,
        mode: String,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{} already exists: a backup never overwrites a file", .0.display())]
    BackupExists(std::path::PathBuf),
    #[error("cannot create the backup file {}: {}", .0.display(), .1)]
    BackupFile(std::path::PathBuf, #[source] std::io::Error),
    /// Too little free space where a backup would write its copy.
    #[error(
        "a backup needs about {needed_mib} MiB free in {}, and {available_mib} MiB are: the copy \
         would fill the volume (and with it the ledger's, if they are one); back up to a file on \
         another volume",
        .dir.display()
    )]
    BackupNoRoom {
        dir: std::path::PathBuf,
        needed_mib: u64,
        available_mib: u64,
    },
    /// A read ran longer than its limit and was cancelled.
    #[error("the ledger did not answer a read within {0:?}")]
    ReadTimeout(std::time::Duration),
    /// A reservation was not committed within its limit; it is refunded if it lands later.
    #[error("the ledger did not commit a reservation within {0:?}")]
    WriteTimeout(std::time::Duration),
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

impl LedgerError {
    /// Whether retrying later may succeed (database busy, connection lost, server restarting).
    pub fn transient(&self) -> bool {
        match self {
            Self::Sqlite(e) => sqlite::is_transient(e),
            Self::Commit { transient, .. } => *transient,
            Self::Postgres(e) => postgres::is_transient(e),
            Self::Spawn(_)
            | Self::Stopped
            | Self::SchemaTooNew { .. }
            | Self::UnknownReservation(_)
            | Self::LineCount { .. }
            | Self::OutOfRange { .. }
            | Self::Corrupt(_)
            | Self::NoWal { .. }
            | Self::Unsupported(_)
            | Self::BackupExists(_)
            | Self::BackupFile(..)
            | Self::BackupNoRoom { .. }
            | Self::Tls(_) => false,
            Self::ReadTimeout(_) | Self::WriteTimeout(_) => true,
        }
    }

    /// A stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SqliteError",
            Self::Commit { .. } => "CommitFailed",
            Self::Spawn(_) | Self::Stopped => "Stopped",
            Self::Postgres(_) => "PostgresError",
            Self::Tls(_) => "PostgresTls",
            Self::SchemaTooNew { .. } => "SchemaTooNew",
            Self::UnknownReservation(_) => "UnknownReservation",
            Self::LineCount { .. } => "LineCount",
            Self::OutOfRange { .. } => "OutOfRange",
            Self::Corrupt(_) => "Corrupt",
            Self::NoWal { .. } => "NoWal",
            Self::Unsupported(_) => "Unsupported",
            Self::BackupExists(_) => "BackupExists",
            Self::BackupFile(..) => "BackupFile",
            Self::BackupNoRoom { .. } => "BackupNoRoom",
            Self::ReadTimeout(_) => "ReadTimeout",
            Self::WriteTimeout(_) => "WriteTimeout",
        }
    }
}

//! The writer's watch on its ledger file: removed or replaced underneath, every write fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::BatchFailure;

/// The ledger file the writer opened, looked at again before each batch (a `stat`, next to the
/// batch's disk sync): removed or replaced underneath (a restore into a running pod, an `rm`),
/// the writer would go on committing into the file it holds open, which nothing will ever read
/// again, and the next start would open whatever is there now. From then on every write fails,
/// for good: charges are refused (503) until flowgate is restarted on the file now there.
pub(super) struct FileWatch {
    path: PathBuf,
    /// Device and inode at open.
    opened: Option<(u64, u64)>,
    moved: bool,
    /// When a failure to look was last logged: once a minute at most, not once a batch.
    warned: Option<Instant>,
}

impl FileWatch {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            opened: Self::identity(path),
            moved: false,
            warned: None,
        }
    }

    fn identity(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// Whether the file at the path is another one, or none: only a file that is not there
    /// (`NotFound`) or is another file says so. Any other failure to look (a network volume's
    /// passing EIO or ESTALE) is checked again at the next batch, not taken for a replaced file.
    fn replaced(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.dev(), m.ino())) != self.opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(error) => {
                if self
                    .warned
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    self.warned = Some(Instant::now());
                    tracing::warn!(path = %self.path.display(), %error, "could not look at the ledger file; looking again");
                }
                false
            }
        }
    }

    /// Why every write now fails, once the file was found removed or replaced. Found so, the
    /// write-ahead log beside the name (`-wal`, still the one `conn` writes) is emptied into the
    /// file `conn` holds: SQLite keeps a moved database's log when it closes it, and the next
    /// start would replay it onto the file now there — another database's pages, a corrupt or
    /// silently mixed ledger.
    pub(super) fn moved(&mut self, conn: &rusqlite::Connection) -> Option<BatchFailure> {
        if !self.moved && self.opened.is_some() && self.replaced() {
            self.moved = true;
            let emptied = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
            match emptied {
                Ok(0) => {
                    tracing::error!(path = %self.path.display(), "the ledger file was removed or replaced while flowgate ran: every charge is refused until flowgate restarts on the file now there")
                }
                Ok(_) => {
                    tracing::error!(path = %self.path.display(), "the ledger file was removed or replaced while flowgate ran: every charge is refused until flowgate restarts; its write-ahead log could not be emptied, so remove the -wal and -shm files beside it before the restart")
                }
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error, "the ledger file was removed or replaced while flowgate ran: every charge is refused until flowgate restarts; its write-ahead log could not be emptied, so remove the -wal and -shm files beside it before the restart")
                }
            }
        }
        self.moved.then(|| BatchFailure {
            message: format!(
                "the ledger file {} was removed or replaced while flowgate ran; restart flowgate",
                self.path.display()
            ),
            transient: false,
        })
    }
}

//! The writer's watch on its ledger file: removed or replaced underneath, every write fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BatchFailure;

/// The ledger file the writer opened, looked at again at most once a second: removed or
/// replaced underneath (a restore into a running pod, an `rm`), the writer would go on committing
/// into the file it holds open, which nothing will ever read again, and the next start would open
/// whatever is there now. From then on every write fails, for good: charges are refused (503)
/// until flowgate is restarted on the file now there.
pub(super) struct FileWatch {
    path: PathBuf,
    /// Device and inode at open.
    opened: Option<(u64, u64)>,
    checked: std::time::Instant,
    moved: bool,
}

impl FileWatch {
    pub(super) const EVERY: Duration = Duration::from_secs(1);

    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            opened: Self::identity(path),
            checked: std::time::Instant::now(),
            moved: false,
        }
    }

    fn identity(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// Whether the file at the path is another one, or none: only a file that is not there
    /// (`NotFound`) or is another file says so. Any other failure to look (a network volume's
    /// passing EIO or ESTALE) is checked again the next second, not taken for a replaced file.
    fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.dev(), m.ino())) != self.opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "could not look at the ledger file; looking again");
                false
            }
        }
    }

    /// Why every write now fails, once the file was found removed or replaced.
    pub(super) fn moved(&mut self) -> Option<BatchFailure> {
        if !self.moved && self.opened.is_some() && self.checked.elapsed() >= Self::EVERY {
            self.checked = std::time::Instant::now();
            if self.replaced() {
                self.moved = true;
                tracing::error!(path = %self.path.display(), "the ledger file was removed or replaced while flowgate ran: every charge is refused until flowgate restarts on the file now there");
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

//! `flowgate ledger backup` of a SQLite ledger: a consistent copy (`VACUUM INTO`) that fits
//! beside what the volume needs, and leaves nothing when it fails.

use std::path::Path;

use rusqlite::Connection;

use super::{BUSY_TIMEOUT, JOURNAL_SIZE_LIMIT};
use crate::ledger::LedgerError;

/// See [`super::backup`]. Refuses a `path` that is not a flowgate ledger and a `dest` that
/// exists (SQLite would write into it).
pub(in crate::ledger) fn backup(path: &Path, dest: &Path) -> Result<(), LedgerError> {
    if dest.exists() {
        return Err(LedgerError::BackupExists(dest.to_path_buf()));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == 0 {
        return Err(LedgerError::Corrupt(format!(
            "{} is not a flowgate ledger (no schema)",
            path.display()
        )));
    }
    let pages: i64 = conn.query_row(
        "SELECT (page_count - freelist_count) * page_size \
         FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        [],
        |row| row.get(0),
    )?;
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let available = rustix::fs::statvfs(dir)
        .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize))
        .map_err(|e| LedgerError::Corrupt(format!("free space in {}: {e}", dir.display())))?;
    room_for_copy(dir, u64::try_from(pages).unwrap_or(0), available)?;
    // SQLite reads a name starting with `file:` as a URI, and would write the copy elsewhere
    // than the file claimed below.
    if dest.to_str().is_some_and(|d| d.starts_with("file:")) {
        return Err(LedgerError::Corrupt(format!(
            "backup path {} starts with 'file:', which SQLite reads as a URI: write ./{0}",
            dest.display()
        )));
    }
    let dest_text = dest.to_str().ok_or_else(|| {
        LedgerError::Corrupt(format!("backup path {} is not UTF-8", dest.display()))
    })?;
    // Claimed first (SQLite writes into an empty file): a backup to the same path at the same
    // time fails here, and never removes this one's copy when its own fails.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(LedgerError::BackupExists(dest.to_path_buf()));
        }
        Err(e) => return Err(LedgerError::BackupFile(dest.to_path_buf(), e)),
    }
    if let Err(error) = conn.execute("VACUUM INTO ?1", [dest_text]) {
        // What a failed copy leaves (SQLite truncates it, often to nothing) would open as a
        // new, empty ledger: every balance back to zero. This call created it.
        let _ = std::fs::remove_file(dest);
        return Err(error.into());
    }
    Ok(())
}

/// Refuses a backup whose copy (`needed` bytes: the ledger's pages in use) would leave less
/// than [`JOURNAL_SIZE_LIMIT`] free in `dir`: on the ledger's own volume (`backup -` writes its
/// copy beside the ledger) a full disk fails every charge while the copy lasts.
pub(super) fn room_for_copy(dir: &Path, needed: u64, available: u64) -> Result<(), LedgerError> {
    let needed = needed.saturating_add(JOURNAL_SIZE_LIMIT.unsigned_abs());
    if available >= needed {
        return Ok(());
    }
    Err(LedgerError::BackupNoRoom {
        dir: dir.to_path_buf(),
        needed_mib: needed.div_ceil(1 << 20),
        available_mib: available >> 20,
    })
}

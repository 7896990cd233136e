//! Secrets read from files — the default Flowise API key, the token client's secret — and read
//! again every [`RELOAD_EVERY`], so that rotating a mounted Kubernetes Secret needs no restart
//! (the kubelet swaps the files in place). The JWT key files are `SecretFile`s too
//! (`identity::key_files`).
//!
//! At start a file that cannot be read, or does not decode (empty, say), stops flowgate. Later, such
//! a file is reported once and the secret in use stays in use: a Secret being rewritten, or
//! deleted by mistake, does not take Flowise's key away from every request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// How often the files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Turns a file's bytes into its secret, or says what is wrong with them (the path is for the
/// message).
pub type Decode<T> = fn(&Path, &[u8]) -> Result<T, String>;

/// A secret, decoded into a `T`, that a file holds (or a fixed one).
pub struct SecretFile<T> {
    /// `None`: a fixed secret, never read again.
    source: Option<Source<T>>,
    current: ArcSwap<T>,
}

struct Source<T> {
    path: PathBuf,
    /// The setting that named the file, for the messages.
    setting: &'static str,
    decode: Decode<T>,
    state: Mutex<State>,
}

struct State {
    /// The bytes the secret in use was decoded from.
    loaded: Vec<u8>,
    /// The problem last reported, so that a bad file is reported once, not at every look.
    reported: Option<String>,
}

impl<T> SecretFile<T> {
    /// Reads `path` and decodes it with `decode`.
    pub fn load(
        path: &Path,
        setting: &'static str,
        decode: Decode<T>,
    ) -> Result<Arc<Self>, ConfigError> {
        let bytes = read(path).map_err(|problem| ConfigError { setting, problem })?;
        let value = decode(path, &bytes).map_err(|problem| ConfigError { setting, problem })?;
        Ok(Arc::new(Self {
            source: Some(Source {
                path: path.to_path_buf(),
                setting,
                decode,
                state: Mutex::new(State {
                    loaded: bytes,
                    reported: None,
                }),
            }),
            current: ArcSwap::from_pointee(value),
        }))
    }

    /// [`SecretFile::load`] of `path`, if one is configured, read again until `shutdown`
    /// ([`SecretFile::run_reload`]).
    pub fn watched(
        path: Option<&Path>,
        setting: &'static str,
        decode: Decode<T>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Arc<Self>>, ConfigError>
    where
        T: Send + Sync + 'static,
    {
        let Some(path) = path else {
            return Ok(None);
        };
        let secret = Self::load(path, setting, decode)?;
        tokio::spawn(secret.clone().run_reload(shutdown.clone()));
        Ok(Some(secret))
    }

    /// A secret no file holds (tests, and clients given their key directly).
    pub fn fixed(value: T) -> Arc<Self> {
        Arc::new(Self {
            source: None,
            current: ArcSwap::from_pointee(value),
        })
    }

    /// The secret in use; lock-free.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Reads the file again; true when it changed and the new secret is in use. A file that
    /// cannot be read or does not decode leaves the secret in use, and is reported once.
    pub fn reload(&self) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let mut state = source.state.lock().unwrap_or_else(PoisonError::into_inner);
        let decoded = read(&source.path).and_then(|bytes| {
            if bytes == state.loaded {
                return Ok(None);
            }
            (source.decode)(&source.path, &bytes).map(|value| Some((bytes, value)))
        });
        match decoded {
            Ok(None) => {
                state.reported = None;
                false
            }
            Ok(Some((bytes, value))) => {
                self.current.store(Arc::new(value));
                state.loaded = bytes;
                state.reported = None;
                tracing::info!(setting = source.setting, path = %source.path.display(), "secret file changed; the new secret is in use");
                true
            }
            Err(problem) => {
                if state.reported.as_ref() != Some(&problem) {
                    tracing::warn!(setting = source.setting, %problem, "secret file unusable; the secret read before stays in use");
                    state.reported = Some(problem);
                }
                false
            }
        }
    }

    /// Until `shutdown`: reads the file again every [`RELOAD_EVERY`]. Returns at once for a
    /// fixed secret.
    pub async fn run_reload(self: Arc<Self>, shutdown: CancellationToken)
    where
        T: Send + Sync + 'static,
    {
        if self.source.is_none() {
            return;
        }
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {
                    // Off the runtime's threads: a read of a network file system may block.
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A secret kept as text, without surrounding white space; empty is no secret.
pub fn text(path: &Path, bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format!("{} is not UTF-8 text", path.display()))?
        .trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(path: &Path, bytes: &[u8]) -> Result<u32, String> {
        text(path, bytes)?
            .parse()
            .map_err(|e| format!("not a number: {e}"))
    }

    #[test]
    fn a_rotated_file_is_used_and_a_broken_or_missing_one_keeps_the_secret_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "1\n").expect("write");
        let secret = SecretFile::load(&path, "SETTING", number).expect("loads");
        assert_eq!(*secret.current(), 1);
        assert!(!secret.reload(), "unchanged");

        std::fs::write(&path, " 2 ").expect("write");
        assert!(secret.reload());
        assert_eq!(*secret.current(), 2);

        for broken in ["", "\n", "two"] {
            std::fs::write(&path, broken).expect("write");
            assert!(!secret.reload(), "{broken:?}");
            assert_eq!(*secret.current(), 2, "{broken:?}: the secret in use stays");
        }
        std::fs::remove_file(&path).expect("remove");
        assert!(!secret.reload());
        assert_eq!(
            *secret.current(),
            2,
            "a missing file keeps the secret in use"
        );

        std::fs::write(&path, "3").expect("write");
        assert!(secret.reload());
        assert_eq!(*secret.current(), 3);
    }

    #[test]
    fn at_start_an_unusable_file_names_its_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let missing = SecretFile::load(&path, "SETTING", number)
            .err()
            .expect("refused");
        assert_eq!(missing.setting, "SETTING");
        assert!(
            missing.problem.contains("cannot read"),
            "{}",
            missing.problem
        );
        std::fs::write(&path, "  \n").expect("write");
        let empty = SecretFile::load(&path, "SETTING", number)
            .err()
            .expect("refused");
        assert!(empty.problem.ends_with("is empty"), "{}", empty.problem);
        std::fs::write(&path, "x").expect("write");
        let bad = SecretFile::load(&path, "SETTING", number)
            .err()
            .expect("refused");
        assert!(bad.problem.contains("not a number"), "{}", bad.problem);
        assert_eq!(*SecretFile::fixed(7).current(), 7);
        assert!(!SecretFile::fixed(7).reload());
    }
}

//! Keys read from files — the HS256 secret and a PEM public key — and read again when a file
//! changes, so that rotating a mounted Kubernetes Secret needs no restart. A file that changed
//! into something unusable (empty, not a key) is reported and the key it held stays in use; so
//! does a file that cannot be read for a moment.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::keys::{self, VerifyingKey};
use crate::config::{ConfigError, JwtConfig};

/// Decodes a key file's bytes.
type Decode = fn(&Path, &[u8]) -> Result<VerifyingKey, ConfigError>;

/// The keys from files, read lock-free on the request path.
pub(super) struct KeyFiles {
    files: Vec<KeyFile>,
    current: ArcSwap<Vec<VerifyingKey>>,
    /// One reload at a time: two could otherwise store their key sets in the wrong order.
    reloading: Mutex<()>,
}

struct KeyFile {
    path: PathBuf,
    decode: Decode,
    state: Mutex<FileState>,
}

struct FileState {
    /// The bytes the key in use was decoded from.
    loaded: Vec<u8>,
    key: VerifyingKey,
    /// Bytes last refused, so that a bad file is reported once, not at every look.
    refused: Option<Vec<u8>>,
    /// The file could not be read at the last look (reported once until it can be again).
    unreadable: bool,
}

impl KeyFiles {
    /// Reads the configured key files; one that cannot be read or decoded is a configuration
    /// error.
    pub(super) fn load(config: &JwtConfig) -> Result<Self, ConfigError> {
        let sources: [(&Option<PathBuf>, &'static str, Decode); 2] = [
            (
                &config.hs256_secret_file,
                keys::HS256_SETTING,
                keys::hs256_secret,
            ),
            (
                &config.public_key_file,
                keys::PUBLIC_KEY_SETTING,
                keys::public_key_file,
            ),
        ];
        let mut files = Vec::new();
        for (path, setting, decode) in sources {
            let Some(path) = path else {
                continue;
            };
            let loaded = keys::read_key_file(setting, path)?;
            let key = decode(path, &loaded)?;
            files.push(KeyFile {
                path: path.clone(),
                decode,
                state: Mutex::new(FileState {
                    loaded,
                    key,
                    refused: None,
                    unreadable: false,
                }),
            });
        }
        let keys = files.iter().map(|f| f.lock().key.clone()).collect();
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(keys),
            reloading: Mutex::new(()),
        })
    }

    /// The keys in use.
    pub(super) fn current(&self) -> arc_swap::Guard<Arc<Vec<VerifyingKey>>> {
        self.current.load()
    }

    /// Whether any key comes from a file.
    pub(super) fn any(&self) -> bool {
        !self.files.is_empty()
    }

    /// Reads the files again; true when a key changed (the new keys are then in use).
    pub(super) fn reload(&self) -> bool {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut changed = false;
        for file in &self.files {
            changed |= file.reload();
        }
        if changed {
            let keys = self.files.iter().map(|f| f.lock().key.clone()).collect();
            self.current.store(Arc::new(keys));
        }
        changed
    }
}

impl KeyFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reload(&self) -> bool {
        let read = std::fs::read(&self.path);
        let mut state = self.lock();
        let bytes = match read {
            Ok(bytes) => {
                state.unreadable = false;
                bytes
            }
            Err(error) => {
                if !std::mem::replace(&mut state.unreadable, true) {
                    tracing::warn!(%error, path = %self.path.display(), "cannot read key file; the key read before stays in use");
                }
                return false;
            }
        };
        if bytes == state.loaded || state.refused.as_ref() == Some(&bytes) {
            return false;
        }
        match (self.decode)(&self.path, &bytes) {
            Ok(key) => {
                tracing::info!(path = %self.path.display(), "key file changed; its new key is in use");
                state.loaded = bytes;
                state.key = key;
                state.refused = None;
                true
            }
            Err(error) => {
                tracing::error!(%error, "key file changed into an unusable key; the key read before stays in use");
                state.refused = Some(bytes);
                false
            }
        }
    }
}

//! Keys read from files — the HS256 secret and a PEM public key — and read again when a file
//! changes, so that rotating a mounted Kubernetes Secret needs no restart. A file that changed
//! into something unusable (empty, not a key) is reported and the key it held stays in use; so
//! does a file that cannot be read for a moment. Each file is a [`SecretFile`]; this keeps the
//! set of their keys that the request path reads.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::keys::{self, VerifyingKey};
use crate::config::{ConfigError, JwtConfig};
use crate::secret_file::{Decode, SecretFile};

/// The keys from files, read lock-free on the request path.
pub(super) struct KeyFiles {
    files: Vec<Arc<SecretFile<VerifyingKey>>>,
    current: ArcSwap<Vec<VerifyingKey>>,
    /// One reload at a time: two could otherwise store their key sets in the wrong order.
    reloading: Mutex<()>,
}

impl KeyFiles {
    /// Reads the configured key files; one that cannot be read or decoded is a configuration
    /// error.
    pub(super) fn load(config: &JwtConfig) -> Result<Self, ConfigError> {
        let sources: [(
            &Option<std::path::PathBuf>,
            &'static str,
            Decode<VerifyingKey>,
        ); 2] = [
            (
                &config.hs256_secret_file,
                keys::HS256_SETTING,
                |path, bytes| keys::hs256_secret(path, bytes).map_err(|e| e.problem),
            ),
            (
                &config.public_key_file,
                keys::PUBLIC_KEY_SETTING,
                |path, bytes| keys::public_key_file(path, bytes).map_err(|e| e.problem),
            ),
        ];
        let mut files = Vec::new();
        for (path, setting, decode) in sources {
            if let Some(path) = path {
                files.push(SecretFile::load(path, setting, decode)?);
            }
        }
        let current = ArcSwap::from_pointee(keys_of(&files));
        Ok(Self {
            files,
            current,
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
            self.current.store(Arc::new(keys_of(&self.files)));
        }
        changed
    }
}

fn keys_of(files: &[Arc<SecretFile<VerifyingKey>>]) -> Vec<VerifyingKey> {
    files.iter().map(|f| (*f.current()).clone()).collect()
}

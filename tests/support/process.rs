//! Real `flowgate` processes in tests: a child killed (SIGKILL) and reaped when dropped, and
//! free loopback ports to give it.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process that is killed and reaped when dropped (a failing test leaves none behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Sends SIGTERM, as Kubernetes does to a pod it stops.
    pub fn sigterm(&self) {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -TERM {}", self.0.id());
    }

    /// Waits (polling, up to `secs`) for the process to exit by itself; its exit status.
    pub async fn exited(&mut self, secs: u64, what: &str) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not exited within {secs} s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// A loopback port nothing listens on right now, for a server the test starts next.
///
/// Drawn below the kernel's ephemeral range (32768–60999 by default), above the local services
/// (Flowise 23000, etcd 23790/23800, PostgreSQL 25432, the API server 26443). A port `bind(0)`
/// gave is in the ephemeral range: free only until the next outgoing connection took it, and the
/// tests make many, so the server started on it a moment later could find it in use. Here only
/// explicit binds compete, and this process never hands out one port twice (two tests of one
/// binary drawing the same port a moment apart both found it free: "Address already in use").
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::{Mutex, PoisonError};
    const LOW: u64 = 27_000;
    const HIGH: u64 = 32_700;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..64 {
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let Ok(port) = u16::try_from(LOW + draw % (HIGH - LOW)) else {
            continue;
        };
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

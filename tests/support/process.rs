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

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

//! How many client connections the proxy keeps open at once: below the process's file
//! descriptor limit, with room for the connection to Flowise each may hold and for the rest
//! (the ledger, the Kubernetes client, key and token endpoints, files). Past it, accepting
//! waits and the kernel queues new connections, instead of every descriptor going to clients
//! and flowgate failing to reach Flowise or its ledger for everyone (`EMFILE`).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for what is not a client connection or its Flowise connection.
const RESERVED: u64 = 256;

/// Fewest connections allowed, whatever the limit says.
const AT_LEAST: usize = 64;

/// With no descriptor limit at all.
const UNLIMITED: usize = 1_000_000;

/// The limit for this process, after raising its soft descriptor limit to the hard one (as Go
/// does at start: a container's soft limit is often 1024 under a hard one far above).
pub fn connection_limit() -> usize {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || (limit.maximum.is_none() && limit.current.is_some()) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(error) => tracing::debug!(%error, "cannot raise the file descriptor limit"),
        }
    }
    for_descriptors(limit.current)
}

/// The connection limit under a soft descriptor limit of `descriptors` (`None`: unlimited):
/// half of what is left once [`RESERVED`] is set aside, as each client connection may hold one
/// to Flowise.
pub fn for_descriptors(descriptors: Option<u64>) -> usize {
    match descriptors {
        None => UNLIMITED,
        Some(n) => usize::try_from(n.saturating_sub(RESERVED) / 2)
            .unwrap_or(UNLIMITED)
            .clamp(AT_LEAST, UNLIMITED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_what_is_left_after_the_reserve() {
        assert_eq!(for_descriptors(Some(1024)), 384);
        assert_eq!(for_descriptors(Some(1_048_576)), 524_160);
        assert_eq!(for_descriptors(Some(100)), AT_LEAST);
        assert_eq!(for_descriptors(None), UNLIMITED);
        assert_eq!(for_descriptors(Some(u64::MAX)), UNLIMITED);
    }
}

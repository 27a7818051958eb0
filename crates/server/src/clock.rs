//! The server's one clock: the system's, or, for the in-process harness, a hand that tests move,
//! so that leases, dispatch times and time limits are checked without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the server reads the time, in milliseconds since the epoch.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// Virtual time: it moves only when `advance` is called.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A virtual clock that reads `start_ms` until advanced.
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    /// The time now.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => tidepool_api::dates::now_ms(),
            Clock::Manual(at) => at.load(Ordering::SeqCst),
        }
    }

    /// Moves a virtual clock on by `ms`; the system clock cannot be moved and ignores it.
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(at) = self {
            at.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

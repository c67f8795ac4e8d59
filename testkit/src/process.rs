//! Child processes of a test: killed on drop, and what a start that did not come up tells.

use std::process::Child;
use std::time::Duration;

/// How long a child gets to come up before the harness gives up on it.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Starts of sluice or redis-server: the first try plus three retries on fresh ports.
pub const START_ATTEMPTS: usize = 4;

/// A running child process, killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Whether the process is still running (not yet exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a start did not come up.
pub enum StartFailure {
    /// The ports were lost (the child exited early or could not bind): try fresh ones.
    Ports(String),
    /// Alive but not ready in time: retrying would only hide the problem.
    Stuck(String),
}

//! Keeping key material out of core dumps and swap: process-wide settings made once at start.
//!
//! - **Core dumps** are disabled for every `kagi` command that may hold key material
//!   ([`disable_core_dumps`]): `RLIMIT_CORE` soft and hard limits 0, and the process marked
//!   not dumpable (`PR_SET_DUMPABLE` 0), which also keeps other processes of the same user
//!   from attaching with ptrace or reading `/proc/PID/mem`.
//! - **Memory locking** (`kagi serve`, `[security] lock_memory`, [`lock_memory`]) is
//!   `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: every page the process has or will
//!   touch stays in RAM, so no secret is ever written to swap. Locking the secret allocations
//!   one by one would need `mlock` on raw pointers (unsafe, which the crate forbids) and would
//!   still miss copies made by the crypto libraries; locking everything covers them.
//!   `MCL_ONFAULT` locks pages as they are touched instead of populating every mapping at once
//!   (thread stacks, allocator arenas), so locking costs no more memory than the process uses.
//!
//! Locking is only attempted where it cannot later fail an allocation: with `MCL_FUTURE`, a
//! mapping that would take the locked total past `RLIMIT_MEMLOCK` fails, and the allocator
//! aborts. So unless the limit is unlimited or the process has `CAP_IPC_LOCK`, kagi does not
//! lock, and says so (log line, `kagi_memory_locked` 0). systemd's `LimitMEMLOCK=infinity` or
//! `AmbientCapabilities=CAP_IPC_LOCK` make it lock.
//!
//! The outcome is recorded once per process ([`memory_lock`]) for the metrics. SECURITY.md puts
//! these measures in the threat model.

use std::fmt;
use std::sync::OnceLock;

/// What [`disable_core_dumps`] did, read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreDumps {
    /// `RLIMIT_CORE` is 0 (soft and hard).
    pub limit_zero: bool,
    /// The process is not dumpable (`PR_GET_DUMPABLE` answers 0).
    pub not_dumpable: bool,
    /// Why either failed, if one did.
    pub error: Option<String>,
}

/// What [`lock_memory`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every page is locked in RAM, now and from now on.
    Locked,
    /// Not attempted: the configuration says `lock_memory = false`.
    Disabled,
    /// Not attempted: `RLIMIT_MEMLOCK` is finite (this many bytes) and the process lacks
    /// `CAP_IPC_LOCK`, so locking future allocations would make them fail past the limit.
    LimitTooLow(u64),
    /// `mlockall` failed (the error).
    Failed(String),
    /// Not supported on this operating system.
    Unsupported,
}

impl MemoryLock {
    /// Whether the process's memory is locked.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked)
    }
}

impl fmt::Display for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Locked => f.write_str("memory locked (mlockall current, future, on fault)"),
            Self::Disabled => f.write_str("memory not locked: [security] lock_memory = false"),
            Self::LimitTooLow(bytes) => write!(
                f,
                "memory not locked: RLIMIT_MEMLOCK is {bytes} bytes and the process lacks \
                 CAP_IPC_LOCK (raise the limit to unlimited, e.g. systemd LimitMEMLOCK=infinity, \
                 or grant CAP_IPC_LOCK); secrets may reach swap"
            ),
            Self::Failed(error) => write!(f, "memory not locked: mlockall failed: {error}"),
            Self::Unsupported => f.write_str("memory not locked: not supported on this system"),
        }
    }
}

/// The outcome of this process's [`lock_memory`], once it ran.
pub fn memory_lock() -> Option<&'static MemoryLock> {
    MEMORY_LOCK.get()
}

static MEMORY_LOCK: OnceLock<MemoryLock> = OnceLock::new();

/// Disables core dumps for this process (idempotent) and reads the result back.
pub fn disable_core_dumps() -> CoreDumps {
    imp::disable_core_dumps()
}

/// Locks the process's memory if `enabled` and the limits allow it (see the module doc); the
/// first call's outcome is kept for [`memory_lock`].
pub fn lock_memory(enabled: bool) -> MemoryLock {
    let outcome = if enabled { imp::lock_memory() } else { MemoryLock::Disabled };
    let _ = MEMORY_LOCK.set(outcome.clone());
    outcome
}

#[cfg(target_os = "linux")]
mod imp {
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{DumpableBehavior, Resource, Rlimit, getrlimit, setrlimit};
    use rustix::thread::{CapabilitySet, capabilities};

    use super::{CoreDumps, MemoryLock};

    pub(super) fn disable_core_dumps() -> CoreDumps {
        let mut errors = Vec::new();
        let zero = Rlimit { current: Some(0), maximum: Some(0) };
        if let Err(error) = setrlimit(Resource::Core, zero) {
            errors.push(format!("setrlimit(RLIMIT_CORE): {error}"));
        }
        if let Err(error) = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            errors.push(format!("prctl(PR_SET_DUMPABLE): {error}"));
        }
        let limit = getrlimit(Resource::Core);
        CoreDumps {
            limit_zero: limit.current == Some(0) && limit.maximum == Some(0),
            not_dumpable: matches!(
                rustix::process::dumpable_behavior(),
                Ok(DumpableBehavior::NotDumpable)
            ),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    }

    pub(super) fn lock_memory() -> MemoryLock {
        let limit = getrlimit(Resource::Memlock);
        let privileged =
            capabilities(None).is_ok_and(|sets| sets.effective.contains(CapabilitySet::IPC_LOCK));
        if let Some(bytes) = limit.current
            && !privileged
        {
            return MemoryLock::LimitTooLow(bytes);
        }
        match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT) {
            Ok(()) => MemoryLock::Locked,
            Err(error) => MemoryLock::Failed(error.to_string()),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{CoreDumps, MemoryLock};

    pub(super) fn disable_core_dumps() -> CoreDumps {
        CoreDumps {
            limit_zero: false,
            not_dumpable: false,
            error: Some("not supported on this system".into()),
        }
    }

    pub(super) fn lock_memory() -> MemoryLock {
        MemoryLock::Unsupported
    }
}

//! The node's one rule for poisoned locks, stated once and applied by every `std::sync` lock in
//! the node through these three functions.
//!
//! A lock is poisoned only when code panicked while holding it — a bug — and what it guards may
//! then be half-updated: a keyspace in the middle of a batch, a log cache in the middle of a
//! purge. The node never goes on with such state, since serving it could mean serving wrong data;
//! the caller panics as well, and the node is restarted to recover from its durable log and its
//! peers. (Async locks cannot be poisoned; guards of these locks are never held across `.await`.)

use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

const POISONED: &str = "a lock was poisoned by a panic while it was held; not going on with state it may have left half-updated";

/// Locks `mutex` under the rule above.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect(POISONED)
}

/// Read-locks `lock` under the rule above.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().expect(POISONED)
}

/// Write-locks `lock` under the rule above.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().expect(POISONED)
}

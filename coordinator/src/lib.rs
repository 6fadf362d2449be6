//! The fleet coordinator: locks now; store, scheduler and gRPC service next (docs/design/fleet.md).

pub mod etcd;
pub mod lock;

pub use etcd::EtcdLock;
pub use lock::{Holder, InProcessLock, Lease, Lock, LockError};

//! The fleet coordinator: locks and store now; scheduler and gRPC service next (docs/design/fleet.md).

pub mod etcd;
pub mod lock;
pub mod store;

pub use etcd::EtcdLock;
pub use lock::{Holder, InProcessLock, Lease, Lock, LockError};
pub use store::{SqlStore, Store, StoreError};

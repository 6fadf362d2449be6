//! Flotilla's agent library: one [`Driver`](driver::Driver) per engine, and the one engine-neutral
//! [`executor`] that holds the migration algorithm (lock, refuse dirty, verify checksums, apply, record).

pub mod daemon;
pub mod driver;
pub mod executor;

pub mod validate;

pub use driver::{connect, ConnectOptions, Driver, DriverError};
pub use executor::{ExecError, Executor, Progress, ProgressKind, RepairAction, RunReport};

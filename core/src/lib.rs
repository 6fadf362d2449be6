//! Flotilla's migration model, with no network I/O.
//!
//! - [`migration`]: what a migration is (version, name, scripts, options, checksum).
//! - [`reader`]: reads a directory in any supported convention into that model.
//! - [`split`]: splits SQL scripts into statements, per dialect.
//! - [`mongo`]: validates MongoDB command scripts (Extended JSON).
//! - [`history`]: what a target database records about applied migrations.
//! - [`plan`]: given local migrations and a target's history, what to run, or why not.
//! - [`bundle`]: a migrations directory as the coordinator stores it and agents receive it.
//! - [`fleet`]: targets, selectors, plans, waves and the plan and step state machines.

pub mod alembic;
pub mod bundle;
pub mod direction;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod generate;
pub mod history;
pub mod lint;
pub mod migration;
pub mod mongo;
pub mod plan;
pub mod reader;
pub mod schema;
pub mod split;
pub mod version;

pub use error::ReadError;
pub use history::{AppliedMigration, Direction, RecordState};
pub use migration::{
    parse_duration, Backfill, Checksum, Engine, Migration, MigrationOptions, Phase, Repeatable, Script, ScriptKind,
    Statement, Timeouts,
};
pub use plan::{plan, verify, PlanError, PlanOptions, Request, Step};
pub use reader::{read_dir, read_files, Files, Format, MigrationSet, ReadOptions};
pub use version::Version;

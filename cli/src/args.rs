//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flotilla_core::Version;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Schema migrations with rollback for PostgreSQL, MySQL, MongoDB and SQLite"
)]
#[command(after_help = "Exit codes: 0 success, 1 a migration failed, 2 bad input, 3 cannot connect, \
4 refused (dirty migration, changed file, lock not acquired, …)")]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show each statement as it runs (-v), and debug logs (-vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every migration: applied, pending, dirty, changed since applied, or missing locally.
    Status(Target),
    /// Apply pending migrations in order.
    Up {
        #[command(flatten)]
        target: Target,
        /// Stop after this version (default: apply all).
        #[arg(long, value_name = "VERSION")]
        to: Option<Version>,
        /// Print what would run, in order; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply pending migrations older than the newest applied one instead of refusing.
        #[arg(long)]
        allow_out_of_order: bool,
        /// Zero-downtime rollouts: `expand` stops before the first contract migration; `contract` applies the
        /// pending contract migrations and is refused until expand has finished.
        #[arg(long, value_parser = parse_phase)]
        phase: Option<flotilla_core::Phase>,
        /// Apply the pending migrations in one transaction: all of them, or none (Flyway's `group`). Refused where
        /// one cannot run in a transaction (MySQL's DDL, `no-transaction` scripts, backfills).
        #[arg(long)]
        group: bool,
    },
    /// Roll back applied migrations, newest first.
    Down {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        how_far: DownTarget,
        /// Print what would run, in order; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Roll the migrations back in one transaction: all of them, or none.
        #[arg(long)]
        group: bool,
    },
    /// Resolve a dirty migration: resume it, or record how it was resolved by hand.
    Repair {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        action: RepairChoice,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark an existing database as being at VERSION without running anything.
    Baseline {
        #[command(flatten)]
        target: Target,
        /// Every local migration up to and including this one is recorded as applied.
        #[arg(long = "version", value_name = "VERSION")]
        at: Version,
        /// Print what would be recorded; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check migrations before they run: additive, destructive or data, and rule findings with severity and line.
    /// Exit code: 0 clean (or information only), 5 warnings, 6 errors.
    Lint {
        /// Migrations directory; a `flotilla-lint.toml` in it may say `allow = [...]` and `deny = [...]`.
        #[arg(long, env = "FLOTILLA_DIR", default_value = "migrations")]
        dir: PathBuf,
        /// SQL dialect to parse with (default: from FLOTILLA_DB_URL, else postgres; a MongoDB set is found by itself).
        #[arg(long)]
        engine: Option<flotilla_core::Engine>,
        /// List every rule instead: its source (squawk or Flotilla), engines and default severity.
        #[arg(long)]
        rules: bool,
    },
    /// Write a new migration (UP and DOWN templates) in the directory's convention.
    New {
        /// What the migration does, e.g. "add status column to orders" (becomes the file name).
        description: String,
        /// Migrations directory (created if missing).
        #[arg(long, env = "FLOTILLA_DIR", default_value = "migrations")]
        dir: PathBuf,
        /// Engine the templates are written for (default: from the directory, FLOTILLA_DB_URL, else postgres).
        #[arg(long)]
        engine: Option<flotilla_core::Engine>,
        /// native, flyway, golang-migrate, dbmate, sqlx, diesel, pop, prisma, knex, liquibase or alembic (default: the
        /// directory's, alembic where it has an alembic.ini, else native).
        #[arg(long)]
        style: Option<String>,
        /// Template an UP that backs up what it destroys and a DOWN that restores it.
        #[arg(long)]
        destructive: bool,
    },
    /// Capture or compare schemas.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Turn another tool's migrations into native files Flotilla runs as they are.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// On a staging database, prove each pending migration reverses exactly: up, down (the schema must be back to
    /// what it was), up again (it must match the first up).
    Validate {
        #[command(flatten)]
        target: Target,
        /// Shell command run after each UP (FLOTILLA_DB_URL and FLOTILLA_VALIDATE_VERSION are set); failing fails.
        #[arg(long, value_name = "CMD")]
        test_cmd: Option<String>,
    },
    /// Try the fleet on embedded defaults: an in-process coordinator and agent over mTLS roll a sample migration
    /// set across a dozen SQLite databases in three waves, then roll the fleet back.
    Dev {
        /// Use these databases instead of temporary SQLite files (postgres://, mysql://, mongodb://, sqlite://;
        /// repeatable). Each must have no migration history.
        #[arg(long = "db", value_name = "URL")]
        dbs: Vec<String>,
        /// How many SQLite databases to create when no --db is given.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..=500))]
        targets: u16,
        /// Keep the working files (databases, certificates, store) in this directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Fleet plans, through the coordinator.
    Plan {
        #[command(flatten)]
        conn: crate::fleet::Conn,
        #[command(subcommand)]
        command: crate::fleet::PlanCommand,
    },
    /// Make a plan taking every target PLAN touched back to the version it had, in reverse wave order.
    Rollback {
        #[command(flatten)]
        conn: crate::fleet::Conn,
        plan: String,
        /// Follow the rollback until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// The fleet as the coordinator sees it.
    Fleet {
        #[command(flatten)]
        conn: crate::fleet::Conn,
        #[command(subcommand)]
        command: crate::fleet::FleetCommand,
    },
    /// Agents, their targets and whether they are connected.
    Agents {
        #[command(flatten)]
        conn: crate::fleet::Conn,
    },
    /// The coordinator's audit log, oldest first: who submitted, paused, approved or was refused what.
    Audit {
        #[command(flatten)]
        conn: crate::fleet::Conn,
        /// Only this plan's entries.
        #[arg(long)]
        plan: Option<String>,
        /// Only entries from this time on: RFC 3339 (2026-12-01T09:00:00Z) or a duration back from now (1h, 30m, 7d).
        #[arg(long, value_parser = crate::fleet::parse_since)]
        since: Option<String>,
        /// At most this many entries (read a page of up to 1,000 at a time).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Certificates for mTLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Shell completions on stdout: `source <(flotilla completions bash)`, or save them where your shell looks
    /// (e.g. ~/.local/share/bash-completion/completions/flotilla, a directory on zsh's $fpath as _flotilla,
    /// ~/.config/fish/completions/flotilla.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA (ca.pem, ca.key), a coordinator certificate, and operator and agent certificates (never
    /// overwrites). Keys are written 0600.
    Init {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names and IP addresses the coordinator is reached at.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Operator certificates: NAME or NAME:ROLE,ROLE (viewer, operator, approver, admin; without roles: admin,
        /// the one who sets the fleet up), repeatable.
        #[arg(long = "operator", default_values_t = ["admin".to_string()], value_parser = parse_operator_text)]
        operators: Vec<String>,
        /// Agent certificates: NAME or NAME:GLOB,GLOB (the targets it may serve), repeatable.
        #[arg(long = "agent", value_parser = crate::certs::parse_agent)]
        agents: Vec<(String, Vec<String>)>,
        /// Days the certificates are valid (the CA: five years).
        #[arg(long, default_value_t = crate::certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// One more certificate from the CA in DIR (ca.pem, ca.key): NAME.pem and NAME.key, never overwriting.
    Issue {
        /// The directory with the CA, written into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// An operator: NAME or NAME:ROLE,ROLE (without roles: a viewer).
        #[arg(long, value_parser = crate::certs::parse_operator, conflicts_with_all = ["agent", "coordinator"], required_unless_present_any = ["agent", "coordinator"])]
        operator: Option<(String, Vec<String>)>,
        /// An agent: NAME or NAME:GLOB,GLOB.
        #[arg(long, value_parser = crate::certs::parse_agent, conflicts_with = "coordinator")]
        agent: Option<(String, Vec<String>)>,
        /// The coordinator's certificate (coordinator.pem), for the hosts given.
        #[arg(long)]
        coordinator: bool,
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        #[arg(long, default_value_t = crate::certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Issue certificates again with the same identity and a new key, swapping NAME.pem and NAME.key in place: a
    /// running coordinator or agent picks them up without a restart.
    Renew {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Certificate names (NAME.pem in DIR), e.g. coordinator, admin, agent-1.
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, default_value_t = crate::certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

fn parse_operator_text(text: &str) -> Result<String, String> {
    crate::certs::parse_operator(text).map(|_| text.to_string())
}

/// Which database and which migrations.
#[derive(Debug, Args)]
pub struct Target {
    /// Database URL: postgres://, mysql://, sqlite://PATH or mongodb://HOST/DB. Prefer FLOTILLA_DB_URL for secrets.
    #[arg(long, env = "FLOTILLA_DB_URL", hide_env_values = true)]
    pub db: String,
    /// Migrations directory (native, Flyway, dbmate, diesel or MongoDB JSON layout, detected).
    #[arg(long, env = "FLOTILLA_DIR", default_value = "migrations")]
    pub dir: PathBuf,
    /// Accept migrations without a DOWN (they cannot be rolled back).
    #[arg(long)]
    pub allow_missing_down: bool,
    /// Go on when an applied migration has no local file.
    #[arg(long)]
    pub ignore_missing: bool,
    /// Seconds to wait for another run's lock on this database.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub lock_timeout: u64,
    /// How long a migration's statement may wait for a table lock another session holds (e.g. 500ms, 5s) before
    /// the migration is rolled back and retried; meanwhile the application's queries on that table queue behind it.
    /// A migration's `-- flotilla:lock-timeout` overrides it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = flotilla_core::parse_duration)]
    pub statement_lock_timeout: std::time::Duration,
    /// How many times a migration rolled back on a lock timeout runs again (pauses of 0.5 s, doubling); then it
    /// fails. A migration's `-- flotilla:lock-retries` overrides it.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub lock_retries: u32,
    /// How long one statement may run (e.g. 10m); none by default. A migration's `-- flotilla:statement-timeout`
    /// overrides it.
    #[arg(long, value_name = "DURATION", value_parser = flotilla_core::parse_duration)]
    pub statement_timeout: Option<std::time::Duration>,
    /// Seconds a lease lock (SQLite, MongoDB) lasts without renewal, so a dead runner's lock expires.
    #[arg(long, env = "FLOTILLA_LOCK_TTL", default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub lock_ttl: u64,
    /// Seconds to try to reach the database.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub connect_timeout: u64,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DownTarget {
    /// Roll back every migration newer than this version (0: all).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<Version>,
    /// Roll back the newest N migrations.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: Option<u32>,
    /// Roll back every applied migration.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RepairChoice {
    /// Run the rest of the dirty migration, from the statement after the last one that committed.
    #[arg(long)]
    pub resume: bool,
    /// You finished the interrupted migration by hand: record it as done.
    #[arg(long)]
    pub mark_applied: bool,
    /// You undid the interrupted migration by hand: record it as never started.
    #[arg(long)]
    pub mark_not_applied: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// An Alembic project's revision chain, through Alembic's own offline mode (`upgrade A:B --sql` and
    /// `downgrade B:A --sql` for each revision), as native `<n>_<message>.up.sql` / `.down.sql` files.
    Alembic {
        /// The Alembic project: its alembic.ini and versions/.
        dir: PathBuf,
        /// Where to write the native files (must hold no migrations yet).
        #[arg(long)]
        out: PathBuf,
        /// The engine whose SQL Alembic renders (its alembic.ini names the dialect).
        #[arg(long, default_value = "postgres")]
        engine: flotilla_core::Engine,
        /// The alembic command to run.
        #[arg(long, env = "FLOTILLA_ALEMBIC", default_value = "alembic")]
        alembic: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print a live database's schema (without Flotilla's history table), deterministically.
    Dump {
        /// Database URL (or FLOTILLA_DB_URL).
        #[arg(long, env = "FLOTILLA_DB_URL", hide_env_values = true)]
        db: String,
        /// `json` (the model `schema diff` reads) or `sql` (a readable DDL baseline; a command list on MongoDB).
        #[arg(long, value_enum, default_value_t = DumpFormat::Json)]
        format: DumpFormat,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the differences between two schemas, each a JSON dump file or a live database URL.
    /// Exit code 0: the same; 1: they differ.
    Diff {
        /// The schema before (file or URL).
        a: String,
        /// The schema after (file or URL).
        b: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    Json,
    Sql,
}

fn parse_phase(s: &str) -> Result<flotilla_core::Phase, String> {
    match s {
        "expand" => Ok(flotilla_core::Phase::Expand),
        "contract" => Ok(flotilla_core::Phase::Contract),
        other => Err(format!("`{other}` is not a phase (expand or contract)")),
    }
}

//! Exit codes, and the one place errors are classified into them.

use flotilla_agent::{DriverError, ExecError};
use flotilla_core::PlanError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    /// A migration failed (or a history write did).
    Failed = 1,
    /// Files, flags or URL are wrong; nothing ran.
    BadInput = 2,
    /// The database could not be reached.
    CannotConnect = 3,
    /// The target's state forbids the run: dirty, changed file, out of order, lock not acquired.
    Refused = 4,
    /// `lint` found warnings (and no errors).
    LintWarnings = 5,
    /// `lint` found errors.
    LintErrors = 6,
    /// The coordinator answered, but its store or lock service (etcd) is unavailable: nothing changed; try again.
    CoordinatorDependency = 7,
}

/// A command that ran to its end without a finding of its own.
impl From<()> for Code {
    fn from(_: ()) -> Self {
        Code::Ok
    }
}

impl From<Code> for std::process::ExitCode {
    fn from(code: Code) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

impl Code {
    pub fn of(error: &ExecError) -> Code {
        match error {
            ExecError::Read(_) => Code::BadInput,
            ExecError::Plan(PlanError::UnknownVersion(_)) => Code::BadInput,
            ExecError::Plan(_) | ExecError::Refused(_) => Code::Refused,
            ExecError::Driver(d) => Code::of_driver(d),
            ExecError::Failed { .. } | ExecError::RepeatableFailed { .. } => Code::Failed,
        }
    }

    pub fn of_driver(error: &DriverError) -> Code {
        match error {
            DriverError::Connect(_) => Code::CannotConnect,
            DriverError::BadUrl(_) => Code::BadInput,
            DriverError::LockTimeout { .. } | DriverError::LockLost | DriverError::BadHistory(_) => Code::Refused,
            DriverError::Database(_) | DriverError::LockNotAvailable(_) => Code::Failed,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Failed => "migration_failed",
            Code::BadInput => "bad_input",
            Code::CannotConnect => "cannot_connect",
            Code::Refused => "refused",
            Code::LintWarnings => "lint_warnings",
            Code::LintErrors => "lint_errors",
            Code::CoordinatorDependency => "coordinator_store_or_lock_unavailable",
        }
    }
}

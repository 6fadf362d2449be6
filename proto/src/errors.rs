//! What a failed call means for its caller, carried in a `tonic::Status`'s details as a machine-readable code, set
//! once by the coordinator (`coordinator::grpc::status`) and read once by each client (the CLI's exit codes, the
//! agent's retries). The gRPC code says what to do in general (retry, fix the input, give up); this says why.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is wrong: fix it and send it again.
    InvalidInput,
    NotFound,
    /// The state forbids it (a plan that cannot pause now, a target another agent serves).
    Refused,
    /// Something changed while the request ran: look again, then decide.
    Conflict,
    PermissionDenied,
    /// The coordinator is up, but its store cannot be reached: try again later.
    StoreUnavailable,
    /// The coordinator is up, but its lock service (etcd) cannot be reached: try again later.
    LockUnavailable,
    /// The store holds something this version cannot read: retrying will not help.
    StoreCorrupt,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::InvalidInput,
        ErrorCode::NotFound,
        ErrorCode::Refused,
        ErrorCode::Conflict,
        ErrorCode::PermissionDenied,
        ErrorCode::StoreUnavailable,
        ErrorCode::LockUnavailable,
        ErrorCode::StoreCorrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Refused => "refused",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::LockUnavailable => "lock_unavailable",
            ErrorCode::StoreCorrupt => "store_corrupt",
        }
    }

    /// The gRPC code that goes with it.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidInput => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::Refused => tonic::Code::FailedPrecondition,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::StoreUnavailable | ErrorCode::LockUnavailable => tonic::Code::Unavailable,
            ErrorCode::StoreCorrupt => tonic::Code::Internal,
        }
    }

    /// Whether the same request may succeed later unchanged: the coordinator's own systems are down for now.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::StoreUnavailable | ErrorCode::LockUnavailable)
    }

    /// Whether a failed call may be retried as it is: by the coordinator's code where it set one, else by the
    /// transport's (a coordinator that could not be reached, or a connection dropped under the call).
    pub fn retry_safe(status: &tonic::Status) -> bool {
        match ErrorCode::of(status) {
            Some(code) => code.is_retryable(),
            None => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
            ),
        }
    }

    /// A status with this code in its details.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::with_details(self.grpc(), message, self.as_str().as_bytes().to_vec().into())
    }

    /// The code a status carries, if a coordinator set one.
    pub fn of(status: &tonic::Status) -> Option<ErrorCode> {
        std::str::from_utf8(status.details()).ok()?.parse().ok()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| format!("unknown error code `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_travel_in_the_status_details_and_unknown_ones_are_none() {
        for code in ErrorCode::ALL {
            let status = code.status("why");
            assert_eq!((ErrorCode::of(&status), status.code(), status.message()), (Some(code), code.grpc(), "why"));
        }
        assert_eq!(ErrorCode::of(&tonic::Status::unavailable("no details")), None);
        let odd = tonic::Status::with_details(tonic::Code::Unavailable, "x", b"not_a_code".to_vec().into());
        assert_eq!(ErrorCode::of(&odd), None);
    }

    #[test]
    fn only_a_coordinator_that_is_down_or_unreached_is_worth_retrying() {
        assert!(ErrorCode::retry_safe(&ErrorCode::StoreUnavailable.status("store down")));
        assert!(ErrorCode::retry_safe(&ErrorCode::LockUnavailable.status("etcd down")));
        assert!(!ErrorCode::retry_safe(&ErrorCode::StoreCorrupt.status("bad row")), "retrying will not help");
        assert!(!ErrorCode::retry_safe(&ErrorCode::InvalidInput.status("bad")));
        assert!(ErrorCode::retry_safe(&tonic::Status::unavailable("connection refused")), "no coordinator reached");
        assert!(!ErrorCode::retry_safe(&tonic::Status::permission_denied("not yours")));
    }
}

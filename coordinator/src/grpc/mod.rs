//! The flotilla.v1 gRPC services. Each handler checks who calls, converts proto to domain types (enums through
//! `flotilla_proto::convert`, messages in [`messages`]), calls the [`Coordinator`](crate::service::Coordinator), and
//! converts back; domain errors become a `tonic::Status` in [`status`], and only there.

mod agents;
pub mod limits;
mod messages;
mod operators;

use std::pin::Pin;

use flotilla_proto::convert::ConvertError;
use flotilla_proto::errors::ErrorCode;
use futures_util::Stream;
use tonic::{Request, Status};
use tracing::error;

pub use agents::AgentApi;
pub use operators::OperatorApi;

use crate::identity::{self, Identity};
use crate::service::ServiceError;

/// The one place a domain error becomes a status: its gRPC code and, in the details, what it means
/// ([`ErrorCode`]), so a caller can tell a store that is down from a coordinator it cannot reach. Errors of the
/// coordinator's own systems are logged here.
pub fn status(e: ServiceError) -> Status {
    let (code, message) = classify(e);
    crate::metrics::RPC_ERRORS.get_or_create(&crate::metrics::Code { code: code.as_str().to_string() }).inc();
    code.status(message)
}

fn classify(e: ServiceError) -> (ErrorCode, String) {
    let message = e.to_string();
    let code = match e {
        ServiceError::BadInput(_) => ErrorCode::InvalidInput,
        ServiceError::PlanNotFound { .. } | ServiceError::StepNotFound { .. } => ErrorCode::NotFound,
        // A selector matching nothing is not malformed: the fleet has no such target now.
        ServiceError::SelectorMatchesNothing { .. }
        | ServiceError::IllegalTransition { .. }
        | ServiceError::Refused(_) => ErrorCode::Refused,
        ServiceError::Conflict { .. } => ErrorCode::Conflict,
        ServiceError::NotAllowed(_) => ErrorCode::PermissionDenied,
        ServiceError::Store(e) => {
            error!(error = %e, "request failed: store");
            let code = if e.is_retryable() { ErrorCode::StoreUnavailable } else { ErrorCode::StoreCorrupt };
            return (code, format!("the coordinator's store: {e}"));
        }
        ServiceError::Lock(e) => {
            error!(error = %e, "request failed: lock service");
            return (ErrorCode::LockUnavailable, format!("the coordinator's lock service: {e}"));
        }
    };
    (code, message)
}

/// A request whose values do not convert: the caller must fix it.
fn invalid(e: ConvertError) -> Status {
    ErrorCode::InvalidInput.status(e.to_string())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How callers are known.
#[derive(Clone)]
pub struct Auth {
    insecure: bool,
}

impl Auth {
    pub fn new(insecure: bool) -> Self {
        Auth { insecure }
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        if self.insecure {
            return Ok(Identity::Insecure);
        }
        let certs =
            request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required (mTLS)"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required (mTLS)"))?;
        identity::from_certificate(leaf.as_ref()).map_err(Status::unauthenticated)
    }

    /// The agent's name: from its certificate, or (insecure dev mode only) from the request.
    fn agent<T>(&self, request: &Request<T>, claimed: &str) -> Result<(Identity, String), Status> {
        let who = self.identify(request)?;
        let name = match &who {
            Identity::Agent { name, .. } => name.clone(),
            Identity::Insecure if !claimed.is_empty() => claimed.to_string(),
            Identity::Insecure => return Err(Status::invalid_argument("agent_id is required")),
            Identity::Operator { name, .. } => {
                return Err(Status::permission_denied(format!(
                    "operator `{name}` called an agent method: agent calls need an agent certificate"
                )))
            }
        };
        Ok((who, name))
    }
}

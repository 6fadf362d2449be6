//! What the coordinator takes from the wire, at most. A request over a limit is refused whole with a status that
//! names the limit, before the service sees it: nothing of it is stored.
//!
//! - Bytes per request, by method ([`body_limit`]): a unary request's body is cut off at its method's limit while
//!   it arrives (HTTP/2 frames beyond it are never buffered). Only `SubmitPlan` carries a bundle; an agent's
//!   heartbeat carries schema dumps; everything else is small. Streams are bounded per message by the services'
//!   decoders (`max_decoding_message_size`).
//! - Strings and lists ([`Bounded`]): names (targets, labels, plan ids, versions) and operator text (selectors,
//!   waves, reasons) have lengths; an agent registers a bounded number of targets.
//! - What agents report about a step (errors, check details) is cut to [`MAX_REPORTED`] rather than refused: a
//!   result must be recorded whatever its error says.

use flotilla_proto::errors::ErrorCode;
use flotilla_proto::v1 as pb;
use http_body_util::BodyExt;
use tonic::Status;

/// Longest name: a target, label key or value, agent, plan id, version.
pub const MAX_NAME: usize = 256;
/// Longest operator text: a selector, a wave, a reason.
pub const MAX_TEXT: usize = 4096;
/// Longest text an agent reports (an error, a check's detail), kept as its first part.
pub const MAX_REPORTED: usize = 8192;
/// Most targets one agent registers.
pub const MAX_TARGETS_PER_AGENT: usize = 20_000;
/// Most labels on one target, and waves in one plan.
pub const MAX_ITEMS: usize = 64;

/// Most bundles an agent may ask the coordinator to count as kept from its stream (`bundles_kept`): each is a few
/// bytes of the stream's state here, and a bundle the agent holds there. Asking for more is not refused: an agent
/// keeping more than the coordinator counts still keeps every bundle the coordinator leaves out (the last N used
/// are among the last M for M > N).
pub const BUNDLES_KEPT: u32 = 64;

/// The largest agent message a decoder takes (a heartbeat carrying schema dumps).
pub const AGENT_MESSAGE_BYTES: usize = 16 << 20;
const KIB: usize = 1 << 10;

/// The method of a request path (`/flotilla.v1.Service/Method`).
fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// The most bytes a unary request to `path` (`/flotilla.v1.Service/Method`) may carry; `None` for streams.
pub fn body_limit(path: &str) -> Option<usize> {
    match method(path) {
        "ReportProgress" => None,
        "SubmitPlan" => Some(flotilla_proto::MAX_MESSAGE_BYTES),
        "Heartbeat" => Some(AGENT_MESSAGE_BYTES),
        "Register" => Some(8 << 20),
        "ReportChecks" => Some(4 << 20),
        "ReportResult" => Some(256 * KIB),
        _ => Some(64 * KIB),
    }
}

/// Cuts a request's body off at its method's limit, with a status naming the method and the limit.
pub fn limit_body(request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    let Some(limit) = body_limit(request.uri().path()) else { return request };
    let method = method(request.uri().path()).to_string();
    request.map(|body| {
        let limited = http_body_util::Limited::new(body, limit).map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                let status = ErrorCode::InvalidInput
                    .status(format!("{method} takes at most {limit} bytes; this request is larger (nothing was done)"));
                Box::new(status) as Box<dyn std::error::Error + Send + Sync>
            } else {
                e
            }
        });
        tonic::body::Body::new(limited)
    })
}

/// A value checked against the limits before it is converted.
pub trait Bounded {
    fn check(&self) -> Result<(), Status>;
}

fn too_long(what: &str, len: usize, max: usize) -> Status {
    ErrorCode::InvalidInput.status(format!("{what} is {len} bytes; at most {max} are taken"))
}

fn name(what: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_NAME {
        return Err(too_long(what, value.len(), MAX_NAME));
    }
    Ok(())
}

fn text(what: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_TEXT {
        return Err(too_long(what, value.len(), MAX_TEXT));
    }
    Ok(())
}

fn count(what: &str, n: usize, max: usize) -> Result<(), Status> {
    if n > max {
        return Err(ErrorCode::InvalidInput.status(format!("{n} {what}; at most {max} are taken")));
    }
    Ok(())
}

impl Bounded for pb::RegisterRequest {
    fn check(&self) -> Result<(), Status> {
        name("the agent's name", &self.name)?;
        text("agent_version", &self.agent_version)?;
        count("targets in one registration", self.targets.len(), MAX_TARGETS_PER_AGENT)?;
        for t in &self.targets {
            name("a target's name", &t.name)?;
            count(&format!("labels on target `{}`", t.name), t.labels.len(), MAX_ITEMS)?;
            for (k, v) in &t.labels {
                name(&format!("label `{k}` of target `{}`", t.name), k)?;
                name(&format!("label `{k}`'s value on target `{}`", t.name), v)?;
            }
        }
        Ok(())
    }
}

impl Bounded for pb::SubmitPlanRequest {
    fn check(&self) -> Result<(), Status> {
        text("the selector", &self.selector)?;
        text("validate_on", &self.validate_on)?;
        if let Some(s) = &self.strategy {
            count("waves", s.waves.len(), MAX_ITEMS)?;
            for w in &s.waves {
                text("a wave", w)?;
            }
        }
        Ok(())
    }
}

impl Bounded for pb::PlanAction {
    fn check(&self) -> Result<(), Status> {
        name("the plan id", &self.id)?;
        text("the reason", &self.reason)
    }
}

impl Bounded for pb::StepResult {
    fn check(&self) -> Result<(), Status> {
        name("plan_id", &self.plan_id)?;
        name("target", &self.target)?;
        name("applied_version", self.applied_version.as_deref().unwrap_or_default())?;
        name("version_before", self.version_before.as_deref().unwrap_or_default())
    }
}

impl Bounded for pb::ProgressEvent {
    fn check(&self) -> Result<(), Status> {
        name("plan_id", &self.plan_id)?;
        name("target", &self.target)?;
        name("version", &self.version)?;
        name("version_before", &self.version_before)
    }
}

/// `text` cut to [`MAX_REPORTED`] bytes (at a character boundary), saying how much was cut.
pub fn reported(text: String) -> String {
    if text.len() <= MAX_REPORTED {
        return text;
    }
    let mut end = MAX_REPORTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plans_and_heartbeats_are_large_and_streams_are_bounded_per_message() {
        assert_eq!(body_limit("/flotilla.v1.OperatorService/SubmitPlan"), Some(flotilla_proto::MAX_MESSAGE_BYTES));
        assert_eq!(body_limit("/flotilla.v1.AgentService/Heartbeat"), Some(AGENT_MESSAGE_BYTES));
        assert_eq!(body_limit("/flotilla.v1.OperatorService/ApproveWave"), Some(64 * KIB));
        assert_eq!(body_limit("/flotilla.v1.AgentService/ReportProgress"), None);
    }

    #[test]
    fn reported_text_is_cut_at_a_character_boundary() {
        assert_eq!(reported("short".into()), "short");
        let long = "é".repeat(MAX_REPORTED);
        let cut = reported(long.clone());
        assert!(cut.len() < MAX_REPORTED + 40, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("({} more bytes cut)", long.len() - MAX_REPORTED)),
            "{}",
            &cut[cut.len() - 30..]
        );
    }

    #[test]
    fn names_and_texts_over_their_limits_are_refused() {
        let mut register = pb::RegisterRequest { name: "a".repeat(MAX_NAME), ..Default::default() };
        assert!(register.check().is_ok());
        register.name.push('x');
        assert!(register.check().unwrap_err().message().contains("at most 256"));
        let action = pb::PlanAction { id: "p".into(), reason: "r".repeat(MAX_TEXT + 1) };
        assert!(action.check().unwrap_err().message().contains("the reason is 4097 bytes"));
    }
}

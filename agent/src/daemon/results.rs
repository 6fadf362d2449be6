//! Results are held until the coordinator acknowledges them, across reconnections.

use flotilla_proto::errors::ErrorCode;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::*;

pub(super) enum Sent {
    /// Acknowledged, or refused for good: the result is no longer held.
    Done,
    /// The coordinator could not be reached: keep the result.
    Retry,
}

/// Sends one held result. The coordinator acknowledges late and repeated results too, so anything but a failure
/// it says is worth retrying (its store or lock service down, or no coordinator reached) means it will never want
/// this one again.
pub(super) async fn send_result(
    state: &State,
    client: &mut AgentServiceClient<Channel>,
    key: &StepKey,
    report: &pb::StepResult,
    traceparent: Option<&str>,
) -> Sent {
    let mut request = tonic::Request::new(report.clone());
    if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("traceparent", value);
    }
    match client.report_result(request).await {
        Err(e) if ErrorCode::retry_safe(&e) => Sent::Retry,
        outcome => {
            if let Err(e) = outcome {
                warn!(plan_id = %key.0, target = %key.1, error = %e, "the coordinator refused a result; dropping it");
            }
            locked(&state.unacked).remove(key);
            locked(&state.inflight).remove(key);
            Sent::Done
        }
    }
}

/// Sends every result still held (from before a reconnection).
pub(super) async fn resend_results(state: &State, client: &mut AgentServiceClient<Channel>) {
    let held: Vec<(StepKey, pb::StepResult)> =
        locked(&state.unacked).iter().map(|(k, r)| (k.clone(), r.clone())).collect();
    for (key, report) in held {
        if let Sent::Done = send_result(state, client, &key, &report, None).await {
            info!(plan_id = %key.0, target = %key.1, "reported a result held across a reconnection");
        }
    }
}

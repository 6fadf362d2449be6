//! The proto messages the coordinator accepts, decoded from bytes (the first byte picks the message), then the
//! checks and conversions a handler makes before the service sees them: limits, selectors, waves, the bundle.
#![no_main]
use flotilla_coordinator::grpc::limits::Bounded;
use flotilla_core::fleet::{Selector, WaveSpec};
use flotilla_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn submit(m: pb::SubmitPlanRequest) {
    if m.check().is_err() {
        return;
    }
    let _ = m.selector.parse::<Selector>();
    let _ = m.validate_on.parse::<Selector>();
    for w in m.strategy.iter().flat_map(|s| &s.waves) {
        let _ = w.parse::<WaveSpec>();
    }
    if let Ok(bundle) = flotilla_core::bundle::Bundle::from_json(&m.bundle) {
        let _ = bundle.check(&Default::default());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else { return };
    match which % 9 {
        0 => drop(pb::SubmitPlanRequest::decode(bytes).map(submit)),
        1 => drop(pb::RegisterRequest::decode(bytes).map(|m| m.check())),
        2 => drop(pb::HeartbeatRequest::decode(bytes)),
        3 => drop(pb::StepResult::decode(bytes).map(|m| m.check())),
        4 => drop(pb::ProgressEvent::decode(bytes).map(|m| m.check())),
        5 => drop(pb::CheckReport::decode(bytes)),
        6 => drop(pb::PlanAction::decode(bytes).map(|m| m.check())),
        7 => drop(pb::ListAuditRequest::decode(bytes)),
        _ => drop(pb::ListTargetsRequest::decode(bytes).map(|m| m.selector.parse::<Selector>())),
    }
});

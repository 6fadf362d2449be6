//! Trace context for a rollout: every process derives the same W3C trace id from the plan id, so a plan's spans on
//! the coordinator and on every agent share one trace. The coordinator sends the `traceparent` with each assignment
//! (gRPC field `Assignment.trace`); agents record it on their spans.

use sha2::{Digest, Sha256};

/// The plan's trace id (32 hex digits).
pub fn trace_id(plan_id: &str) -> String {
    hex::encode(&Sha256::digest(plan_id.as_bytes())[..16])
}

/// `00-<trace id>-<span id>-01`, the span id naming the plan's step on `target`.
pub fn traceparent_for(plan_id: &str, target: &str) -> String {
    let span = Sha256::digest(format!("{plan_id}/{target}").as_bytes());
    format!("00-{}-{}-01", trace_id(plan_id), hex::encode(&span[..8]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_trace_per_plan() {
        let a = super::traceparent_for("p1", "db1");
        let b = super::traceparent_for("p1", "db2");
        assert_eq!(a.len(), 55);
        assert_eq!(a[3..35], b[3..35]);
        assert_ne!(a[36..52], b[36..52]);
    }
}

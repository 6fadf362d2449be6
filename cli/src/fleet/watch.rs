//! `plan watch`: a plan's events as lines, as JSON, or as progress bars on a terminal, until the plan ends.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use flotilla_core::fleet::{EventKind, PlanState};
use flotilla_proto::convert;
use flotilla_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use super::{Client, Fail};
use crate::exit::Code;
use crate::output::Output;

/// Follows a plan until its event stream ends; the exit code says how it ended.
pub(super) async fn watch(out: Output, client: &mut Client, id: &str, after: u64) -> Result<Code, Fail> {
    follow(Some(out), client, id, after).await
}

/// Follows a plan to its end; prints nothing when `out` is `None`.
pub async fn follow(out: Option<Output>, client: &mut Client, id: &str, after: u64) -> Result<Code, Fail> {
    let quiet = out.is_none();
    let out = out.unwrap_or(Output { json: false, verbose: 0 });
    let detail = client.get_plan(pb::GetPlanRequest { id: id.to_string() }).await?.into_inner();
    let wave_of: HashMap<String, u32> = detail.steps.iter().map(|s| (s.target.clone(), s.wave)).collect();
    let mut stream = client.watch_plan(pb::WatchPlanRequest { id: id.to_string(), after }).await?.into_inner();
    let bars = (!quiet && !out.json && std::io::stderr().is_terminal()).then(|| Bars::new(&detail));
    let mut clocks = WaveClocks::new(&detail);
    while let Some(event) = stream.message().await? {
        if quiet {
            continue;
        }
        let kind = Kind::of(&event);
        let eta = clocks.event(&event, kind, wave_of.get(&event.target).copied());
        if out.json {
            let detail: serde_json::Value = serde_json::from_str(&event.detail).unwrap_or(json!(event.detail));
            println!(
                "{}",
                json!({ "plan": event.plan_id, "seq": event.seq, "at": event.at, "target": event.target, "kind": kind.to_string(), "detail": detail })
            );
        } else if let Some(bars) = &bars {
            bars.event(&event, kind, wave_of.get(&event.target).copied());
        } else if out.verbose > 0 || !kind.is_detail() {
            println!("{}{}", event_line(&event, kind), eta.unwrap_or_default());
        }
    }
    if let Some(bars) = bars {
        bars.done();
    }
    let detail = client.get_plan(pb::GetPlanRequest { id: id.to_string() }).await?.into_inner();
    let s = detail.summary.unwrap_or_default();
    let state = convert::plan_state(s.state)?;
    if !out.json && !quiet {
        println!("plan {}: {state} ({} succeeded, {} failed of {})", s.id, s.succeeded, s.failed, s.targets);
    }
    Ok(match state {
        PlanState::Succeeded if s.failed == 0 => Code::Ok,
        PlanState::Succeeded | PlanState::Halted | PlanState::Aborted => Code::Failed,
        _ => Code::Ok,
    })
}

/// An event's kind, or the number of one this CLI does not know (from a newer coordinator): shown as such, never
/// hidden and never taken for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Known(EventKind),
    Unknown(i32),
}

impl Kind {
    fn of(e: &pb::PlanEvent) -> Kind {
        convert::event_kind(e.kind).map_or(Kind::Unknown(e.kind), Kind::Known)
    }

    /// Per-statement and per-migration events: shown with -v.
    fn is_detail(self) -> bool {
        matches!(self, Kind::Known(k) if k.is_detail())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Known(k) => f.write_str(k.as_str()),
            Kind::Unknown(n) => write!(f, "unknown_event_kind_{n}"),
        }
    }
}

fn event_line(e: &pb::PlanEvent, kind: Kind) -> String {
    use EventKind::*;
    let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
    let target = if e.target.is_empty() { String::new() } else { format!(" {}", e.target) };
    let by = || detail["by"].as_str().map(|by| format!(" by {by}")).unwrap_or_default();
    let reason = || detail["reason"].as_str().filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
    let known = |v: &serde_json::Value| if v.is_null() { "?".to_string() } else { v.to_string() };
    let extra = match kind {
        Kind::Unknown(_) => return format!("[{}] {kind}{target}", e.seq),
        Kind::Known(kind) => Some(kind),
    };
    let extra = match extra {
        Some(Submitted) if detail["lint"].is_object() => format!(
            " ({} targets; lint: {} error(s){}, {} warning(s), {} note(s))",
            detail["targets"],
            detail["lint"]["errors"],
            if detail["lint"]["allowed"] == true { " allowed" } else { "" },
            detail["lint"]["warnings"],
            detail["lint"]["notes"]
        ),
        Some(Statement) => {
            format!(" {} statement {}/{}", detail["version"], detail["statement"], detail["statements"])
        }
        Some(Succeeded) if detail["at_goal"] == true => format!(" at {} already", known(&detail["applied_version"])),
        Some(Succeeded | Failed) => format!(
            " {} -> {}{}",
            known(&detail["version_before"]),
            known(&detail["applied_version"]),
            detail["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Some(LockRetry) => format!(
            " {} statement {} gave up waiting for a lock{}; retry {}/{} in {} ms",
            detail["version"],
            detail["statement"],
            detail["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default(),
            detail["attempt"],
            detail["retries"],
            detail["pause_ms"]
        ),
        Some(Throttled) => format!(
            " {} held {} ms: {}",
            detail["version"],
            detail["elapsed_ms"],
            detail["error"].as_str().unwrap_or_default()
        ),
        Some(Assigned) => format!(" to {} (token {})", detail["agent"].as_str().unwrap_or(""), detail["fencing_token"]),
        Some(Halted | Reconcile) => reason(),
        Some(Paused | Resumed | Aborted | Approved) => format!("{}{}", by(), reason()),
        Some(RollbackCreated) => format!(": {}", detail["plan"].as_str().unwrap_or("")),
        Some(RollbackLeftAlone) => format!(": {} ({})", detail["targets"], detail["reason"].as_str().unwrap_or("")),
        _ => String::new(),
    };
    format!("[{}] {kind}{target}{extra}", e.seq)
}

/// Per wave: when its first step was assigned, and how many of its steps are over, by the events' own times (so a
/// replayed watch computes what a live one did).
struct WaveClocks {
    waves: HashMap<u32, WaveClock>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct WaveClock {
    total: u64,
    done: u64,
    first: Option<chrono::DateTime<chrono::Utc>>,
}

impl WaveClock {
    /// The time left at `now`, at the pace so far: `None` before a step is over or once all are.
    fn eta(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        let elapsed = (now - self.first?).to_std().ok()?;
        if self.done == 0 || self.done >= self.total {
            return None;
        }
        Some(elapsed.mul_f64((self.total - self.done) as f64 / self.done as f64))
    }
}

impl WaveClocks {
    fn new(d: &pb::PlanDetail) -> WaveClocks {
        let mut waves: HashMap<u32, WaveClock> = HashMap::new();
        for s in &d.steps {
            waves.entry(s.wave).or_default().total += 1;
        }
        WaveClocks { waves }
    }

    /// Takes the event in; on a step's end, the wave's progress and ETA as a suffix for its line.
    fn event(&mut self, e: &pb::PlanEvent, kind: Kind, wave: Option<u32>) -> Option<String> {
        let at = chrono::DateTime::parse_from_rfc3339(&e.at).ok()?.with_timezone(&chrono::Utc);
        let clock = self.waves.get_mut(&wave?)?;
        match kind {
            Kind::Known(EventKind::Assigned | EventKind::Succeeded) if clock.first.is_none() => clock.first = Some(at),
            _ => {}
        }
        if !matches!(kind, Kind::Known(EventKind::Succeeded | EventKind::Failed)) {
            return None;
        }
        clock.done += 1;
        let eta = clock.eta(at).map(|d| format!(", ETA {}", human(d))).unwrap_or_default();
        Some(format!(" [wave {}: {}/{}{eta}]", wave?, clock.done, clock.total))
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
#[test]
fn a_wave_eta_is_the_time_left_at_the_pace_so_far() {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let clock = WaveClock { total: 10, done: 4, first: Some(t0) };
    assert_eq!(clock.eta(t0 + chrono::Duration::seconds(20)), Some(Duration::from_secs(30)), "4 in 20 s, 6 left");
    assert_eq!(WaveClock { done: 10, ..clock }.eta(t0), None, "a wave that is over has none");
    assert_eq!(WaveClock { done: 0, ..clock }.eta(t0), None, "no pace before a step is over");
    assert_eq!(human(Duration::from_secs(75)), "1m15s");
    assert_eq!(human(Duration::from_secs(7300)), "2h01m");
}

/// A bar per wave and one overall.
struct Bars {
    _multi: MultiProgress,
    overall: ProgressBar,
    waves: HashMap<u32, ProgressBar>,
    log: ProgressBar,
}

impl Bars {
    fn new(d: &pb::PlanDetail) -> Bars {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let eta_style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let overall =
            multi.add(ProgressBar::new(d.steps.len() as u64).with_style(style.clone()).with_prefix("overall"));
        let mut waves = HashMap::new();
        let mut numbers: Vec<u32> = d.steps.iter().map(|s| s.wave).collect();
        numbers.sort();
        numbers.dedup();
        for w in numbers {
            let len = d.steps.iter().filter(|s| s.wave == w).count() as u64;
            let bar = multi.add(ProgressBar::new(len).with_style(eta_style.clone()).with_prefix(format!("wave {w}")));
            waves.insert(w, bar);
        }
        let log = multi.add(ProgressBar::new_spinner());
        log.enable_steady_tick(Duration::from_millis(120));
        Bars { _multi: multi, overall, waves, log }
    }

    fn event(&self, e: &pb::PlanEvent, seen: Kind, wave: Option<u32>) {
        use EventKind::*;
        let kind = match seen {
            Kind::Known(k) => Some(k),
            Kind::Unknown(_) => None,
        };
        if let Some(Succeeded | Failed) = kind {
            self.overall.inc(1);
            if let Some(bar) = wave.and_then(|w| self.waves.get(&w)) {
                bar.inc(1);
                if kind == Some(Failed) {
                    bar.set_message("(with failures)");
                }
            }
        }
        if !seen.is_detail() {
            self.log.set_message(event_line(e, seen));
        }
        // What an operator must not miss stays on the screen above the bars.
        if matches!(
            kind,
            None | Some(
                Failed | Halted | Reconcile | AwaitingApproval | Paused | Resumed | Aborted | LockRetry | Throttled
            )
        ) {
            self.log.println(event_line(e, seen));
        }
    }

    fn done(&self) {
        for bar in self.waves.values() {
            bar.abandon();
        }
        self.overall.abandon();
        self.log.finish_and_clear();
    }
}

//! Health-gated throttling: before each migration and each backfill batch the executor asks the target's health
//! checks (replication lag, or any query compared with a limit), and while one fails it holds, reporting
//! `throttled`, up to a limit; then the step fails, having changed nothing more.

use std::time::{Duration, Instant};

use super::*;
use crate::driver::DriverError;

/// The checks of one target, and how long they may hold a step.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub checks: Vec<HealthCheck>,
    /// Longest a step waits for its checks to pass before it fails.
    pub max_wait: Duration,
    /// How often a failing check is asked again.
    pub poll: Duration,
}

/// A query that returns one number, and the largest value it may have.
#[derive(Clone, PartialEq)]
pub struct HealthCheck {
    pub name: String,
    pub sql: String,
    /// The number is this column of the first row (by default the first column).
    pub column: Option<String>,
    /// Run on this server (a replica) instead of the target.
    pub on: Option<String>,
    pub max: f64,
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `on` is a URL that may carry a password.
        f.debug_struct("HealthCheck").field("name", &self.name).field("sql", &self.sql).field("max", &self.max).finish()
    }
}

impl HealthCheck {
    /// PostgreSQL: bytes of WAL the most lagging replica of this primary has still to replay.
    pub fn postgres_replica_lag_bytes(max: u64) -> HealthCheck {
        HealthCheck {
            name: "replica lag (bytes)".into(),
            sql: "SELECT COALESCE(MAX(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8 \
                  FROM pg_stat_replication"
                .into(),
            column: None,
            on: None,
            max: max as f64,
        }
    }

    /// MySQL and MariaDB: the replica at `replica_url` is this many seconds behind its source, by its own
    /// `SHOW SLAVE STATUS` (no number while its SQL thread is stopped: that holds too).
    pub fn mysql_replica_lag_secs(replica_url: &str, max: u64) -> HealthCheck {
        HealthCheck {
            name: "replica lag (s, Seconds_Behind_Master)".into(),
            sql: "SHOW SLAVE STATUS".into(),
            column: Some("Seconds_Behind_Master".into()),
            on: Some(replica_url.to_string()),
            max: max as f64,
        }
    }
}

/// Why the checks hold a step now, from each check's value (`None`: the query returned no number): the first
/// failing one, or `None` if all pass. A check that cannot be read holds the step too: no news is not good news.
pub fn verdict(checks: &[HealthCheck], values: &[Result<Option<f64>, String>]) -> Option<String> {
    checks.iter().zip(values).find_map(|(check, value)| match value {
        Ok(Some(v)) if *v <= check.max => None,
        Ok(Some(v)) => Some(format!("{} is {v} (limit {})", check.name, check.max)),
        Ok(None) => {
            Some(format!("{} returned no number (NULL: for a replica's lag, its SQL thread is stopped)", check.name))
        }
        Err(e) => Some(format!("{} cannot be read: {e}", check.name)),
    })
}

impl Executor {
    /// Holds until every health check passes, reporting `throttled` as it starts holding and then every 5 s;
    /// refuses the step once it has waited `max_wait`.
    pub(super) async fn wait_until_healthy(&mut self, step: &Prepared<'_>) -> Result<(), ExecError> {
        let Some(throttle) = self.throttle.clone() else { return Ok(()) };
        let started = Instant::now();
        let mut reported: Option<Instant> = None;
        loop {
            let mut values = Vec::with_capacity(throttle.checks.len());
            for check in &throttle.checks {
                values.push(self.ask(check).await.map_err(|e: DriverError| e.to_string()));
            }
            let Some(reason) = verdict(&throttle.checks, &values) else { return Ok(()) };
            let waited = started.elapsed();
            if waited >= throttle.max_wait {
                let error = format!("held {} s by its health checks, the limit: {reason}", waited.as_secs());
                return Err(self.failure(step, None, error, false));
            }
            if reported.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                reported = Some(Instant::now());
                self.emit(step, ProgressKind::Throttled { reason, waited_ms: millis(waited) });
            }
            tokio::time::sleep(throttle.poll).await;
        }
    }
}

impl Executor {
    /// One check's number: on the target's own connection, or on a connection of its own to another server.
    async fn ask(&mut self, check: &HealthCheck) -> Result<Option<f64>, DriverError> {
        let column = check.column.as_deref();
        let Some(url) = &check.on else { return self.driver.query_number(&check.sql, column).await };
        let options = crate::driver::ConnectOptions {
            create: false,
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let mut other = crate::driver::connect(url, &options).await?;
        let value = other.query_number(&check.sql, column).await;
        other.close().await;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_held_by_the_first_check_over_its_limit_or_unreadable() {
        let lag = HealthCheck::postgres_replica_lag_bytes(1000);
        let custom =
            HealthCheck { name: "queue depth".into(), sql: "SELECT 1".into(), column: None, on: None, max: 5.0 };
        let checks = [lag, custom];
        assert_eq!(verdict(&checks, &[Ok(Some(1000.0)), Ok(Some(5.0))]), None, "at the limit passes");
        let held = verdict(&checks, &[Ok(Some(20.0)), Ok(Some(9.0))]).expect("held");
        assert!(held.contains("queue depth is 9 (limit 5)"), "{held}");
        let unread = verdict(&checks, &[Err("connection reset".into()), Ok(Some(0.0))]).expect("held");
        assert!(unread.contains("cannot be read: connection reset"), "{unread}");
        assert!(verdict(&checks, &[Ok(None), Ok(Some(0.0))]).expect("held").contains("no number"));
    }
}

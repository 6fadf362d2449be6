//! Reads a live database's schema into [`flotilla_core::schema::Schema`]: one module per engine, each a handful
//! of catalog queries (one per kind of object, never one per table) so a dump costs a few round trips.

pub(crate) mod mongo;
pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::collections::BTreeMap;

use flotilla_core::schema::{Kind, Object};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::driver::DriverError;

/// Rows of a catalog query, every column read as text (NULL as empty).
pub(crate) async fn rows(conn: &mut AnyConnection, sql: &str) -> Result<Vec<Vec<String>>, DriverError> {
    let rows: Vec<AnyRow> = sqlx::query(sql)
        .fetch_all(conn)
        .await
        .map_err(|e| DriverError::Database(format!("reading the catalog: {e}")))?;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(Option::unwrap_or_default)
                        .map_err(|e| DriverError::Database(format!("reading the catalog: {e}")))
                })
                .collect()
        })
        .collect()
}

pub(crate) fn object(kind: Kind, name: impl Into<String>, ddl: impl Into<String>) -> Object {
    Object { kind, name: name.into(), parts: BTreeMap::new(), ddl: ddl.into() }
}

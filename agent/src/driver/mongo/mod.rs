//! MongoDB through the official driver. The lock is a lease document (`lease`). Commands run with `runCommand`; a
//! script that fits one transaction (row changes, and new collections with their indexes) runs in one together with
//! its history write (the replica set allows it), anything else runs command by command.

use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use flotilla_core::history::{HISTORY_TABLE, LOCK_TABLE};
use flotilla_core::{AppliedMigration, Backfill, Checksum, Direction, Engine, Statement, Version};
use futures_util::TryStreamExt;
use mongodb::{Client, ClientSession, Collection, Database};

use super::{AtomicError, BackfillCursor, ConnectOptions, Driver, DriverError, HistoryChange};

mod clients;
mod lease;
mod schema;

use clients::SharedClient;

use lease::{extend_lease, HeldLease, LOCK_ID};

/// Server error code for "collection already exists".
const NAMESPACE_EXISTS: i32 = 48;
/// Server error code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;

pub struct MongoDriver {
    client: Client,
    /// This driver's use of `client`, which other targets on the same deployment share; given back on close.
    shared: Option<SharedClient>,
    db: Database,
    history: Collection<Document>,
    locks: Collection<Document>,
    ttl: Duration,
    lease: Option<HeldLease>,
    /// The one session this runner's transactions use, named in the lease it takes so that a runner taking the lease
    /// after this one dies can end a transaction it left open. Out only while a transaction runs in it.
    session: Option<ClientSession>,
    /// The history collection is known to exist: no need to create it again.
    history_known: bool,
}

impl MongoDriver {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, DriverError> {
        let (shared, name) = SharedClient::get(url, options).await?;
        let client = shared.client().clone();
        let db = client.database(&name);
        db.run_command(doc! { "ping": 1 }).await.map_err(|e| DriverError::Connect(e.to_string()))?;
        let session = client.start_session().await.map_err(|e| DriverError::Connect(e.to_string()))?;
        Ok(MongoDriver {
            history: db.collection(HISTORY_TABLE),
            locks: db.collection(LOCK_TABLE),
            db,
            client,
            shared: Some(shared),
            ttl: options.lock_ttl,
            lease: None,
            session: Some(session),
            history_known: false,
        })
    }

    /// The runner's session, taken out for a transaction; [`MongoDriver::put_back`] returns it. (Only a transaction
    /// whose future was dropped midway leaves none: the next one starts a session of its own.)
    async fn take_session(&mut self) -> Result<ClientSession, DriverError> {
        match self.session.take() {
            Some(session) => Ok(session),
            None => self.client.start_session().await.map_err(mongo_error),
        }
    }

    fn put_back<T>(&mut self, session: ClientSession, result: T) -> T {
        self.session = Some(session);
        result
    }

    /// Turns a script command into the command document to send, and the database to send it to.
    fn command(&self, statement: &Statement) -> Result<(Document, Database), DriverError> {
        let Statement::Command { command: serde_json::Value::Object(map), name, .. } = statement else {
            return Err(DriverError::Database("a SQL statement cannot run on MongoDB".into()));
        };
        let mut document = Document::try_from(map.clone())
            .map_err(|e| DriverError::Database(format!("invalid Extended JSON: {e}")))?;
        if name == "renameCollection" {
            // Names in scripts are relative to the target database; the server wants them qualified, sent to admin.
            let db = self.db.name().to_string();
            for key in ["renameCollection", "to"] {
                if let Some(Bson::String(coll)) = document.get(key).cloned() {
                    document.insert(key, format!("{db}.{coll}"));
                }
            }
            return Ok((document, self.client.database("admin")));
        }
        Ok((document, self.db.clone()))
    }

    async fn run(&self, statement: &Statement, session: Option<&mut ClientSession>) -> Result<u64, DriverError> {
        let (command, db) = self.command(statement)?;
        send(command, &db, session).await
    }

    async fn apply_change(&self, change: &HistoryChange, session: &mut ClientSession) -> Result<(), DriverError> {
        match change {
            HistoryChange::Write(record) => self
                .history
                .replace_one(doc! { "_id": version_id(record.version) }, record_doc(record))
                .upsert(true)
                .session(session)
                .await
                .map(drop),
            HistoryChange::Delete(version) => {
                self.history.delete_one(doc! { "_id": version_id(*version) }).session(session).await.map(drop)
            }
            HistoryChange::Many(changes) => {
                for change in changes {
                    Box::pin(self.apply_change(change, session)).await?;
                }
                Ok(())
            }
            HistoryChange::SaveCursor(_) | HistoryChange::ClearCursor { .. } => {
                return Err(DriverError::Database("backfills run on SQL engines only".into()))
            }
            HistoryChange::Repeatable { .. } => {
                return Err(DriverError::Database("repeatable migrations run on SQL engines only".into()))
            }
        }
        .map_err(mongo_error)
    }

    async fn fence(&self, session: &mut ClientSession) -> Result<(), DriverError> {
        let Some(lease) = &self.lease else { return Err(DriverError::LockLost) };
        let renewed = self
            .locks
            .update_one(doc! { "_id": LOCK_ID, "owner": &lease.owner }, extend_lease(None, lease::ttl_ms(self.ttl)))
            .session(session)
            .await
            .map_err(mongo_error)?;
        if renewed.matched_count == 1 {
            Ok(())
        } else {
            Err(DriverError::LockLost)
        }
    }

    /// `statements`, then the history change, in one transaction of `session`; with `fence`, the lease is extended
    /// inside it first: if another runner took it, nothing matches and the transaction aborts, and a runner trying to
    /// take it meanwhile waits for (or conflicts with) this transaction, ending it only if our lease expired
    /// (`lease`). A command's own write concern, which a command in a transaction may not carry, is the commit's.
    async fn in_transaction(
        &self,
        session: &mut ClientSession,
        statements: &[Statement],
        fence: bool,
        change: &(dyn Fn() -> HistoryChange + Send + Sync),
        on_done: &mut (dyn FnMut(usize, u64) + Send),
    ) -> Result<(), AtomicError> {
        let at_commit = |error| AtomicError { statement: None, error };
        let (mut commands, mut concern) = (Vec::with_capacity(statements.len()), None);
        for (i, statement) in statements.iter().enumerate() {
            let at_statement = |error| AtomicError { statement: Some(i), error };
            let (mut command, db) = self.command(statement).map_err(at_statement)?;
            concern = take_write_concern(&mut command).map_err(at_statement)?.or(concern);
            commands.push((command, db));
        }
        let started = match concern {
            Some(concern) => session.start_transaction().write_concern(concern).await,
            None => session.start_transaction().await,
        };
        started.map_err(|e| at_commit(mongo_error(e)))?;
        let fenced = if fence { self.fence(session).await } else { Ok(()) };
        if let Err(error) = fenced {
            let _ = session.abort_transaction().await;
            return Err(at_commit(error));
        }
        for (i, (command, db)) in commands.into_iter().enumerate() {
            match send(command, &db, Some(session)).await {
                Ok(n) => on_done(i, n),
                Err(error) => {
                    let _ = session.abort_transaction().await;
                    return Err(AtomicError { statement: Some(i), error });
                }
            }
        }
        if let Err(error) = self.apply_change(&change(), session).await {
            let _ = session.abort_transaction().await;
            return Err(at_commit(error));
        }
        session.commit_transaction().await.map_err(|e| at_commit(mongo_error(e)))
    }

    /// Writes a history record outside any transaction, with `concern` (the server's default when `None`).
    async fn put_record(
        &self,
        record: &AppliedMigration,
        concern: Option<mongodb::options::WriteConcern>,
    ) -> Result<(), DriverError> {
        let replace =
            self.history.replace_one(doc! { "_id": version_id(record.version) }, record_doc(record)).upsert(true);
        match concern {
            Some(concern) => replace.write_concern(concern).await,
            None => replace.await,
        }
        .map(drop)
        .map_err(mongo_error)
    }

    fn stop_keepalive(&mut self) -> Option<HeldLease> {
        let lease = self.lease.take()?;
        lease.stop();
        Some(lease)
    }
}

impl Drop for MongoDriver {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

/// Sends a command, in `session` (and its transaction) when given; the rows it wrote.
async fn send(command: Document, db: &Database, session: Option<&mut ClientSession>) -> Result<u64, DriverError> {
    let reply = match session {
        Some(s) => db.run_command(command).session(s).await,
        None => db.run_command(command).await,
    }
    .map_err(mongo_error)?;
    write_outcome(&reply)
}

/// The write concern of a write that a later one makes durable, or whose loss costs only time: acknowledged by the
/// primary, without waiting for the journal or the majority.
/// - A record written ahead of a command (`Driver::mark_started`, `Driver::set_progress`) and the fencing token,
///   raised before a run's first write: the oplog is ordered, so the next command to be majority-committed (the
///   server's default write concern) or the run's final record carries the write with it. A crash before then may
///   lose it, but then nothing after it was durable either: the record is never behind a command that survived,
///   and no write of the run survives without its fence.
/// - The release of the lease (`Driver::unlock`), after the run's final record: if a crash loses it, the lease
///   expires by its TTL instead.
fn carried_by_next_write() -> mongodb::options::WriteConcern {
    mongodb::options::WriteConcern::builder().w(mongodb::options::Acknowledgment::Nodes(1)).journal(false).build()
}

/// Takes a command's own `writeConcern` off it: a command in a transaction may not carry one, and the transaction's
/// commit carries it instead, so the write is as durable as the script asked.
fn take_write_concern(command: &mut Document) -> Result<Option<mongodb::options::WriteConcern>, DriverError> {
    match command.remove("writeConcern") {
        None => Ok(None),
        Some(Bson::Document(concern)) => {
            bson::from_document(concern).map(Some).map_err(|e| DriverError::Database(format!("writeConcern: {e}")))
        }
        Some(other) => Err(DriverError::Database(format!("writeConcern must be a document, not {other}"))),
    }
}

/// Bulk write commands answer `ok: 1` even when documents failed; their `writeErrors` say so.
fn write_outcome(reply: &Document) -> Result<u64, DriverError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors.first().and_then(Bson::as_document);
        let message = first.and_then(|d| d.get_str("errmsg").ok()).unwrap_or("write error");
        let code = first.and_then(|d| d.get_i32("code").ok()).unwrap_or_default();
        return Err(DriverError::Database(format!("{message} (code {code})")));
    }
    if let Ok(error) = reply.get_document("writeConcernError") {
        return Err(DriverError::Database(format!("write concern: {}", error.get_str("errmsg").unwrap_or("failed"))));
    }
    Ok(match reply.get("n") {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    })
}

fn mongo_error(e: mongodb::error::Error) -> DriverError {
    use mongodb::error::{ErrorKind, WriteFailure};
    match *e.kind {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            DriverError::Connect(e.to_string())
        }
        ErrorKind::Command(c) => DriverError::Database(format!("{} ({} {})", c.message, c.code_name, c.code)),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            DriverError::Database(format!("{} (code {})", w.message, w.code))
        }
        _ => DriverError::Database(e.to_string()),
    }
}

/// The server's error code. A write concern error counts: a write that applied but whose majority wait ran past its
/// `maxTimeMS` is code 50 like one that never ran (the lease's attempts, `lease::take`, are safe to repeat).
fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// A version as a history document's `_id`: a 64-bit integer where it fits (so records written before 38-digit
/// versions keep their ids), its digits as a string beyond. One version always has the same id.
fn version_id(version: Version) -> Bson {
    match version.to_i64() {
        Some(n) => Bson::Int64(n),
        None => Bson::String(version.to_string()),
    }
}

fn record_doc(r: &AppliedMigration) -> Document {
    let (direction, done, total, error) = r.dirty_columns();
    doc! {
        "_id": version_id(r.version),
        "name": &r.name,
        "checksum": &r.checksum.0,
        "state": r.state.label(),
        "direction": direction,
        "statements_done": done,
        "statements_total": total,
        "error": error,
        "applied_at": bson::DateTime::from_chrono(r.applied_at),
        "duration_ms": r.duration_ms,
        "applied_by": &r.applied_by,
        "plan_id": r.plan_id.as_deref(),
    }
}

fn parse_doc(d: &Document) -> Result<AppliedMigration, DriverError> {
    let bad = |what: &str| DriverError::BadHistory(format!("{what} in {d}"));
    let int = |key: &str| match d.get(key) {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        _ => Err(bad(&format!("missing integer `{key}`"))),
    };
    let text = |key: &str| d.get_str(key).map(str::to_string).map_err(|_| bad(&format!("missing string `{key}`")));
    let optional = |key: &str| d.get_str(key).ok().map(str::to_string);
    let version = match d.get("_id") {
        Some(Bson::Int64(n)) => Version::try_from(*n).map_err(|e| bad(&e))?,
        Some(Bson::Int32(n)) => Version::try_from(i64::from(*n)).map_err(|e| bad(&e))?,
        Some(Bson::String(text)) => text.parse().map_err(|e: String| bad(&e))?,
        _ => return Err(bad("missing version `_id`")),
    };
    let label = text("state")?;
    let state = AppliedMigration::state_from_columns(
        &label,
        d.get_str("direction").ok(),
        int("statements_done").unwrap_or(0),
        int("statements_total").unwrap_or(0),
        optional("error"),
    )
    .ok_or_else(|| bad(&format!("unknown state `{label}`")))?;
    Ok(AppliedMigration {
        version,
        name: text("name")?,
        checksum: Checksum(text("checksum")?),
        state,
        applied_at: d.get_datetime("applied_at").map_err(|_| bad("missing `applied_at`"))?.to_chrono(),
        duration_ms: int("duration_ms")?,
        applied_by: text("applied_by")?,
        plan_id: optional("plan_id"),
    })
}

/// The lease document's `_id` in `flotilla_lock` holding the highest fencing token seen.
const FENCE_ID: &str = "fence";

#[async_trait]
impl Driver for MongoDriver {
    fn engine(&self) -> Engine {
        Engine::Mongodb
    }

    fn can_run_atomically(&self, statements: &[Statement]) -> bool {
        flotilla_core::mongo::fits_one_transaction(statements.iter().map(|s| match s {
            Statement::Command { name, command, .. } => (name.as_str(), command),
            Statement::Sql { .. } => ("", &serde_json::Value::Null),
        }))
    }

    async fn lock(&mut self, owner: &str, timeout: Duration) -> Result<(), DriverError> {
        let session = self.take_session().await?;
        let admin = self.client.database("admin");
        let taken = lease::take(&self.locks, &admin, owner, session.id(), self.ttl, timeout).await;
        self.lease = Some(self.put_back(session, taken)?);
        Ok(())
    }

    async fn fence_token(&mut self, token: u64) -> Result<bool, DriverError> {
        let token =
            i64::try_from(token).map_err(|_| DriverError::Database(format!("fencing token {token} overflows")))?;
        // Matches only a fence at or below `token`; a higher one makes the upsert collide with its _id.
        let raised = self
            .locks
            .update_one(doc! { "_id": FENCE_ID, "token": { "$lte": token } }, doc! { "$set": { "token": token } })
            .upsert(true)
            .write_concern(carried_by_next_write())
            .await;
        match raised {
            Ok(_) => Ok(true),
            Err(e) if code_of(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(mongo_error(e)),
        }
    }

    async fn check_lock(&mut self) -> Result<(), DriverError> {
        match &self.lease {
            Some(lease) if lease.is_lost() => Err(DriverError::LockLost),
            _ => Ok(()),
        }
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if let Some(lease) = self.stop_keepalive() {
            // Released, not deleted: the next runner takes a released lease in one round trip, a missing one in three.
            self.locks
                .replace_one(doc! { "_id": LOCK_ID, "owner": lease.owner }, lease::released())
                .write_concern(carried_by_next_write())
                .await
                .map_err(mongo_error)?;
        }
        Ok(())
    }

    async fn ensure_history(&mut self) -> Result<(), DriverError> {
        if self.history_known {
            return Ok(());
        }
        match self.db.create_collection(HISTORY_TABLE).await {
            Err(e) if code_of(&e) != Some(NAMESPACE_EXISTS) => Err(mongo_error(e)),
            _ => {
                self.history_known = true;
                Ok(())
            }
        }
    }

    async fn history(&mut self) -> Result<Vec<AppliedMigration>, DriverError> {
        let docs: Vec<Document> = self
            .history
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(mongo_error)?
            .try_collect()
            .await
            .map_err(mongo_error)?;
        // Integer and string ids sort apart on the server: order by version here.
        let mut history = docs.iter().map(parse_doc).collect::<Result<Vec<_>, _>>()?;
        history.sort_by_key(|r| r.version);
        Ok(history)
    }

    async fn write_record(&mut self, record: &AppliedMigration) -> Result<(), DriverError> {
        self.put_record(record, None).await
    }

    async fn mark_started(&mut self, record: &AppliedMigration) -> Result<(), DriverError> {
        self.put_record(record, Some(carried_by_next_write())).await
    }

    async fn set_progress(&mut self, version: Version, done: u32) -> Result<(), DriverError> {
        self.history
            .update_one(doc! { "_id": version_id(version) }, doc! { "$set": { "statements_done": i64::from(done) } })
            .write_concern(carried_by_next_write())
            .await
            .map(drop)
            .map_err(mongo_error)
    }

    async fn delete_record(&mut self, version: Version) -> Result<(), DriverError> {
        self.history.delete_one(doc! { "_id": version_id(version) }).await.map(drop).map_err(mongo_error)
    }

    async fn execute(&mut self, statement: &Statement) -> Result<u64, DriverError> {
        self.run(statement, None).await
    }

    async fn rollback_open_transaction(&mut self) {
        // Commands outside execute_atomic never open a transaction.
    }

    async fn execute_atomic(
        &mut self,
        statements: &[Statement],
        change: &(dyn Fn() -> HistoryChange + Send + Sync),
        on_done: &mut (dyn FnMut(usize, u64) + Send),
    ) -> Result<(), AtomicError> {
        let mut session = self.take_session().await.map_err(|error| AtomicError { statement: None, error })?;
        let done = self.in_transaction(&mut session, statements, true, change, on_done).await;
        self.put_back(session, done)
    }

    async fn execute_recorded(&mut self, statement: &Statement, change: HistoryChange) -> Result<u64, AtomicError> {
        let mut session = self.take_session().await.map_err(|error| AtomicError { statement: None, error })?;
        // Without the fence: the lease is the stepwise run's, renewed in the background.
        let mut rows = 0;
        let done = {
            let (change, mut count) = (|| change.clone(), |_, n| rows = n);
            self.in_transaction(&mut session, std::slice::from_ref(statement), false, &change, &mut count).await
        };
        let done = done.map(|()| rows);
        self.put_back(session, done)
    }

    async fn repeatables(&mut self) -> Result<std::collections::BTreeMap<String, String>, DriverError> {
        // Repeatable migrations are Flyway's SQL files: a MongoDB set has none.
        Ok(Default::default())
    }

    async fn ensure_repeatables(&mut self) -> Result<(), DriverError> {
        Err(DriverError::Database("repeatable migrations are SQL (Flyway's R__ files), not MongoDB commands".into()))
    }

    async fn backfill_cursor(&mut self, _: Version, _: Direction) -> Result<Option<BackfillCursor>, DriverError> {
        Ok(None)
    }

    async fn next_batch_end(&mut self, _: &Backfill, _: i64) -> Result<Option<i64>, DriverError> {
        Err(DriverError::Database("backfills run on SQL engines only".into()))
    }

    async fn schema(&mut self) -> Result<flotilla_core::schema::Schema, DriverError> {
        schema::dump(&self.db).await
    }

    /// A client keeps no session state between commands: reusable as it is.
    async fn reset_session(&mut self) -> Result<bool, DriverError> {
        Ok(self.lease.is_none())
    }

    async fn close(mut self: Box<Self>) {
        self.stop_keepalive();
        // The last user shuts the shared client down, which waits until every session of it is dropped: ours first.
        self.session = None;
        if let Some(shared) = self.shared.take() {
            shared.close().await;
        }
    }
}

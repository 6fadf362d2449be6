//! MongoDB: collections (and views) with their options and validators, and their indexes with options. Each
//! object's DDL is the command that recreates it, so a dump is itself a valid `.up.json` migration.

use bson::{doc, Bson, Document};
use flotilla_core::history::{HISTORY_TABLE, LOCK_TABLE};
use flotilla_core::schema::{Kind, Schema};
use flotilla_core::Engine;
use futures_util::TryStreamExt;
use mongodb::Database;

use crate::driver::shared::object;
use crate::driver::DriverError;

fn db_error(e: mongodb::error::Error) -> DriverError {
    DriverError::Database(format!("reading the catalog: {e}"))
}

/// Relaxed Extended JSON with keys in a stable order.
fn json(document: &Document) -> String {
    serde_json::to_string(&Bson::Document(document.clone()).into_relaxed_extjson()).unwrap_or_default()
}

pub(in crate::driver) async fn dump(db: &Database) -> Result<Schema, DriverError> {
    let mut collections: Vec<Document> = db
        .run_command(doc! { "listCollections": 1, "nameOnly": false })
        .await
        .map_err(db_error)?
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map(|batch| batch.iter().filter_map(Bson::as_document).cloned().collect())
        .unwrap_or_default();
    collections.sort_by(|a, b| a.get_str("name").unwrap_or("").cmp(b.get_str("name").unwrap_or("")));

    let mut objects = Vec::new();
    for spec in collections {
        let Ok(name) = spec.get_str("name") else { continue };
        if name == HISTORY_TABLE || name == LOCK_TABLE || name.starts_with("system.") {
            continue;
        }
        let mut create = doc! { "create": name };
        let mut options: Vec<(String, Bson)> =
            spec.get_document("options").map(|o| o.clone().into_iter().collect()).unwrap_or_default();
        options.sort_by(|a, b| a.0.cmp(&b.0));
        let mut o = object(Kind::Collection, name, "");
        for (key, value) in options {
            o.parts.insert(format!("option {key}"), json(&doc! { "v": value.clone() }));
            create.insert(key, value);
        }
        o.ddl = json(&create);
        objects.push(o);
        if spec.get_str("type") == Ok("view") {
            continue;
        }
        let indexes: Vec<Document> = db
            .collection::<Document>(name)
            .list_indexes()
            .await
            .map_err(db_error)?
            .try_collect::<Vec<_>>()
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|model| bson::to_document(&model).unwrap_or_default())
            .collect();
        for mut index in indexes {
            index.remove("v");
            index.remove("ns");
            let index_name = index.get_str("name").unwrap_or("").to_string();
            if index_name == "_id_" {
                continue;
            }
            let mut sorted = Document::new();
            let mut keys: Vec<String> = index.keys().cloned().collect();
            keys.sort();
            for k in keys {
                if let Some(v) = index.get(&k) {
                    sorted.insert(k, v.clone());
                }
            }
            let command = doc! { "createIndexes": name, "indexes": [sorted] };
            objects.push(object(Kind::Index, format!("{name}.{index_name}"), json(&command)));
        }
    }
    Ok(Schema::new(Engine::Mongodb, objects))
}

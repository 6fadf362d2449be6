//! Every migration reader (the format is picked from the file names: golang-migrate, sqlx, Flyway, dbmate, Diesel,
//! pop, Prisma, Knex, sqitch, Liquibase, Alembic, MongoDB scripts), per engine.
#![no_main]
use flotilla_core::{Engine, ReadOptions};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let files = common::files(data);
    for engine in [None, Some(Engine::Postgres), Some(Engine::Mysql), Some(Engine::Sqlite), Some(Engine::Mongodb)] {
        let options = ReadOptions { allow_missing_down: true, engine };
        if let Ok(set) = flotilla_core::read_files(&files, &options) {
            let _ = flotilla_core::lint::check_directives(&set.migrations);
        }
    }
});

//! Migrations at start. A database this build has migrated already is recognised in a couple of
//! reads, but a database whose applied migrations differ from this build's is still brought up
//! to date or refused, exactly as the migrator does it.

mod common;

use common::{Backend, TestDb, admin_sql, execute_scalar, execute_sql, open_store};
use ordersync::config::Config;
use ordersync::store::{self, Store};
use std::sync::Arc;

fn config(db: &TestDb) -> Config {
    Config::from_toml(&db.toml()).expect("valid test config")
}

/// Opens the store and runs its migrations once more, as every start does.
async fn migrate_again(db: &TestDb) -> Result<Arc<dyn Store>, String> {
    let store = store::open(&config(db).database)
        .await
        .map_err(|e| e.to_string())?;
    match store.migrate().await {
        Ok(()) => Ok(store),
        Err(error) => {
            store.close().await;
            Err(error.to_string())
        }
    }
}

async fn migrated(db: &TestDb) {
    open_store(&config(db)).await.close().await;
}

/// The error a start gives on a migrated database after `statement` changed its record of
/// migrations.
async fn refused_after(db: &TestDb, statement: &str) -> String {
    migrated(db).await;
    execute_sql(db, &[statement]).await;
    migrate_again(db).await.err().expect("refused")
}

/// A checksum no migration has, as the backend writes a byte string.
fn foreign_checksum(db: &TestDb) -> &'static str {
    match db.backend {
        Backend::Sqlite => "x'00'",
        Backend::Postgres => "'\\x00'::bytea",
    }
}

async fn store_a_cursor(db: &TestDb) {
    execute_sql(
        db,
        &[
            "INSERT INTO sync_cursors (provider, account, resource, cursor) \
           VALUES ('graas', 'shop-1', 'orders', '1700000000')",
        ],
    )
    .await;
}

async fn assert_cursor_kept(db: &TestDb) {
    let cursor = execute_scalar(
        db,
        "SELECT cursor FROM sync_cursors WHERE account = 'shop-1'",
    );
    assert_eq!(cursor.await, "1700000000");
}

/// The newest migration this build carries for the test's backend.
fn newest_version(db: &TestDb) -> i64 {
    let migrator = match db.backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Migrating an up-to-date database again changes nothing and keeps the stored rows.
async fn a_migrated_database_starts_as_it_is(db: TestDb) {
    migrated(&db).await;
    store_a_cursor(&db).await;
    let before = execute_scalar(&db, "SELECT count(*) || '' FROM _sqlx_migrations").await;
    let store = migrate_again(&db).await.expect("migrate again");
    store.readiness().await.expect("ready");
    store.close().await;
    let after = execute_scalar(&db, "SELECT count(*) || '' FROM _sqlx_migrations").await;
    assert_eq!(before, after);
    assert_cursor_kept(&db).await;
}
on_both_backends!(a_migrated_database_starts_as_it_is);

/// An applied migration whose text changed since (its checksum differs) is refused by name.
async fn a_changed_migration_is_refused(db: TestDb) {
    let checksum = foreign_checksum(&db);
    let error = refused_after(
        &db,
        &format!("UPDATE _sqlx_migrations SET checksum = {checksum} WHERE version = 1"),
    )
    .await;
    assert!(
        error.contains("migration 1 was previously applied but has been modified"),
        "{error}"
    );
}
on_both_backends!(a_changed_migration_is_refused);

/// A migration recorded as not finished (a failed run left it) is refused: someone must look.
async fn a_migration_left_unfinished_is_refused(db: TestDb) {
    let newest = newest_version(&db);
    let error = refused_after(
        &db,
        &format!("UPDATE _sqlx_migrations SET success = false WHERE version = {newest}"),
    )
    .await;
    assert!(
        error.contains(&format!("migration {newest} is partially applied")),
        "{error}"
    );
}
on_both_backends!(a_migration_left_unfinished_is_refused);

/// A database migrated by a newer build (a migration this build does not carry) is refused,
/// rather than written by code that does not know its schema.
async fn a_migration_from_a_newer_build_is_refused(db: TestDb) {
    let checksum = foreign_checksum(&db);
    let error = refused_after(
        &db,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999999, 'from a newer build', true, {checksum}, 0)"
        ),
    )
    .await;
    assert!(
        error.contains("migration 99999999 was previously applied but is missing"),
        "{error}"
    );
}
on_both_backends!(a_migration_from_a_newer_build_is_refused);

/// A database an older build migrated (the newest migration not applied yet) is brought up to
/// date, and its rows are kept.
async fn a_database_behind_this_build_is_brought_up_to_date(db: TestDb) {
    let newest = newest_version(&db);
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url))
                .await
                .expect("connect");
            sqlx::migrate!("migrations/sqlite")
                .run_to(newest - 1, &pool)
                .await
                .expect("older migrations");
            pool.close().await;
        }
        Backend::Postgres => {
            let schema = db.schema.clone().expect("a schema");
            admin_sql(&format!("CREATE SCHEMA \"{schema}\"")).await;
            let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("a URL");
            let pool = sqlx::PgPool::connect_with(
                options.options([("search_path", format!("\"{schema}\"").as_str())]),
            )
            .await
            .expect("connect");
            sqlx::migrate!("migrations/postgres")
                .run_to(newest - 1, &pool)
                .await
                .expect("older migrations");
            pool.close().await;
        }
    }
    store_a_cursor(&db).await;
    let store = migrate_again(&db).await.expect("migrated");
    store.readiness().await.expect("ready");
    store.close().await;
    assert_eq!(
        execute_scalar(
            &db,
            "SELECT max(version) || '' FROM _sqlx_migrations WHERE success"
        )
        .await,
        newest.to_string()
    );
    assert_cursor_kept(&db).await;
}
on_both_backends!(a_database_behind_this_build_is_brought_up_to_date);

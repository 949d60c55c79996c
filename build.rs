//! Marks a build made with `ORDERSYNC_TEST_PG` set (`cfg(ordersync_pg)`), so the test suite can
//! list its Postgres tests as ignored when there is no Postgres to run them on, instead of
//! letting them pass without running.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ordersync_pg)");
    println!("cargo::rerun-if-env-changed=ORDERSYNC_TEST_PG");
    if std::env::var("ORDERSYNC_TEST_PG").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=ordersync_pg");
    }
}

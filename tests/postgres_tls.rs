//! TLS on Postgres connections: left out on loopback when the URL does not ask for it, kept when
//! it does, and used after all when the server refuses a connection without it.
mod common;

use common::TestDb;
use ordersync::config::Config;
use ordersync::model::{ProviderKind, StreamKey};
use ordersync::store::{self, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first eight bytes of a client asking to start TLS (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Opens a store on `url` in `db`'s schema, under an application name of its own so its
/// connections can be told apart in `pg_stat_activity`.
async fn open_store(db: &TestDb, url: &str, application: &str) -> Arc<dyn Store> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let toml = format!(
        "[database]\nurl = \"{url}{separator}application_name={application}\"\nschema = \"{}\"\n",
        db.schema.as_deref().expect("a Postgres test database")
    );
    let config = Config::from_toml(&toml).expect("config");
    let store = store::open(&config.database).await.expect("open the store");
    store.migrate().await.expect("migrate");
    store
}

/// Whether the store's connections (named `application`) use TLS: one answer for all of them.
async fn uses_tls(application: &str) -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .expect("connect to Postgres");
    let seen: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(application)
    .fetch_all(&mut admin)
    .await
    .expect("pg_stat_ssl");
    assert!(!seen.is_empty(), "no connection named {application}");
    assert!(
        seen.iter().all(|&ssl| ssl == seen[0]),
        "{application}: some connections use TLS and some do not: {seen:?}"
    );
    seen[0]
}

/// Whether the server offers TLS at all (`ssl = on`).
async fn server_offers_tls() -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .expect("connect to Postgres");
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW ssl");
    ssl == "on"
}

fn is_loopback_url(url: &str) -> bool {
    let url = url::Url::parse(url).expect("ORDERSYNC_TEST_PG is a URL");
    // A `postgres://` URL's host is not parsed as an address: it is read here.
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn loopback_without_sslmode_connects_without_tls() {
    let db = TestDb::new(common::Backend::Postgres, "tls_loopback");
    let url = common::pg_url();
    let store = open_store(&db, &url, "tls_loopback").await;
    store.readiness().await.expect("ready");
    assert!(
        !url.contains("ssl"),
        "this test needs ORDERSYNC_TEST_PG without sslmode: {url}"
    );
    // Elsewhere sslmode=prefer stands: TLS whenever the server offers it.
    let expected = !is_loopback_url(&url) && server_offers_tls().await;
    assert_eq!(
        uses_tls("tls_loopback").await,
        expected,
        "with no sslmode in the URL, TLS only off loopback"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn sslmode_in_the_url_is_kept() {
    let db = TestDb::new(common::Backend::Postgres, "tls_asked");
    let url = common::pg_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = open_store(&db, &format!("{url}{separator}sslmode=prefer"), "tls_asked").await;
    store.readiness().await.expect("ready");
    assert_eq!(
        uses_tls("tls_asked").await,
        server_offers_tls().await,
        "sslmode=prefer in the URL should use TLS whenever the server offers it"
    );
    store.close().await;
}

/// A proxy in front of the test's Postgres that refuses, as `hostssl` in `pg_hba.conf` does,
/// every connection that does not start by asking for TLS; counts its refusals.
async fn tls_only_proxy(upstream: String) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first == SSL_REQUEST {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if server.write_all(&first).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    return;
                }
                // A startup message without TLS: read the rest of it, then refuse.
                let length = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize;
                let mut rest = vec![0u8; length.saturating_sub(8)];
                if client.read_exact(&mut rest).await.is_err() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let mut fields = Vec::new();
                for (code, value) in [
                    (b'S', "FATAL"),
                    (b'V', "FATAL"),
                    (b'C', "28000"),
                    (
                        b'M',
                        "no pg_hba.conf entry for host \"127.0.0.1\", no encryption",
                    ),
                ] {
                    fields.push(code);
                    fields.extend_from_slice(value.as_bytes());
                    fields.push(0);
                }
                fields.push(0);
                let mut message = vec![b'E'];
                message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                message.extend_from_slice(&fields);
                let _ = client.write_all(&message).await;
            });
        }
    });
    (port, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_server_that_requires_tls_on_loopback_gets_it() {
    let db = TestDb::new(common::Backend::Postgres, "tls_required");
    let mut url = url::Url::parse(&common::pg_url()).expect("ORDERSYNC_TEST_PG is a URL");
    let upstream = format!(
        "{}:{}",
        url.host_str().expect("a host in ORDERSYNC_TEST_PG"),
        url.port().unwrap_or(5432)
    );
    let (port, refused) = tls_only_proxy(upstream).await;
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");

    let store = open_store(&db, url.as_str(), "tls_required").await;
    // Several connections at once, so the pool opens more than its first.
    let stream = StreamKey {
        provider: ProviderKind::Graas,
        account: "a".to_owned(),
        resource: "orders".to_owned(),
    };
    let reads = (0..4).map(|_| store.cursor(&stream));
    for read in futures_util::future::join_all(reads).await {
        read.expect("a cursor read through the proxy");
    }

    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "only the first connection should try without TLS"
    );
    assert_eq!(
        uses_tls("tls_required").await,
        server_offers_tls().await,
        "after the refusal, connections should use TLS whenever the server offers it"
    );
    store.close().await;
}

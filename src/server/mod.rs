//! The daemon's HTTP side (axum). Today: the admin API for actions, behind a bearer token.

pub mod admin;
pub mod ops;
pub mod webhooks;

use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running server; [`Server::stop`] finishes the requests in progress.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Server {
    /// Binds `listen` (port 0 picks one) and serves `router` until stopped.
    pub async fn start(listen: SocketAddr, router: axum::Router) -> std::io::Result<Server> {
        Server::serve(TcpListener::bind(listen).await?, router)
    }

    /// Serves `router` on a listener bound earlier, for a caller that had to name the address
    /// (in a config, to an upstream) before the server could start, without letting it go.
    pub fn serve(listener: TcpListener, router: axum::Router) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin server stopped");
            }
        });
        tasks.close();
        Ok(Server {
            addr,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

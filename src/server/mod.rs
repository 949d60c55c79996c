//! The daemon's HTTP side (axum). Today: the admin API for actions, behind a bearer token.

pub mod admin;
pub mod ops;
pub mod webhooks;

use axum::serve::ListenerExt;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running server; [`Server::stop`] finishes the requests in progress.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// `listener` with every accepted connection sending without delay (`TCP_NODELAY`). Otherwise
/// the kernel holds an answer's last, partial segment until the peer acknowledges the ones
/// before it, and a peer that delays its acknowledgements (Linux: 40 ms) stalls the answer by
/// that much. Seen on the sandbox's pages: one 10,000-order run in five waited 40 ms at its
/// second request.
pub fn without_delay(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|stream: &mut TcpStream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
    })
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
            let served = axum::serve(without_delay(listener), router)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_delay(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await;
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY is off");

        // What the kernel does unless told: the wrapper is what turns it on.
        let mut plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = Listener::accept(&mut plain).await;
        assert!(!stream.nodelay().unwrap());
    }
}

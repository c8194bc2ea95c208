//! What the HTTP doubles (Atlas, Elasticsearch, Azure SQL) share: an axum router served on a
//! thread and runtime of its own, on a free loopback port, until dropped.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

/// A double's state that keeps the requests it was sent (`METHOD /path?query`), for tests
/// that check which calls a client made.
pub trait RequestLog: Clone + Send + Sync + 'static {
    fn record(&self, line: String);
}

/// Middleware that records each request in the double's [`RequestLog`].
pub async fn log_request<S: RequestLog>(
    State(state): State<S>,
    request: Request,
    next: Next,
) -> Response {
    let line = format!(
        "{} {}",
        request.method(),
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default()
    );
    state.record(line);
    next.run(request).await
}

pub struct ServedRouter {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServedRouter {
    /// Binds `127.0.0.1:0` on thread `name` and serves the router `make` builds from the
    /// bound address (a double that hands out URLs of its own needs it).
    pub fn start(
        name: &str,
        make: impl FnOnce(SocketAddr) -> Router + Send + 'static,
    ) -> ServedRouter {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind 127.0.0.1:0");
                    let addr = listener.local_addr().expect("local addr");
                    ready_tx.send(addr).expect("report the address");
                    let _ = axum::serve(listener, make(addr))
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn the double's thread");
        let addr = ready_rx.recv().expect("the double starts");
        ServedRouter {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ServedRouter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

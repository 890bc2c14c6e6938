//! Starting and stopping the gateway: the listener, the Prometheus recorder, and a graceful
//! shutdown that lets in-flight requests (streams included) finish.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use bedrock_throttle::{BoxError, ThrottleConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{config::GatewayConfig, routes, tls::TlsListener, upstream::Upstream};

/// A gateway serving on its listener.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its throttle, for its numbers.
    pub throttle: ThrottleConfig,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    /// The task that accepts TLS connections, which owns the socket when serving HTTPS.
    accepting: Option<JoinHandle<()>>,
}

/// The process's Prometheus recorder: installed once, before the first request, since each
/// quota key registers its series with the recorder of that time.
fn recorder() -> Result<PrometheusHandle, BoxError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Builds the throttle and the stack for `config`, binds `listen` and serves (HTTPS with
/// `tls`, else plain HTTP) until [`Running::shutdown`].
pub async fn start(
    config: &GatewayConfig,
    upstream: &Upstream,
    listen: SocketAddr,
    tls: Option<TlsAcceptor>,
) -> Result<Running, BoxError> {
    let metrics = recorder()?;
    let throttle = config.throttle()?;
    // By digest: the key a caller sends is hashed and looked up.
    let keys: HashMap<String, _> = config
        .callers()
        .map(|(_, digest, caller)| Ok((digest?, caller)))
        .collect::<Result<_, String>>()?;
    let app = routes::App {
        keys: Arc::new(keys),
        endpoint: upstream.endpoint.trim_end_matches('/').into(),
        stack: upstream.stack(&throttle)?,
        throttle: throttle.clone(),
        metrics,
    };
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone().cancelled_owned();
    let router = routes::router(app);
    // On shutdown: stop accepting, and wait for every open connection's requests.
    let (task, accepting) = match tls {
        Some(acceptor) => {
            let (listener, accepting) = TlsListener::new(listener, acceptor, shutdown.clone())?;
            let task = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal)
                    .await
            });
            (task, Some(accepting))
        }
        None => {
            let task = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal)
                    .await
            });
            (task, None)
        }
    };
    Ok(Running {
        addr,
        throttle,
        shutdown,
        task,
        accepting,
    })
}

impl Running {
    /// Stops accepting connections and returns once every request in flight has been
    /// answered to the end.
    pub async fn shutdown(self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        if let Some(accepting) = self.accepting {
            // Cancelled or aborted, its socket is closed either way.
            let _ = accepting.await;
        }
        Ok(self.task.await??)
    }
}

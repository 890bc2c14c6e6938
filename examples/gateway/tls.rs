//! HTTPS for the gateway's own listener. Callers send their key as a bearer token, which
//! recent botocore releases send only to an `https://` endpoint (`BearerAuth.add_auth`:
//! "Bearer authorization requires an HTTPS endpoint"); a gateway behind a load balancer
//! that terminates TLS can serve plain HTTP instead.
//!
//! The handshakes run in tasks of their own, each with a time limit, so a slow or silent
//! client never holds up the accept loop; axum's server sees finished TLS streams.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use bedrock_throttle::BoxError;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::{AbortHandle, JoinHandle},
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_util::sync::CancellationToken;

/// The certificate of `localhost` and `127.0.0.1` that `--emulator` serves when the
/// configuration names none; `tls/ca.pem` is the authority clients check it with. For local
/// demos only: its private key is public.
pub const DEMO_CERT: &[u8] = include_bytes!("tls/localhost.pem");
/// The private key of [`DEMO_CERT`].
pub const DEMO_KEY: &[u8] = include_bytes!("tls/localhost-key.pem");

/// The longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS server configuration from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, BoxError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener of TLS connections, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    addr: SocketAddr,
    streams: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: AbortHandle,
}

impl TlsListener {
    /// Accepts on `tcp` and hands on the connections whose handshake succeeds, until
    /// `stop` is cancelled; the returned task ends when the socket is closed.
    pub fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        stop: CancellationToken,
    ) -> io::Result<(Self, JoinHandle<()>)> {
        let addr = tcp.local_addr()?;
        let (tx, streams) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors, say: let some connections close first.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        let listener = Self {
            addr,
            streams,
            accepting: accepting.abort_handle(),
        };
        Ok((listener, accepting))
    }
}

impl Drop for TlsListener {
    /// The server drops its listener when it shuts down: stop accepting then.
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

//! Where the ledger's Redis is: one server or a cluster, and a connection to either that
//! the scripts use alike.

use std::{fmt, time::Duration};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    Client, Cmd, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value,
};

/// The server the ledger was given.
#[derive(Clone)]
pub(super) enum Server {
    /// One server (a primary): a connection that reconnects by itself.
    One(Client),
    /// A Redis Cluster: the cluster client routes each call by its keys' slot, follows
    /// `MOVED` redirects and refreshes its slot map when the cluster fails over.
    Cluster(Box<ClusterClient>),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(c) => write!(f, "{}", c.get_connection_info().addr()),
            Self::Cluster(_) => f.write_str("cluster"),
        }
    }
}

impl Server {
    /// Connects, each attempt and each answer bounded by `timeout`.
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Connection, RedisError> {
        match self {
            Self::One(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(timeout);
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Connection::One)
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                // The first connection asks the initial nodes for the slot map; a cluster
                // that does not answer is an outage like any other, asked again later.
                let connect = client.get_async_connection_with_config(config);
                match tokio::time::timeout(timeout * 2, connect).await {
                    Ok(conn) => Ok(Connection::Cluster {
                        conn: conn?,
                        timeout,
                    }),
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the Redis cluster did not answer in time",
    ))
}

/// A connection to the ledger's Redis; the scripts run on either kind the same way.
#[derive(Clone)]
pub(super) enum Connection {
    One(ConnectionManager),
    /// `timeout` bounds each call as a whole: the cluster client retries redirects and
    /// reconnects on its own, and a call must end in time to count as an outage.
    Cluster {
        conn: ClusterConnection,
        timeout: Duration,
    },
}

impl Connection {
    /// Whether `err` says this connection leads to the wrong server: a single server
    /// that answers `READONLY` is a replica now. (The cluster client handles `READONLY`
    /// itself, by asking the cluster for its slots again.)
    pub(super) fn must_reconnect(&self, err: &RedisError) -> bool {
        matches!(self, Self::One(_)) && err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::One(c) => c.req_packed_command(cmd),
            Self::Cluster { conn, timeout } => {
                // One redirect after a slow first attempt still fits.
                let bound = *timeout * 2;
                Box::pin(async move {
                    tokio::time::timeout(bound, conn.req_packed_command(cmd))
                        .await
                        .unwrap_or_else(|_| Err(timed_out()))
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::One(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(c) => c.get_db(),
            Self::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

//! Where Valkey is and how to talk to it: one server, or a cluster, behind one connection type.
//!
//! Every module queries a [`Connection`] the same way (`redis::cmd`, pipelines, scripts). On a
//! cluster the redis crate routes each command by its key's slot, and a pipeline must stay in
//! one slot: callers that touch several products send one pipeline per product (their keys share
//! the product's `{…}` hash tag), see `cache.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A Valkey deployment: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    nodes: Vec<String>,
    cluster: bool,
}

impl Address {
    /// Parse `redis://host:port` or a comma-separated list of such URLs (`valkey://` and
    /// `rediss://` accepted). Several nodes, or `cluster`, mean a cluster.
    pub fn parse(spec: &str, cluster: bool) -> Result<Self, String> {
        let nodes: Vec<String> = spec.split(',').map(str::trim).map(node_url).collect::<Result<_, _>>()?;
        if nodes.iter().any(String::is_empty) {
            return Err(format!("{spec:?} has an empty entry"));
        }
        let cluster = cluster || nodes.len() > 1;
        Ok(Self { nodes, cluster })
    }

    /// Whether this is a cluster (the client follows its slot map).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs given: the server, or the cluster's seed nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.nodes.join(","))
    }
}

fn node_url(url: &str) -> Result<String, String> {
    if url.is_empty() {
        return Ok(String::new());
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(url.to_owned())
    } else if let Some(rest) = url.strip_prefix("valkey://") {
        Ok(format!("redis://{rest}"))
    } else {
        Err(format!("{url} must start with redis:// or valkey://"))
    }
}

/// Timeouts and retries of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Connecting, and waiting for one answer.
    pub timeout: Duration,
    /// Retries of a failed command inside the client (reconnects, cluster redirections).
    pub retries: u32,
}

/// A connection to a server or to a cluster; cheap to clone, reconnects by itself.
#[derive(Clone)]
pub enum Connection {
    /// One server, through the connection manager.
    Server(ConnectionManager),
    /// A cluster, connected on first use.
    Cluster(LazyCluster),
}

impl Connection {
    /// Connect lazily: nothing has to answer yet.
    pub fn open(address: &Address, tuning: Tuning) -> redis::RedisResult<Self> {
        if address.is_cluster() {
            let client = ClusterClient::builder(address.nodes().to_vec())
                .connection_timeout(tuning.timeout)
                .response_timeout(tuning.timeout)
                .retries(tuning.retries)
                .min_retry_wait(50)
                .max_retry_wait(1000)
                .build()?;
            return Ok(Connection::Cluster(LazyCluster { client: Arc::new(client), conn: Arc::default() }));
        }
        let client = redis::Client::open(address.nodes()[0].as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(tuning.timeout))
            .set_response_timeout(Some(tuning.timeout))
            .set_number_of_retries(tuning.retries as usize)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        Ok(Connection::Server(ConnectionManager::new_lazy_with_config(client, config)?))
    }

    /// Whether commands are routed over a cluster (pipelines must then stay in one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

/// A cluster connection made on first use and kept; a failed attempt is retried by the next use.
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    conn: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(lazy) => Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(lazy) => {
                Box::pin(async move { lazy.get().await?.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(conn) => conn.get_db(),
            Connection::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_server_unless_told() {
        let a = Address::parse("redis://127.0.0.1:6379", false).unwrap();
        assert!(!a.is_cluster());
        assert_eq!(a.to_string(), "redis://127.0.0.1:6379");
        assert!(Address::parse("redis://127.0.0.1:6379", true).unwrap().is_cluster());
    }

    #[test]
    fn a_list_is_a_cluster() {
        let a = Address::parse("valkey://10.0.0.1:7000, redis://10.0.0.2:7000", false).unwrap();
        assert!(a.is_cluster());
        assert_eq!(a.nodes(), ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
    }

    #[test]
    fn bad_entries_are_named() {
        assert!(Address::parse("http://x:1", false).unwrap_err().contains("http://x:1"));
        assert!(Address::parse("redis://a:1,", false).unwrap_err().contains("empty"));
        assert!(Address::parse("redis://a:1,b:2", false).unwrap_err().contains("b:2"));
    }
}

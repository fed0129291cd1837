//! A NATS cluster of child `nats-server`s on loopback: every node with
//! JetStream and its own store, routes between all of them, started and
//! stopped like one server (see [`crate::NatsServer`], whose guarantees each
//! node keeps: no port picked in advance, no orphans, clear failures).
//!
//! **No port is guessed.** Routes need the other nodes' ports, which exist
//! only once those nodes listen. So the first node starts with a placeholder
//! route (JetStream refuses to cluster without a configured route), the
//! second routes to the first, the third to both; once all listen, each is
//! reloaded (SIGHUP) with routes to all the others, and every node's
//! configuration is then complete: a node restarted after a crash comes back
//! on its own ports and finds its peers by itself.
//!
//! Started means *healthy*: every node answers `/healthz`, i.e. JetStream's
//! meta group has a leader and every node is current with it, so the first
//! stream create succeeds (no sleep-and-hope).

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::launcher::{BrokerConfig, BrokerError, ClusterMembership, NatsServer};

/// A route nobody listens on (connections to port 0 are refused at once):
/// only there so that the first node may start in cluster mode, and gone
/// after the first reload.
const PLACEHOLDER_ROUTE: &str = "nats-route://127.0.0.1:0";

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How many nodes (3 for a cluster that survives losing one).
    pub nodes: usize,
    /// The cluster's name.
    pub name: String,
    /// What every node shares: binary, sync policy, timeouts. Its
    /// `store_dir` is the root under which node *i* keeps `node-<i>/`
    /// (a temporary one when `None`); its `port` and `cluster` are ignored.
    pub node: BrokerConfig,
    /// How long the whole cluster may take to become healthy.
    pub ready_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            name: "demo".to_owned(),
            node: BrokerConfig::default(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running cluster. Stop it with [`NatsCluster::stop`]; dropping it kills
/// every node.
#[derive(Debug)]
pub struct NatsCluster {
    /// The running nodes; `None` while a node is down (after [`Self::kill`]).
    nodes: Vec<Option<NatsServer>>,
    /// How to start each node again, on the ports it had.
    configs: Vec<BrokerConfig>,
    /// Each node's client URL (kept while the node is down).
    urls: Vec<String>,
    ready_timeout: Duration,
    // Removed with the cluster when no store root was given.
    _temp_root: Option<TempDir>,
}

impl NatsCluster {
    /// Starts `config.nodes` nodes and waits until the cluster is healthy.
    pub async fn start_with(config: ClusterConfig) -> Result<Self, BrokerError> {
        if config.nodes == 0 {
            return Err(BrokerError::Config(
                "a cluster needs at least one node".into(),
            ));
        }
        let (root, temp_root) = match &config.node.store_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new().prefix("nats-cluster-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut nodes: Vec<NatsServer> = Vec::with_capacity(config.nodes);
        for index in 0..config.nodes {
            let routes = if index == 0 {
                vec![PLACEHOLDER_ROUTE.to_owned()]
            } else {
                nodes.iter().filter_map(route_of).collect()
            };
            let node = BrokerConfig {
                store_dir: Some(node_store(&root, index)),
                port: None,
                cluster: Some(ClusterMembership {
                    name: config.name.clone(),
                    server_name: server_name(index),
                    port: None,
                    routes,
                }),
                ..config.node.clone()
            };
            nodes.push(NatsServer::start_with(node).await?);
        }
        let all_routes: Vec<String> = nodes.iter().filter_map(route_of).collect();
        let mut configs = Vec::with_capacity(nodes.len());
        for (index, node) in nodes.iter_mut().enumerate() {
            let others: Vec<String> = all_routes
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, route)| route.clone())
                .collect();
            node.reload_routes(others).await?;
            // Restarts come back where the peers and clients expect them.
            let mut restart = node.config().clone();
            restart.port = port_of(node.url());
            if let Some(cluster) = restart.cluster.as_mut() {
                cluster.port = node.cluster_url().and_then(port_of);
            }
            configs.push(restart);
        }
        let cluster = NatsCluster {
            urls: nodes.iter().map(|n| n.url().to_owned()).collect(),
            nodes: nodes.into_iter().map(Some).collect(),
            configs,
            ready_timeout: config.ready_timeout,
            _temp_root: temp_root,
        };
        cluster.wait_healthy().await?;
        tracing::debug!(urls = %cluster.url(), "nats cluster ready");
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: what clients connect with.
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// Each node's client URL, by node index.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The running node `index` (`None` while it is down).
    pub fn node(&self, index: usize) -> Option<&NatsServer> {
        self.nodes.get(index).and_then(Option::as_ref)
    }

    /// The index of the node called `server_name` (as the server reports it,
    /// e.g. as a stream's leader).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&index| self::server_name(index) == server_name)
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// SIGKILLs node `index`, as a crash would; its store is kept.
    pub async fn kill(&mut self, index: usize) -> Result<(), BrokerError> {
        if let Some(node) = self.nodes.get_mut(index).and_then(Option::take) {
            node.kill().await?;
        }
        Ok(())
    }

    /// Starts node `index` again (on its ports, with its store) and waits
    /// until the whole cluster is healthy, that node caught up included.
    pub async fn restart(&mut self, index: usize) -> Result<(), BrokerError> {
        if self.node(index).is_none() {
            let node = NatsServer::start_with(self.configs[index].clone()).await?;
            self.nodes[index] = Some(node);
        }
        self.wait_healthy().await
    }

    /// Waits until every running node reports itself healthy.
    pub async fn wait_healthy(&self) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        loop {
            let mut all = true;
            for node in self.nodes.iter().flatten() {
                all &= node.healthy().await;
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::StartTimeout {
                    timeout: self.ready_timeout,
                    output: "the cluster's nodes did not all report healthy (/healthz)".into(),
                });
            }
            // Raft elections take seconds; asking every 50 ms is plenty.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node gracefully (leaders step down first).
    pub async fn stop(mut self) -> Result<(), BrokerError> {
        let mut result = Ok(());
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let stopped = node.stop().await;
            if result.is_ok() {
                result = stopped;
            }
        }
        result
    }
}

/// Node `index`'s name, stable across restarts (Raft knows peers by it).
fn server_name(index: usize) -> String {
    format!("node-{}", index + 1)
}

fn node_store(root: &std::path::Path, index: usize) -> PathBuf {
    root.join(server_name(index))
}

/// The route URL other nodes use to reach `node`.
fn route_of(node: &NatsServer) -> Option<String> {
    let address = node.cluster_url()?.split("://").last()?;
    Some(format!("nats-route://{address}"))
}

/// The port of a `scheme://host:port` URL.
fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_names_come_from_urls_and_indexes() {
        assert_eq!(port_of("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(port_of("nats-route://127.0.0.1:6222/"), Some(6222));
        assert_eq!(port_of("nats://127.0.0.1"), None);
        assert_eq!(server_name(0), "node-1");
        assert_eq!(
            node_store(std::path::Path::new("/data"), 2),
            PathBuf::from("/data/node-3")
        );
    }
}

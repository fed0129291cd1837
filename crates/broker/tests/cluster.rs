//! The cluster launcher: three real nodes, an R3 stream, a node lost and
//! brought back.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use broker::{ClusterConfig, NatsCluster};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The current leader of `stream`, as a node index.
async fn leader(js: &jetstream::Context, cluster: &NatsCluster, stream: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(index) = info
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.as_deref())
                    .and_then(|name| cluster.index_of(name))
                {
                    return index;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} got no leader within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_three_node_cluster_keeps_an_r3_stream_through_the_loss_of_its_leader() {
    let mut cluster = NatsCluster::start_with(ClusterConfig::default())
        .await
        .expect("cluster starts");
    assert_eq!(cluster.len(), 3);
    let urls = cluster.urls().to_vec();
    assert_eq!(urls.len(), 3);
    assert_eq!(cluster.url(), urls.join(","));

    // One client, every node's URL: it reconnects across node losses by itself.
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::connect(addrs).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 stream is created at once: the cluster is ready when started");
    for n in 0..10 {
        js.publish(format!("r3.{n}"), "before".into())
            .await
            .unwrap()
            .await
            .expect("stored on a quorum");
    }

    let first = leader(&js, &cluster, "R3").await;
    let pid = cluster.node(first).unwrap().pid().unwrap();
    cluster.kill(first).await.expect("kill the leader");
    assert!(!alive(pid));
    assert!(cluster.node(first).is_none());

    // Another node takes over; writes are taken again once it has.
    let second = leader(&js, &cluster, "R3").await;
    assert_ne!(second, first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = async {
            js.publish("r3.after", "after".into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match stored.await {
            Ok(ack) => {
                assert_eq!(ack.sequence, 11, "nothing lost, nothing doubled");
                break;
            }
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "no write within 30 s of losing a node: {err}"
            ),
        }
    }

    // The lost node comes back on its own ports, with its store, and catches up.
    cluster.restart(first).await.expect("restart the node");
    let node = cluster.node(first).expect("running again");
    assert_eq!(node.url(), urls[first]);
    let info = js
        .get_stream("R3")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 11);
    let replicas = info.cluster.expect("clustered").replicas;
    assert_eq!(replicas.len(), 2, "two followers beside the leader");

    let pids: Vec<u32> = (0..3).filter_map(|i| cluster.node(i)?.pid()).collect();
    assert_eq!(pids.len(), 3);
    client.drain().await.unwrap();
    cluster.stop().await.expect("graceful stop");
    for pid in pids {
        assert!(!alive(pid), "stop must leave no node behind ({pid})");
    }
}

#[tokio::test]
async fn a_cluster_restarted_on_its_stores_keeps_its_streams() {
    let root = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        node: broker::BrokerConfig {
            store_dir: Some(root.path().to_owned()),
            ..Default::default()
        },
        ..ClusterConfig::default()
    };
    let cluster = NatsCluster::start_with(config.clone())
        .await
        .expect("starts");
    let client = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "KEPT".into(),
        subjects: vec!["kept".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("kept", "1".into()).await.unwrap().await.unwrap();
    client.drain().await.unwrap();
    cluster.stop().await.unwrap();
    for node in ["node-1", "node-2", "node-3"] {
        assert!(root.path().join(node).is_dir(), "{node} has its own store");
    }

    // New ports, same stores: the nodes find each other and the stream.
    let cluster = NatsCluster::start_with(config).await.expect("restarts");
    let client = async_nats::connect(cluster.urls()[2].as_str())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let info = loop {
        if let Ok(mut stream) = js.get_stream("KEPT").await {
            if let Ok(info) = stream.info().await {
                if info.cluster.as_ref().is_some_and(|c| c.leader.is_some()) {
                    break info.clone();
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "stream not back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.state.messages, 1);
    assert_eq!(info.config.num_replicas, 3);
    client.drain().await.unwrap();
    cluster.stop().await.unwrap();
}

//! Replication from configuration: `Limits::replicas` on a real 3-node
//! cluster, and a clear refusal where the broker cannot replicate.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use messaging_core::{Declaration, Limits, Module, ModuleOptions, RegisterError, Storage};
use testkit::{spawn_broker, spawn_cluster};

const LEDGER: Declaration = Declaration {
    name: "ledger",
    description: "keeps one table",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &["ledger"],
    listens: &[],
};

/// Registers the ledger (its table `ledger`, the event stream, idempotency
/// keys and dead letters) with `replicas`, then stops it.
async fn register(client: &async_nats::Client, replicas: usize) -> Result<(), RegisterError> {
    let options = ModuleOptions {
        limits: Limits::replicated(replicas),
        ..ModuleOptions::with_storage(Storage::Durable)
    };
    let setup = Module::setup(client.clone(), &LEDGER, "0.1.0", options).await?;
    let _table: messaging_core::store::Table<u32> = setup
        .table("ledger", None)
        .await
        .map_err(|err| RegisterError::Config(err.to_string()))?;
    setup.start(Arc::new(())).await?.running().shutdown().await;
    Ok(())
}

/// The replica count of every stream the ledger set up, by stream name.
async fn replicas(client: &async_nats::Client) -> Vec<(&'static str, usize)> {
    let js = jetstream::new(client.clone());
    let mut counts = Vec::new();
    for stream in ["EVENTS", "KV_ledger", "KV_idempotency", "KV_dead_letters"] {
        let mut handle = js.get_stream(stream).await.unwrap();
        let info = handle.info().await.unwrap();
        counts.push((stream, info.config.num_replicas));
    }
    counts
}

#[tokio::test]
async fn the_stream_and_every_bucket_get_the_replicas_asked_for_and_follow_a_change() {
    let app = spawn_cluster().await;
    let client = app.bus().client().clone();

    register(&client, 3).await.expect("R3 on a 3-node cluster");
    assert!(replicas(&client).await.iter().all(|(_, n)| *n == 3));
    // Every replica placed: one leader and two followers per stream.
    let js = jetstream::new(client.clone());
    let info = js
        .get_stream("KV_ledger")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let cluster = info.cluster.expect("clustered");
    assert!(cluster.leader.is_some());
    assert_eq!(cluster.replicas.len(), 2);

    // A tool that says nothing about replicas leaves them as they are.
    register(&client, 0).await.unwrap();
    assert!(replicas(&client).await.iter().all(|(_, n)| *n == 3));

    // Another count is applied, not silently ignored.
    register(&client, 1).await.expect("scaled down");
    assert_eq!(
        replicas(&client).await,
        [
            ("EVENTS", 1),
            ("KV_ledger", 1),
            ("KV_idempotency", 1),
            ("KV_dead_letters", 1)
        ]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn replicas_a_single_server_cannot_keep_are_refused_with_a_clear_error() {
    let app = spawn_broker().await;
    let err = tokio::time::timeout(Duration::from_secs(10), register(app.bus().client(), 3))
        .await
        .expect("refused at once, not a hang")
        .expect_err("one server cannot keep 3 replicas");
    let text = err.to_string();
    assert!(text.contains("EVENTS"), "{text}");
    assert!(text.to_lowercase().contains("replica"), "{text}");
    app.shutdown().await;
}

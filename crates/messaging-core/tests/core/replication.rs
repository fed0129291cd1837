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

/// Which way ten reads of a table opened with `replicas`, read for
/// decisions ([`Table::reading_from_leader`]), went: (through the stream
/// leader, direct gets), as seen by a subscriber to both API subjects.
async fn ten_reads(client: &async_nats::Client, replicas: usize) -> (usize, usize) {
    use futures::StreamExt;
    use messaging_core::store::Table;
    let limits = Limits::replicated(replicas);
    let table: Table<u32> = Table::open(client, Storage::Durable, "decided", None, &limits)
        .await
        .unwrap()
        .reading_from_leader();
    table.put("k", &7).await.unwrap();
    let mut leader = client
        .subscribe("$JS.API.STREAM.MSG.GET.KV_decided")
        .await
        .unwrap();
    let mut direct = client
        .subscribe("$JS.API.DIRECT.GET.KV_decided.>")
        .await
        .unwrap();
    client.flush().await.unwrap();
    // A round trip: the server has both subscriptions before the reads.
    jetstream::new(client.clone())
        .query_account()
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(table.get("k").await.unwrap().unwrap().value, 7);
    }
    let (mut through_leader, mut directly) = (0, 0);
    let counted = async {
        while through_leader + directly < 10 {
            tokio::select! {
                Some(_) = leader.next() => through_leader += 1,
                Some(_) = direct.next() => directly += 1,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("each read seen");
    (through_leader, directly)
}

#[tokio::test]
async fn a_replicated_table_read_for_decisions_reads_through_its_leader_a_single_one_directly() {
    // Three replicas: one may lag, so every read goes to the leader.
    let cluster = spawn_cluster().await;
    assert_eq!(ten_reads(cluster.bus().client(), 3).await, (10, 0));
    cluster.shutdown().await;
    // One replica: nothing can lag, and a direct get costs half.
    let single = spawn_broker().await;
    assert_eq!(ten_reads(single.bus().client(), 1).await, (0, 10));
    single.shutdown().await;
}

#[tokio::test]
async fn a_read_through_the_leader_finds_removed_and_missing_keys_absent_and_fails_when_it_cannot_read(
) {
    use messaging_core::store::Table;
    let cluster = spawn_cluster().await;
    let client = cluster.bus().client().clone();
    let limits = Limits::replicated(3);
    let table: Table<u32> = Table::open(&client, Storage::Durable, "leader_read", None, &limits)
        .await
        .unwrap()
        .reading_from_leader();
    table.put("kept", &1).await.unwrap();
    table.put("deleted", &2).await.unwrap();
    table.delete("deleted").await.unwrap();
    table.put("purged", &3).await.unwrap();
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("leader_read").await.unwrap();
    kv.purge("purged").await.unwrap();

    // The last message of a deleted or purged key is its marker: absent,
    // like a key never written.
    assert_eq!(table.get("kept").await.unwrap().map(|v| v.value), Some(1));
    assert_eq!(table.get("deleted").await.unwrap(), None);
    assert_eq!(table.get("purged").await.unwrap(), None);
    assert_eq!(table.get("never").await.unwrap(), None);

    // A read that cannot be made is an error, never "absent": a decision
    // (is there stock? does the hold exist?) must not be made on it.
    js.delete_stream("KV_leader_read").await.unwrap();
    let err = table.get("kept").await.expect_err("no bucket, no answer");
    assert!(
        matches!(err, messaging_core::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
    cluster.shutdown().await;
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tally {
    n: u32,
}
impl messaging_core::Event for Tally {
    const SUBJECT: &'static str = "events.ledger.tally";
}

#[tokio::test]
async fn one_event_published_by_many_at_once_on_a_replicated_stream_is_stored_once_and_all_are_answered(
) {
    let cluster = spawn_cluster().await;
    let client = cluster.bus().client().clone();
    let limits = Limits::replicated(3);
    messaging_core::ensure_stream(&client, &limits)
        .await
        .unwrap();
    let bus = messaging_core::Bus::new(client.clone());
    for round in 0..5 {
        // The same fact (the same event id) from 16 publishers at once: a
        // replicated stream answers "being stored" to those that come while
        // the first is in process; they ask again until it is stored.
        let meta = messaging_core::EventMeta {
            event_id: uuid::Uuid::new_v4(),
            correlation_id: uuid::Uuid::new_v4(),
        };
        let publishers = (0..16).map(|_| {
            let bus = bus.clone();
            async move { bus.publish_as(&Tally { n: round }, meta).await }
        });
        let results = futures::future::join_all(publishers).await;
        let stored: Vec<_> = results
            .into_iter()
            .map(|result| result.expect("every publisher answered, none refused"))
            .collect();
        assert_eq!(
            stored.iter().filter(|p| !p.duplicate).count(),
            1,
            "stored once, the others told it is a duplicate"
        );
        assert!(stored.iter().all(|p| p.sequence == stored[0].sequence));
    }
    cluster.shutdown().await;
}

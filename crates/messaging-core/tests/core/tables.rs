//! State tables: a bucket is created as configured (on disk, one revision
//! per key, its age and size limits), a module's idempotency keys live a
//! day, and a table behaves alike in memory and in a bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{self, StorageType};
use messaging_core::store::{StoreError, Table, Versioned};
use messaging_core::{Declaration, Limits, Module, ModuleOptions, Storage};
use testkit::{spawn_broker, TestBroker};

/// The configuration of the stream behind bucket `bucket`.
async fn bucket_config(app: &TestBroker, bucket: &str) -> stream::Config {
    let mut stream = app
        .bus()
        .jetstream()
        .get_stream(format!("KV_{bucket}"))
        .await
        .unwrap_or_else(|err| panic!("bucket {bucket}: {err}"));
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn a_durable_table_is_a_bucket_on_disk_with_one_revision_its_age_and_size() {
    let app = spawn_broker().await;
    let client = app.bus().client();
    let _aged: Table<u32> = Table::open(
        client,
        Storage::Durable,
        "aged",
        Some(Duration::from_secs(90)),
        &bytes(1 << 20),
    )
    .await
    .unwrap();
    let config = bucket_config(&app, "aged").await;
    assert_eq!(config.storage, StorageType::File, "survives a restart");
    assert_eq!(config.max_messages_per_subject, 1, "one revision per key");
    assert_eq!(config.max_age, Duration::from_secs(90));
    assert_eq!(config.max_bytes, 1 << 20);

    let _forever: Table<u32> =
        Table::open(client, Storage::Durable, "forever", None, &bytes(2 << 20))
            .await
            .unwrap();
    let config = bucket_config(&app, "forever").await;
    assert_eq!(config.max_age, Duration::ZERO, "no age limit");
    assert_eq!(config.max_bytes, 2 << 20);
    assert_eq!(config.storage, StorageType::File);

    // Full means the new write is refused, nothing stored is dropped.
    let small: Table<String> = Table::open(client, Storage::Durable, "small", None, &bytes(1024))
        .await
        .unwrap();
    let big = "x".repeat(600);
    small.put("first", &big).await.unwrap();
    assert!(matches!(
        small.put("second", &big).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(small.get("first").await.unwrap().unwrap().value, big);
    app.shutdown().await;
}

const KEEPER: Declaration = Declaration {
    name: "keeper",
    description: "keeps nothing but its idempotency keys",
    serves: &[],
    requests: &[],
    publishes: &[],
    schedules: &[],
    buckets: &[],
    listens: &[],
};

#[tokio::test]
async fn a_modules_idempotency_keys_are_kept_a_day_on_disk() {
    let app = spawn_broker().await;
    let limits = Limits {
        bucket_max_bytes: 3 << 20,
        ..Limits::default()
    };
    let options = ModuleOptions {
        limits,
        ..ModuleOptions::with_storage(Storage::Durable)
    };
    let module = Module::setup(app.bus().client().clone(), &KEEPER, "0.1.0", options)
        .await
        .unwrap()
        .start(Arc::new(()))
        .await
        .unwrap()
        .running();
    let config = bucket_config(&app, "idempotency").await;
    assert_eq!(config.max_age, Duration::from_secs(24 * 60 * 60));
    assert_eq!(config.max_bytes, 3 << 20);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.max_messages_per_subject, 1);
    module.shutdown().await;
    app.shutdown().await;
}

/// Every operation of a table, checked the same way on either backend.
async fn behaves_like_a_table(table: Table<u32>) {
    assert_eq!(table.get("a").await.unwrap(), None);
    let first = table.create("a", &1).await.unwrap();
    assert!(matches!(
        table.create("a", &2).await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(
        table.get("a").await.unwrap(),
        Some(Versioned {
            value: 1,
            revision: first
        })
    );
    assert_eq!(table.create_or_get("a", 5).await.unwrap(), 1, "the first");
    assert_eq!(table.create_or_get("b", 5).await.unwrap(), 5);

    // Compare-and-set: only from the revision read.
    let second = table.update("a", &3, first).await.unwrap();
    assert!(second > first);
    assert!(matches!(
        table.update("a", &4, first).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        table.update("nothing", &4, first).await,
        Err(StoreError::Conflict(_))
    ));
    let third = table.put("a", &6).await.unwrap();
    assert!(third > second);
    assert_eq!(table.get("a").await.unwrap().unwrap().value, 6);

    // Deletes: plain, and only from the revision read.
    table.put("c", &7).await.unwrap();
    table.delete("b").await.unwrap();
    assert_eq!(table.get("b").await.unwrap(), None, "deleted is gone");
    assert!(
        !table.delete_at("a", second).await.unwrap(),
        "changed since"
    );
    assert_eq!(table.get("a").await.unwrap().unwrap().value, 6);
    assert!(table.delete_at("a", third).await.unwrap());
    assert_eq!(table.get("a").await.unwrap(), None);
    assert!(!table.delete_at("a", third).await.unwrap(), "already gone");

    // Listing: the live keys and values, however many.
    for (key, value) in [("d", 8), ("e", 9)] {
        table.put(key, &value).await.unwrap();
    }
    let mut keys = table.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["c", "d", "e"]);
    let mut values = table.values().await.unwrap();
    values.sort();
    let expected = [("c", 7), ("d", 8), ("e", 9)].map(|(k, v)| (k.to_owned(), v));
    assert_eq!(values, expected);

    // A key no bucket can hold is simply not there, and removing it
    // removes nothing (">" and "*" are not "every key").
    for key in ["a b", "*", ">", "", ".c", "c."] {
        assert_eq!(table.get(key).await.unwrap(), None, "{key:?}");
        table.remove(key).await.unwrap();
    }
    let mut keys = table.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["c", "d", "e"]);

    // Removing erases a key.
    table.remove("d").await.unwrap();
    table.remove("never-there").await.unwrap();
    assert_eq!(table.get("d").await.unwrap(), None);
    let mut keys = table.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["c", "e"]);
}

#[tokio::test]
async fn a_table_behaves_alike_in_memory_and_in_a_bucket() {
    let app = spawn_broker().await;
    let client = app.bus().client();
    for storage in [Storage::Memory, Storage::Durable] {
        let table = Table::open(client, storage, "alike", None, &bytes(1 << 20))
            .await
            .unwrap();
        behaves_like_a_table(table).await;
    }
    // An empty bucket lists nothing (and does not wait for entries).
    let empty: Table<u32> = Table::open(client, Storage::Durable, "empty", None, &bytes(1 << 20))
        .await
        .unwrap();
    let values = tokio::time::timeout(Duration::from_secs(10), empty.values()).await;
    assert_eq!(values.expect("an answer at once").unwrap(), []);
    assert_eq!(empty.keys().await.unwrap(), Vec::<String>::new());
    app.shutdown().await;
}

#[tokio::test]
async fn a_removed_key_leaves_nothing_in_the_bucket_a_deleted_one_a_marker() {
    let app = spawn_broker().await;
    let table: Table<u32> = Table::open(
        app.bus().client(),
        Storage::Durable,
        "erased",
        None,
        &bytes(1 << 20),
    )
    .await
    .unwrap();
    let stream = app.bus().jetstream().get_stream("KV_erased").await.unwrap();
    let stored = || async { stream.get_info().await.unwrap().state.messages };
    let odd = "x-y/z_w=v.u"; // every character a key may have
    for key in ["a", "b", odd] {
        table.put(key, &1).await.unwrap();
    }
    assert_eq!(stored().await, 3);
    table.delete("b").await.unwrap();
    assert_eq!(stored().await, 3, "b's value replaced by a delete marker");
    for key in ["a", "b", odd] {
        table.remove(key).await.unwrap();
    }
    assert_eq!(stored().await, 0, "nothing left of any of them");
    app.shutdown().await;
}

#[tokio::test]
async fn an_index_removes_a_key_with_one_write_and_ends_up_holding_only_live_keys() {
    let app = spawn_broker().await;
    let client = app.bus().client();
    let index: Table<u32> =
        Table::open_index(client, Storage::Durable, "progress", &bytes(1 << 20))
            .await
            .unwrap();
    assert!(bucket_config(&app, "progress").await.allow_message_ttl);
    let alike = Table::open_index(client, Storage::Durable, "alike", &bytes(1 << 20))
        .await
        .unwrap();
    behaves_like_a_table(alike).await;
    let stream = app
        .bus()
        .jetstream()
        .get_stream("KV_progress")
        .await
        .unwrap();
    let stored = || async { stream.get_info().await.unwrap().state.messages };
    let sequence = || async { stream.get_info().await.unwrap().state.last_sequence };

    let odd = "x-y/z_w=v.u";
    for key in ["a", odd, "live"] {
        index.put(key, &1).await.unwrap();
    }
    let before = sequence().await;
    for key in ["a", odd] {
        index.remove(key).await.unwrap();
        assert_eq!(index.get(key).await.unwrap(), None, "{key}");
    }
    assert_eq!(sequence().await, before + 2, "one write per removal");
    // The markers expire by themselves; meanwhile, and after, the index
    // lists exactly its live keys, at once, however the reading and the
    // expiry fall.
    let expired = async {
        loop {
            let values = tokio::time::timeout(Duration::from_secs(10), index.values())
                .await
                .expect("an answer, not a wait for markers gone")
                .unwrap();
            let keys: Vec<_> = values.into_iter().map(|(key, _)| key).collect();
            assert!(keys.contains(&"live".to_owned()), "{keys:?}");
            assert!(!keys.iter().any(|k| k == "a" || k == odd), "{keys:?}");
            let mut listed = index.keys().await.unwrap();
            listed.sort();
            assert!(!listed.iter().any(|k| k == "a" || k == odd), "{listed:?}");
            // Only "live".
            if stored().await == 1 {
                break;
            }
            // Each reading is a consumer of the bucket: a few, not hundreds.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), expired)
        .await
        .expect("the markers expired");
    // An index emptied entirely reads as empty, at once.
    index.remove("live").await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), index.values())
            .await
            .expect("an answer")
            .unwrap(),
        []
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_bucket_gone_is_an_error_not_an_empty_table() {
    let app = spawn_broker().await;
    let client = app.bus().client();
    let table: Table<u32> = Table::open(client, Storage::Durable, "gone", None, &bytes(1 << 20))
        .await
        .unwrap();
    let revision = table.put("a", &1).await.unwrap();
    app.bus()
        .jetstream()
        .delete_stream("KV_gone")
        .await
        .unwrap();
    assert!(matches!(
        table.get("a").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        table.delete_at("a", revision).await,
        Err(StoreError::Unavailable(_))
    ));
    app.shutdown().await;
}

/// The default limits with buckets of at most `max_bytes`.
fn bytes(max_bytes: i64) -> messaging_core::Limits {
    messaging_core::Limits {
        bucket_max_bytes: max_bytes,
        ..messaging_core::Limits::default()
    }
}

#[tokio::test]
async fn a_deadline_stream_made_by_an_earlier_version_is_brought_up_to_date() {
    // As the version before keyed deadlines made it: no rollups, no TTLs.
    let app = spawn_broker().await;
    let client = app.bus().client();
    let js = app.bus().jetstream();
    js.create_stream(stream::Config {
        name: messaging_core::DEADLINES_STREAM.to_owned(),
        subjects: vec!["deadlines.>".to_owned(), "schedules.>".to_owned()],
        storage: StorageType::File,
        discard: stream::DiscardPolicy::Old,
        allow_message_schedules: true,
        ..Default::default()
    })
    .await
    .unwrap();
    messaging_core::ensure_stream(client, &messaging_core::Limits::default())
        .await
        .expect("updated in place");
    let mut deadlines = js
        .get_stream(messaging_core::DEADLINES_STREAM)
        .await
        .unwrap();
    let config = deadlines.info().await.unwrap().config.clone();
    assert!(config.allow_rollup && config.allow_message_ttl);
    assert!(config.allow_message_schedules);
    app.shutdown().await;
}

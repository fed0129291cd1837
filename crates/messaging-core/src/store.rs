//! Module state: a table of JSON values with revisions and compare-and-set,
//! kept durably in a JetStream key-value bucket or, for unit tests and
//! `--ephemeral` runs, in memory, behind one interface.
//!
//! Every state change in the modules goes through [`Table::modify`]: read the
//! value and its revision, compute the change, write it only if nobody wrote
//! in between (`update` with the expected revision), otherwise read again and
//! retry. Two writers racing on the same key (two reservations on one
//! product, two events on one order) can therefore never lose an update,
//! whether they run in one process or in several.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::limits::Limits;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a module keeps its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// JetStream key-value buckets: survives restarts, shared by instances.
    #[default]
    Durable,
    /// Process memory: gone at exit, private to this process.
    Memory,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    Exists(String),
    #[error("key {0} was changed concurrently")]
    Conflict(String),
    #[error("stored value of {key} is not valid: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("module {module} does not declare the bucket {bucket}")]
    Undeclared {
        module: &'static str,
        bucket: String,
    },
}

impl From<StoreError> for crate::ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Corrupt { .. } | StoreError::Undeclared { .. } => {
                crate::ServiceError::internal(err.to_string())
            }
            other => crate::ServiceError::unavailable(other.to_string()),
        }
    }
}

/// A value and the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<V> {
    pub value: V,
    pub revision: u64,
}

/// What [`Table::modify`] should do with the key.
#[derive(Debug)]
pub enum Change<V, T> {
    /// Write this value, and return `T`.
    Write(V, T),
    /// Leave the key as it is, and return `T`.
    Keep(T),
}

/// How many times a compare-and-set is retried before giving up (a key this
/// hot is a design problem, not something to spin on forever).
const MAX_ATTEMPTS: usize = 1_000;

/// How many locks [`Table::modify`] stripes its keys over.
const LOCK_STRIPES: usize = 256;

/// How long [`Table::values`] may take (40,000 entries take 0.1 s).
const READ_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Table::values`] waits for the next entry of its watch before
/// reading the bucket again (see there).
const QUIET_WATCH: Duration = Duration::from_secs(1);

/// How many recently written values a table remembers (see [`Table::modify`]).
const CACHE_ENTRIES: usize = 8_192;

/// A table of `V`s by string key.
pub struct Table<V> {
    backend: Backend,
    /// Serialises `modify` calls on the same key (and, rarely, on keys that
    /// share its stripe) *within this process*.
    ///
    /// Compare-and-set alone is correct, but under heavy contention on one
    /// key (500 orders for one product) optimistic retries cost a round trip
    /// each, again and again. Queueing local writers is cheap, and CAS still
    /// guards against other processes.
    stripes: Arc<[tokio::sync::Mutex<()>]>,
    /// The last value this process wrote or read per key, with its revision,
    /// so that `modify` can try its compare-and-set without reading first.
    /// Bounded (least recently used go first); a stale entry only costs a
    /// failed compare-and-set and a fresh read.
    cache: Arc<Mutex<lru::LruCache<String, Versioned<V>>>>,
    /// Read through the bucket's stream leader, never a replica that may lag
    /// (see [`Table::reading_from_leader`]).
    leader_reads: bool,
    /// Removed keys leave a purge marker that expires by itself (see
    /// [`Table::open_index`]), instead of being purged through the stream's API.
    expiring_markers: bool,
}

/// How long the marker a removed key of an index leaves stays in its bucket:
/// the shortest per-message TTL the server takes. Long enough for any
/// reader that still had the key to see it removed, short enough that the
/// bucket holds only live keys.
const REMOVED_MARKER_TTL: Duration = Duration::from_secs(1);

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            stripes: self.stripes.clone(),
            cache: self.cache.clone(),
            leader_reads: self.leader_reads,
            expiring_markers: self.expiring_markers,
        }
    }
}

fn cache<V>() -> Arc<Mutex<lru::LruCache<String, Versioned<V>>>> {
    let capacity = std::num::NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero");
    Arc::new(Mutex::new(lru::LruCache::new(capacity)))
}

fn stripes() -> Arc<[tokio::sync::Mutex<()>]> {
    (0..LOCK_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
}

fn stripe_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % LOCK_STRIPES
}

#[derive(Clone)]
enum Backend {
    Kv(Box<kv::Store>),
    Memory(Arc<Mutex<Memory>>),
}

#[derive(Default)]
struct Memory {
    rows: HashMap<String, (Bytes, u64)>,
    last_revision: u64,
    /// Entries older than this are gone, as in a bucket with `max_age`.
    max_age: Option<Duration>,
    /// When each key was last written, oldest first, for the expiry.
    /// (tokio's clock: the real one, unless a test pauses it.)
    written: std::collections::VecDeque<(tokio::time::Instant, String, u64)>,
}

impl Memory {
    fn with_max_age(max_age: Option<Duration>) -> Self {
        Self {
            max_age,
            ..Self::default()
        }
    }

    /// Stores a row under a new revision, and forgets expired rows.
    fn write(&mut self, key: &str, bytes: Bytes) -> u64 {
        self.last_revision += 1;
        let revision = self.last_revision;
        self.rows.insert(key.to_owned(), (bytes, revision));
        if let Some(max_age) = self.max_age {
            let now = tokio::time::Instant::now();
            self.written.push_back((now, key.to_owned(), revision));
            while let Some((at, _, _)) = self.written.front() {
                if now.duration_since(*at) < max_age {
                    break;
                }
                let (_, old_key, old_revision) = self.written.pop_front().expect("front exists");
                // Only if not rewritten since.
                if self
                    .rows
                    .get(&old_key)
                    .is_some_and(|(_, r)| *r == old_revision)
                {
                    self.rows.remove(&old_key);
                }
            }
        }
        revision
    }
}

impl<V: Serialize + DeserializeOwned + Clone> Table<V> {
    /// Opens (creating it if needed) the bucket `name`.
    ///
    /// `max_age` bounds how long entries live (`None`: forever); of
    /// `limits`, `bucket_max_bytes` bounds how much the bucket holds (a write
    /// beyond it fails: `Unavailable`) and `replicas` on how many nodes.
    pub async fn open(
        client: &async_nats::Client,
        storage: Storage,
        name: &str,
        max_age: Option<Duration>,
        limits: &Limits,
    ) -> Result<Self, StoreError> {
        Self::open_bucket(client, storage, name, max_age, limits, false).await
    }

    /// Opens (creating it if needed) the bucket `name` as an index: a table
    /// whose keys come and go (work in progress), and which must hold only
    /// the live ones, however many came and went.
    ///
    /// [`Table::remove`] on it is one write, as cheap as a put: a purge
    /// marker that drops the key's earlier messages and expires by itself
    /// a second later (the bucket allows per-message TTLs). On other tables
    /// it purges through the stream's API, a request the server answers
    /// off its JetStream API queue, several times the cost of a write.
    pub async fn open_index(
        client: &async_nats::Client,
        storage: Storage,
        name: &str,
        limits: &Limits,
    ) -> Result<Self, StoreError> {
        Self::open_bucket(client, storage, name, None, limits, true).await
    }

    async fn open_bucket(
        client: &async_nats::Client,
        storage: Storage,
        name: &str,
        max_age: Option<Duration>,
        limits: &Limits,
        expiring_markers: bool,
    ) -> Result<Self, StoreError> {
        let backend = match storage {
            Storage::Memory => Backend::Memory(Arc::new(Mutex::new(Memory::with_max_age(max_age)))),
            Storage::Durable => {
                let js = crate::supervisor::setup_context(client);
                crate::supervisor::retry_setup(name, || async {
                    let existing =
                        crate::limits::existing_replicas(&js, &format!("KV_{name}"), limits).await;
                    let config = kv::Config {
                        bucket: name.to_owned(),
                        history: 1,
                        max_age: max_age.unwrap_or_default(),
                        max_bytes: limits.bucket_max_bytes,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: limits.replicas_for(existing),
                        // Per-message TTLs (the marker a removed key leaves).
                        limit_markers: expiring_markers.then_some(REMOVED_MARKER_TTL),
                        ..Default::default()
                    };
                    js.create_or_update_key_value(config)
                        .await
                        .map(drop)
                        .map_err(|err| StoreError::Unavailable(format!("bucket {name}: {err}")))
                })
                .await?;
                // Its reads and writes are a handler's, with its own timeout:
                // setup's patience is for setup.
                let store = jetstream::new(client.clone())
                    .get_key_value(name)
                    .await
                    .map_err(|err| StoreError::Unavailable(format!("bucket {name}: {err}")))?;
                Backend::Kv(Box::new(store))
            }
        };
        Ok(Self {
            backend,
            stripes: stripes(),
            cache: cache(),
            leader_reads: false,
            expiring_markers,
        })
    }

    /// A table in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            backend: Backend::Memory(Arc::default()),
            stripes: stripes(),
            cache: cache(),
            leader_reads: false,
            expiring_markers: false,
        }
    }

    /// The same table, reading through its bucket's stream leader.
    ///
    /// A bucket answers reads from any replica (direct get), and a replica
    /// may not have the latest write yet: fine for most reads (a stale
    /// value only costs a failed compare-and-set), not when what one key
    /// says is decided on together with another key
    /// ([`Table::modify_observing`]): there both must be read as they are.
    ///
    /// A bucket with one replica has nothing to lag: the server that
    /// acknowledged a write answers the direct get after it, and a direct
    /// get costs half what a read through the stream's API does (`cargo run
    /// --release -p bench --example ops`: about 17 against 30 CPU
    /// microseconds, ours and the server's), so such a bucket keeps direct
    /// gets. Its replica count is read when the table is opened: a bucket
    /// given more replicas later (by another process's `--replicas`) is
    /// read through its leader from this process's next start.
    pub fn reading_from_leader(mut self) -> Self {
        self.leader_reads = match &self.backend {
            Backend::Kv(store) => store.stream.cached_info().config.num_replicas > 1,
            Backend::Memory(_) => true,
        };
        self
    }

    pub async fn get(&self, key: &str) -> Result<Option<Versioned<V>>, StoreError> {
        let raw = match &self.backend {
            Backend::Memory(memory) => memory.lock().expect("table lock").rows.get(key).cloned(),
            Backend::Kv(store) if self.leader_reads => {
                use async_nats::jetstream::stream::LastRawMessageErrorKind;
                if !is_valid_key(key) {
                    return Ok(None);
                }
                let subject = format!("{}{key}", store.prefix);
                match store.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => {
                        let operation = message
                            .headers
                            .get("KV-Operation")
                            .map(|op| op.as_str().to_owned());
                        match operation.as_deref() {
                            Some("DEL" | "PURGE") => None,
                            _ => Some((message.payload, message.sequence)),
                        }
                    }
                    Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => None,
                    Err(err) => return Err(unavailable(err)),
                }
            }
            Backend::Kv(store) => match store.entry(key).await {
                Ok(entry) => entry
                    .filter(|e| e.operation == kv::Operation::Put)
                    .map(|e| (e.value, e.revision)),
                // A key no bucket can hold (`*`, `>`, a space) is simply not there.
                Err(err) if err.kind() == kv::EntryErrorKind::InvalidKey => None,
                Err(err) => return Err(unavailable(err)),
            },
        };
        raw.map(|(bytes, revision)| {
            let value = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                key: key.to_owned(),
                source,
            })?;
            Ok(Versioned { value, revision })
        })
        .transpose()
    }

    /// Writes `value` only if `key` does not exist.
    pub async fn create(&self, key: &str, value: &V) -> Result<u64, StoreError> {
        let revision = self.create_raw(key, value).await?;
        self.remember(key, value.clone(), revision);
        Ok(revision)
    }

    async fn create_raw(&self, key: &str, value: &V) -> Result<u64, StoreError> {
        let bytes = encode(value);
        match &self.backend {
            Backend::Memory(memory) => {
                let mut memory = memory.lock().expect("table lock");
                if memory.rows.contains_key(key) {
                    return Err(StoreError::Exists(key.to_owned()));
                }
                Ok(memory.write(key, bytes))
            }
            Backend::Kv(store) => store.create(key, bytes).await.map_err(|err| {
                if err.kind() == kv::CreateErrorKind::AlreadyExists {
                    StoreError::Exists(key.to_owned())
                } else {
                    unavailable(err)
                }
            }),
        }
    }

    /// Writes `value` only if `key` is still at `revision`.
    pub async fn update(&self, key: &str, value: &V, revision: u64) -> Result<u64, StoreError> {
        let bytes = encode(value);
        match &self.backend {
            Backend::Memory(memory) => {
                let mut memory = memory.lock().expect("table lock");
                match memory.rows.get(key) {
                    Some((_, current)) if *current == revision => {}
                    _ => return Err(StoreError::Conflict(key.to_owned())),
                }
                Ok(memory.write(key, bytes))
            }
            Backend::Kv(store) => store.update(key, bytes, revision).await.map_err(|err| {
                if err.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    StoreError::Conflict(key.to_owned())
                } else {
                    unavailable(err)
                }
            }),
        }
    }

    /// Writes `value` if `key` does not exist; either way, returns what is
    /// stored (so a retried creation gets the first one back).
    pub async fn create_or_get(&self, key: &str, value: V) -> Result<V, StoreError> {
        match self.create(key, &value).await {
            Ok(_) => Ok(value),
            Err(StoreError::Exists(_)) => Ok(self.get(key).await?.map_or(value, |v| v.value)),
            Err(err) => Err(err),
        }
    }

    /// Writes `value` whatever is there.
    pub async fn put(&self, key: &str, value: &V) -> Result<u64, StoreError> {
        let revision = self.put_raw(key, value).await?;
        self.remember(key, value.clone(), revision);
        Ok(revision)
    }

    async fn put_raw(&self, key: &str, value: &V) -> Result<u64, StoreError> {
        let bytes = encode(value);
        match &self.backend {
            Backend::Memory(memory) => Ok(memory.lock().expect("table lock").write(key, bytes)),
            Backend::Kv(store) => store.put(key, bytes).await.map_err(unavailable),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.cache.lock().expect("cache lock").pop(key);
        match &self.backend {
            Backend::Memory(memory) => {
                memory.lock().expect("table lock").rows.remove(key);
                Ok(())
            }
            Backend::Kv(store) => store.delete(key).await.map_err(unavailable),
        }
    }

    /// Removes `key` and leaves nothing behind: unlike [`Table::delete`],
    /// which writes a delete marker that a bucket keeps for ever, this
    /// erases the stored value itself. For index-like tables whose size
    /// must follow what is live, not the history.
    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.cache.lock().expect("cache lock").pop(key);
        match &self.backend {
            Backend::Memory(memory) => {
                memory.lock().expect("table lock").rows.remove(key);
                Ok(())
            }
            Backend::Kv(store) => {
                if !is_valid_key(key) {
                    return Ok(());
                }
                if self.expiring_markers {
                    return store
                        .purge_with_ttl(key, REMOVED_MARKER_TTL)
                        .await
                        .map_err(unavailable);
                }
                // A bucket's stream refuses to delete single messages, but
                // purges by subject: the key's messages, markers included.
                let subject = format!("{}{key}", store.prefix);
                store
                    .stream
                    .purge()
                    .filter(subject)
                    .await
                    .map(|_| ())
                    .map_err(unavailable)
            }
        }
    }

    /// Every key in the table.
    pub async fn keys(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Memory(memory) => Ok(memory
                .lock()
                .expect("table lock")
                .rows
                .keys()
                .cloned()
                .collect()),
            Backend::Kv(store) => match store.keys().await {
                Ok(keys) => keys.try_collect().await.map_err(unavailable),
                Err(err) => Err(unavailable(err)),
            },
        }
    }

    /// Every live value with its key, read in one pass (for a bucket: one
    /// ordered consumer over the last value of each key, not a read per key).
    pub async fn values(&self) -> Result<Vec<(String, V)>, StoreError> {
        let decode = |key: String, bytes: &[u8]| {
            serde_json::from_slice(bytes)
                .map(|value| (key.clone(), value))
                .map_err(|source| StoreError::Corrupt { key, source })
        };
        let store = match &self.backend {
            Backend::Memory(memory) => {
                let memory = memory.lock().expect("table lock");
                return memory
                    .rows
                    .iter()
                    .map(|(key, (bytes, _))| decode(key.clone(), bytes))
                    .collect();
            }
            Backend::Kv(store) => store,
        };
        // Reading takes a watch over the bucket's history, last value per
        // key. A watch delivers nothing when nothing is stored, and a
        // removed key's marker in an index expires a second after it was
        // written, maybe between the count and the watch, maybe while the
        // watch delivers. So a watch that goes quiet before it reached the
        // end is given up and the bucket read again from the start (values
        // never expire, only markers do: the next reading finds the rest),
        // and nothing stored means nothing to read.
        let read_all = async {
            loop {
                let info = store.stream.get_info().await.map_err(unavailable)?;
                if info.state.messages == 0 {
                    return Ok(Vec::new());
                }
                let mut entries = store.watch_with_history(">").await.map_err(unavailable)?;
                let mut values = Vec::new();
                loop {
                    let entry = match tokio::time::timeout(QUIET_WATCH, entries.try_next()).await {
                        Ok(entry) => entry.map_err(unavailable)?,
                        // Quiet: read again.
                        Err(_) => break,
                    };
                    let Some(entry) = entry else { break };
                    if entry.operation == kv::Operation::Put {
                        values.push(decode(entry.key, &entry.value)?);
                    }
                    // `delta` counts what is still pending: the last one is 0.
                    if entry.delta == 0 {
                        return Ok(values);
                    }
                }
            }
        };
        tokio::time::timeout(READ_ALL_TIMEOUT, read_all)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "reading every entry took over {READ_ALL_TIMEOUT:?}"
                ))
            })?
    }

    /// Deletes `key` only if it is still at `revision`; `false` if it changed
    /// (or is gone) meanwhile.
    pub async fn delete_at(&self, key: &str, revision: u64) -> Result<bool, StoreError> {
        self.cache.lock().expect("cache lock").pop(key);
        match &self.backend {
            Backend::Memory(memory) => {
                let mut memory = memory.lock().expect("table lock");
                match memory.rows.get(key) {
                    Some((_, current)) if *current == revision => {
                        memory.rows.remove(key);
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            Backend::Kv(store) => match store.delete_expect_revision(key, Some(revision)).await {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(err) => Err(unavailable(err)),
            },
        }
    }

    /// Reads `key`, lets `decide` choose what to do, and writes the result
    /// with compare-and-set, retrying from a fresh read if somebody else
    /// wrote in between. `decide` may run several times: keep it pure.
    ///
    /// The first attempt starts from the value this process last saw for the
    /// key, when it has one: one round trip instead of two. If another
    /// process wrote since, the compare-and-set fails and the loop reads.
    pub async fn modify<T, E>(
        &self,
        key: &str,
        mut decide: impl FnMut(Option<&V>) -> Result<Change<V, T>, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let nothing = || async { Ok::<(), StoreError>(()) };
        self.modify_observing(key, nothing, |value, ()| decide(value))
            .await
    }

    /// [`Table::modify`], with something else read between knowing the
    /// key's value and deciding: `observe` runs *after* the value of `key`
    /// is known (cached or read), and the change is written only if `key`
    /// is still at that value. So what `observe` saw is at least as new as
    /// the value decided on, and a change that others make to `key` after
    /// they changed what `observe` reads is never missed.
    ///
    /// This lets one record guard other keys: a product's record notes a
    /// hold's change as pending until the hold is written, and drops the
    /// note only after; whoever decides reads the hold after the record,
    /// so a note gone means a hold it can see.
    pub async fn modify_observing<T, E, O, Fut>(
        &self,
        key: &str,
        observe: impl Fn() -> Fut,
        mut decide: impl FnMut(Option<&V>, O) -> Result<Change<V, T>, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
        Fut: std::future::Future<Output = Result<O, StoreError>>,
    {
        let stripe = &self.stripes[stripe_of(key)];
        // Values read outside the turn, to decide on first in the next one.
        let mut fresh: Option<(Option<Versioned<V>>, O)> = None;
        let mut first = true;
        for _ in 0..MAX_ATTEMPTS {
            let local_turn = stripe.lock().await;
            let (current, observed, from_cache) = match fresh.take() {
                Some((current, observed)) => (current, observed, false),
                None => {
                    let cached = std::mem::take(&mut first)
                        .then(|| self.cache.lock().expect("cache lock").get(key).cloned())
                        .flatten();
                    let from_cache = cached.is_some();
                    let current = match cached {
                        Some(seen) => Some(seen),
                        None => self.get(key).await?,
                    };
                    (current, observe().await?, from_cache)
                }
            };
            // A cached value may be stale: only a successful write proves
            // it was current, so decisions that write nothing (keeping the
            // value, or refusing the change) are made again on a fresh read
            // before they are returned. Another instance may have released
            // the stock or advanced the order that this cache says is not.
            // That read is made outside the turn: refusals (a product sold
            // out) need not queue behind each other.
            let change = match decide(current.as_ref().map(|c| &c.value), observed) {
                Err(_) if from_cache => {
                    drop(local_turn);
                    fresh = Some((self.get(key).await?, observe().await?));
                    continue;
                }
                decided => decided?,
            };
            let (value, result) = match change {
                Change::Keep(_) if from_cache => {
                    drop(local_turn);
                    fresh = Some((self.get(key).await?, observe().await?));
                    continue;
                }
                Change::Keep(result) => return Ok(result),
                Change::Write(value, result) => (value, result),
            };
            let written = match &current {
                Some(current) => self.update(key, &value, current.revision).await,
                None => self.create_raw(key, &value).await,
            };
            match written {
                Ok(revision) => {
                    self.remember(key, value, revision);
                    return Ok(result);
                }
                Err(StoreError::Conflict(_) | StoreError::Exists(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StoreError::Conflict(key.to_owned()).into())
    }

    /// The value this process last wrote or read for `key`, if it still
    /// remembers it: a hint, maybe stale, never a basis for a decision
    /// that is not checked again.
    pub fn cached(&self, key: &str) -> Option<V> {
        let cache = self.cache.lock().expect("cache lock");
        cache.peek(key).map(|seen| seen.value.clone())
    }

    fn remember(&self, key: &str, value: V, revision: u64) {
        let entry = Versioned { value, revision };
        self.cache
            .lock()
            .expect("cache lock")
            .put(key.to_owned(), entry);
    }
}

/// Whether `key` can be a key-value key (the same rule as async-nats's).
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.'))
}

fn encode<V: Serialize>(value: &V) -> Bytes {
    // Our state types are plain structs: encoding them cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("state values encode as JSON"))
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_tables_compare_and_set_like_kv() {
        let table: Table<u32> = Table::in_memory();
        let first = table.create("a", &1).await.unwrap();
        assert!(matches!(
            table.create("a", &2).await,
            Err(StoreError::Exists(_))
        ));
        let second = table.update("a", &3, first).await.unwrap();
        assert!(matches!(
            table.update("a", &4, first).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            table.get("a").await.unwrap(),
            Some(Versioned {
                value: 3,
                revision: second
            })
        );

        let seen: Result<u32, StoreError> = table
            .modify("a", |v| Ok(Change::Write(v.unwrap() + 1, *v.unwrap())))
            .await;
        assert_eq!(seen.unwrap(), 3);
        assert_eq!(table.get("a").await.unwrap().unwrap().value, 4);
        assert_eq!(table.keys().await.unwrap(), ["a"]);
    }

    #[tokio::test]
    async fn a_stale_cached_value_is_never_written_over_or_decided_on() {
        // Two tables on one backend: two writers with their own caches, as
        // two processes on one bucket would be.
        let a: Table<u32> = Table::in_memory();
        let b = Table::<u32> {
            backend: a.backend.clone(),
            stripes: stripes(),
            cache: cache(),
            leader_reads: false,
            expiring_markers: false,
        };
        a.create("n", &0).await.unwrap(); // a now caches 0
        b.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap();

        // a starts from its stale 0: the write must be refused and redone on 1.
        a.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap();
        assert_eq!(
            a.get("n").await.unwrap().unwrap().value,
            2,
            "no lost update"
        );

        // A decision that writes nothing is made on a fresh read, not the cache.
        b.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap();
        let seen = a
            .modify::<u32, StoreError>("n", |n| Ok(Change::Keep(*n.unwrap())))
            .await
            .unwrap();
        assert_eq!(seen, 3);

        // A refusal is made on a fresh read too: a says "no" to an odd value
        // it has cached, but b made it even meanwhile.
        a.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 2, ())))
            .await
            .unwrap(); // a caches 5
        b.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap(); // 6
        let even_only = |n: Option<&u32>| match n {
            Some(n) if n % 2 == 0 => Ok(Change::Keep(*n)),
            _ => Err(StoreError::Conflict("odd".into())),
        };
        assert_eq!(a.modify("n", even_only).await.unwrap(), 6);
        // And a refusal on a fresh value stands.
        a.modify::<(), StoreError>("n", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap(); // 7, fresh in a's cache: refused without a retry loop
        assert!(a.modify("n", even_only).await.is_err());
    }

    #[tokio::test]
    async fn a_refusal_decided_on_a_fresh_read_is_returned_as_is() {
        let table: Table<u32> = Table::in_memory();
        table.create("n", &1).await.unwrap(); // cached
        let mut decisions = 0;
        let refused: Result<(), StoreError> = table
            .modify("n", |_| {
                decisions += 1;
                Err(StoreError::Exists("refused".into()))
            })
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Exists(why)) if why == "refused"),
            "{refused:?}"
        );
        assert_eq!(
            decisions, 2,
            "once on the cached value, once on a fresh read"
        );
    }

    #[tokio::test]
    async fn a_table_remembers_what_it_wrote_for_its_next_compare_and_set() {
        let table: Table<u32> = Table::in_memory();
        let remembered = |key: &str| table.cache.lock().unwrap().peek(key).cloned();
        let revision = table.create("a", &1).await.unwrap();
        assert_eq!(remembered("a"), Some(Versioned { value: 1, revision }));
        let revision = table.put("a", &2).await.unwrap();
        assert_eq!(remembered("a"), Some(Versioned { value: 2, revision }));
        table
            .modify::<(), StoreError>("a", |n| Ok(Change::Write(n.unwrap() + 1, ())))
            .await
            .unwrap();
        let stored = table.get("a").await.unwrap();
        assert_eq!(remembered("a"), stored);
        assert_eq!(stored.map(|v| v.value), Some(3));
        table.delete("a").await.unwrap();
        assert_eq!(remembered("a"), None, "nothing to start from");
    }

    #[test]
    fn keys_are_spread_over_the_lock_stripes() {
        let used: std::collections::HashSet<usize> = (0..4 * LOCK_STRIPES)
            .map(|n| stripe_of(&n.to_string()))
            .collect();
        assert!(used.iter().all(|&s| s < LOCK_STRIPES));
        // 1024 keys over 256 stripes: all but a few are used.
        assert!(used.len() > LOCK_STRIPES * 3 / 4, "{} stripes", used.len());
    }

    /// A memory table whose rows live `max_age`.
    fn expiring(max_age: Duration) -> Table<u32> {
        Table {
            backend: Backend::Memory(Arc::new(Mutex::new(Memory::with_max_age(Some(max_age))))),
            stripes: stripes(),
            cache: cache(),
            leader_reads: false,
            expiring_markers: false,
        }
    }

    async fn value(table: &Table<u32>, key: &str) -> Option<u32> {
        table.get(key).await.unwrap().map(|v| v.value)
    }

    /// Rows expire, as in a bucket, once they are `max_age` old (exactly
    /// that age included), counted from their last write. On tokio's
    /// paused clock: no real waiting, and ages exact to the millisecond.
    #[tokio::test(start_paused = true)]
    async fn a_memory_row_lives_max_age_from_its_last_write() {
        use tokio::time::advance;
        let ms = Duration::from_millis;
        let table = expiring(ms(300));
        table.put("a", &1).await.unwrap();
        table.put("b", &1).await.unwrap();

        // Rewritten halfway: its age counts from the rewrite.
        advance(ms(150)).await;
        table.put("a", &2).await.unwrap();

        // Expiry happens as later writes look: 1 ms short of the age, b stays.
        advance(ms(149)).await;
        table.put("x", &1).await.unwrap();
        assert_eq!(value(&table, "b").await, Some(1), "a young row stays");

        // Exactly max_age old: gone.
        advance(ms(1)).await;
        table.put("c", &1).await.unwrap();
        assert_eq!(value(&table, "b").await, None, "b is max_age old");
        assert_eq!(value(&table, "a").await, Some(2), "a was rewritten since");

        advance(ms(150)).await;
        table.put("d", &1).await.unwrap();
        assert_eq!(value(&table, "a").await, None, "a's rewrite is old now");
        assert_eq!(value(&table, "c").await, Some(1));
        assert_eq!(value(&table, "d").await, Some(1));
    }
}

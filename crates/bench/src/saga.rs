//! The whole saga under load: orders placed by N concurrent clients against
//! the real modules (payment delay 0), timed from `order.create` to the
//! `events.order.fulfilled` event, with the CPU both processes spent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::{BrokerConfig, ClusterConfig, NatsCluster, NatsServer};
use contract::order::{OrderFulfilled, OrderId, PlaceOrder};
use contract::product::{CreateProduct, Product};
use contract::user::{CreateUser, User};
use contract::values::{Name, Quantity};
use demo::app::Launched;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use messaging_core::{shutdown_all, Bus, Connection, Limits, ModuleHandle, ModuleOptions, Storage};
use payment::PaymentConfig;
use tokio::sync::oneshot;

use crate::process::{cpu_seconds, rss_mib};
use crate::report::{histogram, Report};

/// The Go demo this project started from, on the same kind of 2-core
/// machine, handlers unchanged, payment delay 0: completed orders a second,
/// the median of 3 runs of 50,000 orders from 64 concurrent requesters
/// (nats-server embedded in its process, nothing stored). Measured once,
/// not in each run: the reference line of README's Performance section.
pub const GO_DEMO_ORDERS_PER_S: f64 = 8_437.0;

/// The Go demo's four modules: the saga it measured. Shipping comes after
/// an order is fulfilled (where the saga's clock stops) and is measured
/// as a figure of its own.
const GO_DEMO_MODULES: &str = "user,product,order,payment";

/// Orders spread over this many products (one product would make every
/// order contend for the same stock record).
const PRODUCTS: usize = 16;

/// Where each order's completion is reported, whichever comes first: the
/// event, or the client asking for it.
enum Slot {
    Waiting(oneshot::Sender<Instant>),
    Arrived(Instant),
}

#[derive(Default)]
struct Completions {
    slots: Mutex<HashMap<OrderId, Slot>>,
}

impl Completions {
    fn arrived(&self, id: OrderId) {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("slots");
        match slots.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(now);
            }
            _ => {
                slots.insert(id, Slot::Arrived(now));
            }
        }
    }

    async fn wait(&self, id: OrderId) -> anyhow::Result<Instant> {
        let rx = {
            let mut slots = self.slots.lock().expect("slots");
            if let Some(Slot::Arrived(at)) = slots.remove(&id) {
                return Ok(at);
            }
            let (tx, rx) = oneshot::channel();
            slots.insert(id, Slot::Waiting(tx));
            rx
        };
        Ok(tokio::time::timeout(Duration::from_secs(60), rx).await??)
    }
}

/// How the system under load is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub storage: Storage,
    /// A 3-node cluster with everything R3, instead of one R1 server.
    pub cluster: bool,
    /// Instances of the payment module sharing its durable consumers: the
    /// first beside the other modules, each other one in a process of its
    /// own (see [`crate::worker`]).
    pub payments: usize,
    /// The shipping module runs too (not part of the Go demo's saga).
    pub shipping: bool,
    /// A module that keeps its state in memory whatever `storage` says
    /// (see [`ablate`]).
    pub in_memory: Option<&'static str>,
}

impl Topology {
    pub fn single(storage: Storage) -> Self {
        Self {
            storage,
            cluster: false,
            payments: 1,
            shipping: false,
            in_memory: None,
        }
    }
}

/// The modules on their own broker, with a user and products to order.
pub struct System {
    server: Launched,
    modules_conn: Connection,
    /// The payment instances beyond the first, each its own process.
    workers: Vec<crate::worker::Worker>,
    client_conn: Connection,
    modules: Vec<ModuleHandle>,
    user: User,
    products: Vec<Product>,
    completions: Arc<Completions>,
    watcher: tokio::task::JoinHandle<()>,
}

impl System {
    pub async fn start(topology: Topology, stock: u32) -> anyhow::Result<System> {
        let (server, replicas) = if topology.cluster {
            let cluster = NatsCluster::start_with(ClusterConfig::default()).await?;
            (Launched::Cluster(cluster), 3)
        } else {
            let server = NatsServer::start_with(BrokerConfig::default()).await?;
            (Launched::Server(Box::new(server)), 1)
        };
        let url = server.url();
        let modules_conn = Connection::connect(&url, "bench-modules").await?;
        let client_conn = Connection::connect(&url, "bench-clients").await?;
        let payment = PaymentConfig {
            delay: Duration::ZERO,
            ..PaymentConfig::default()
        };
        let options = ModuleOptions {
            limits: Limits::replicated(replicas),
            ..ModuleOptions::with_storage(topology.storage)
        };
        let chosen = if topology.shipping {
            demo::app::Modules::all()
        } else {
            demo::app::Modules::parse(GO_DEMO_MODULES).map_err(anyhow::Error::msg)?
        };
        let mut modules = Vec::new();
        for &name in chosen.names() {
            let options = if topology.in_memory == Some(name) {
                ModuleOptions {
                    storage: Storage::Memory,
                    ..options
                }
            } else {
                options
            };
            let one = demo::app::Modules::parse(name).map_err(anyhow::Error::msg)?;
            let handles =
                demo::app::register_some(modules_conn.client(), &one, payment.clone(), options);
            modules.extend(handles.await?);
        }
        let mut workers = Vec::new();
        for _ in 1..topology.payments {
            workers.push(crate::worker::Worker::start(&url).await?);
        }
        let bus = client_conn.bus().clone();
        let user = bus
            .request(&CreateUser {
                name: Name::parse("Bench").expect("name"),
            })
            .await?;
        let mut products = Vec::new();
        for i in 0..PRODUCTS {
            let name = Name::parse(format!("Widget {i}")).expect("name");
            let stock = Quantity::new(stock).map_err(anyhow::Error::msg)?;
            products.push(bus.request(&CreateProduct { name, stock }).await?);
        }
        let completions = Arc::new(Completions::default());
        let mut fulfilled = bus.watch::<OrderFulfilled>().await?;
        let watcher = tokio::spawn({
            let completions = completions.clone();
            async move {
                while let Ok(event) = fulfilled.next_within(Duration::from_secs(3600)).await {
                    completions.arrived(event.event.order.id);
                }
            }
        });
        Ok(System {
            server,
            modules_conn,
            workers,
            client_conn,
            modules,
            user,
            products,
            completions,
            watcher,
        })
    }

    fn bus(&self) -> &Bus {
        self.client_conn.bus()
    }

    /// Places `total` orders from `clients` concurrent clients; returns the
    /// wall time and the create-to-fulfilled latencies.
    pub async fn load(
        &self,
        clients: usize,
        total: usize,
        progress: &ProgressBar,
    ) -> anyhow::Result<(Duration, Histogram<u64>)> {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers = (0..clients).map(|_| {
            let (bus, completions, next) =
                (self.bus().clone(), self.completions.clone(), next.clone());
            let (user, products, progress) =
                (self.user.id, self.products.clone(), progress.clone());
            tokio::spawn(async move {
                let mut latencies = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let product = &products[i % products.len()];
                    let t0 = Instant::now();
                    let order = bus
                        .request(&PlaceOrder {
                            user_id: user,
                            product_id: product.id,
                            quantity: Quantity::new(1).expect("one"),
                        })
                        .await?;
                    let done = completions.wait(order.id).await?;
                    latencies.record(done.duration_since(t0).as_micros().max(1) as u64)?;
                    progress.inc(1);
                }
                anyhow::Ok(latencies)
            })
        });
        let mut merged = histogram();
        for worker in futures::future::join_all(workers).await {
            merged.add(worker??)?;
        }
        Ok((started.elapsed(), merged))
    }

    /// The broker's processes (one, or every node of the cluster).
    pub fn broker_pids(&self) -> Vec<u32> {
        match &self.server {
            Launched::Server(server) => server.pid().into_iter().collect(),
            Launched::Cluster(cluster) => (0..cluster.len())
                .filter_map(|i| cluster.node(i)?.pid())
                .collect(),
        }
    }

    /// CPU seconds used so far by our processes (this one and the
    /// workers) and by the broker's.
    fn cpu(&self) -> (f64, f64) {
        let broker = self
            .broker_pids()
            .into_iter()
            .map(|pid| cpu_seconds(Some(pid)));
        let workers =
            (self.workers.iter()).map(|w| w.pid().map_or(0.0, |pid| cpu_seconds(Some(pid))));
        (cpu_seconds(None) + workers.sum::<f64>(), broker.sum())
    }

    /// Places `total` orders from `clients` clients and reports the rate,
    /// the latencies and the CPU per 1,000 orders under `prefix`.
    pub async fn measure(
        &self,
        report: &mut Report,
        prefix: &str,
        clients: usize,
        total: usize,
        quiet: bool,
    ) -> anyhow::Result<()> {
        let progress = bar(quiet, total, prefix.to_owned());
        let (ours0, nats0) = self.cpu();
        let (elapsed, latencies) = self.load(clients, total, &progress).await?;
        let (ours1, nats1) = self.cpu();
        progress.finish_and_clear();
        report.add(
            format!("{prefix}.orders_per_s"),
            total as f64 / elapsed.as_secs_f64(),
            "orders/s",
        );
        report.latency(prefix, &latencies, true);
        let per_k = 1000.0 / total as f64;
        report.add(
            format!("{prefix}.cpu_ours"),
            (ours1 - ours0) * per_k,
            "cpu-s/1k-orders",
        );
        report.add(
            format!("{prefix}.cpu_nats"),
            (nats1 - nats0) * per_k,
            "cpu-s/1k-orders",
        );
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.watcher.abort();
        for worker in self.workers {
            worker.stop().await?;
        }
        shutdown_all(self.modules).await;
        self.modules_conn.drain(Duration::from_secs(10)).await?;
        self.client_conn.drain(Duration::from_secs(10)).await?;
        self.server.stop().await?;
        Ok(())
    }
}

fn bar(quiet: bool, len: usize, label: String) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {per_sec}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

/// Saga figures for each mode and each number of clients (the Go demo's
/// four modules); then the durable saga with the shipping module too, at
/// the largest number of clients up to 64.
pub async fn run(
    report: &mut Report,
    levels: &[usize],
    orders: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    let with_shipping = levels.iter().copied().filter(|&c| c <= 64).max();
    let modes = [
        ("durable", Storage::Durable, false, levels.to_vec()),
        ("ephemeral", Storage::Memory, false, levels.to_vec()),
        (
            "durable_shipping",
            Storage::Durable,
            true,
            with_shipping.into_iter().collect(),
        ),
    ];
    for (mode, storage, shipping, levels) in modes {
        if levels.is_empty() {
            continue;
        }
        // Enough for every level and the warm-up.
        let warm_up = 200.min(orders);
        let stock = (orders * levels.len() + warm_up).div_ceil(PRODUCTS) as u32 + 10;
        let topology = Topology {
            shipping,
            ..Topology::single(storage)
        };
        let system = System::start(topology, stock).await?;
        // Warm-up, not recorded.
        system.load(16, warm_up, &ProgressBar::hidden()).await?;
        for &clients in &levels {
            // One client at a time is slow: fewer orders keep the phase short.
            let total = if clients == 1 {
                (orders / 5).max(50)
            } else {
                orders
            };
            let prefix = format!("saga.{mode}.c{clients}");
            system
                .measure(report, &prefix, clients, total, quiet)
                .await?;
        }
        system.stop().await?;
    }
    // The best durable level, and how it compares with the Go demo.
    let best = levels
        .iter()
        .filter_map(|c| report.get(&format!("saga.durable.c{c}.orders_per_s")))
        .fold(0.0, f64::max);
    if best > 0.0 {
        report.add("saga.durable.best.orders_per_s", best, "orders/s");
        report.add(
            "saga.go_demo.orders_per_s",
            GO_DEMO_ORDERS_PER_S,
            "orders/s",
        );
        report.ratio(
            "saga.durable.best_over_go_demo",
            "saga.durable.best.orders_per_s",
            "saga.go_demo.orders_per_s",
        );
    }
    Ok(())
}

/// Scale-out figures (durable saga, same sizes in each layout): one R1
/// server with one payment instance (the baseline), with two payment
/// instances, and a 3-node cluster with everything R3; at 1 client (its
/// p99) and at `clients`.
pub async fn scale(
    report: &mut Report,
    orders: usize,
    clients: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    let layouts = [
        ("r1.pay1", false, 1),
        ("r1.pay2", false, 2),
        ("r3.pay1", true, 1),
    ];
    let single = (orders / 5).max(50);
    for (name, cluster, payments) in layouts {
        let topology = Topology {
            storage: Storage::Durable,
            cluster,
            payments,
            shipping: false,
            in_memory: None,
        };
        let stock = (orders + single + 200).div_ceil(PRODUCTS) as u32 + 10;
        let system = System::start(topology, stock).await?;
        system
            .load(16, 200.min(orders), &ProgressBar::hidden())
            .await?;
        let prefix = format!("scale.{name}");
        system
            .measure(report, &format!("{prefix}.c1"), 1, single, quiet)
            .await?;
        system
            .measure(
                report,
                &format!("{prefix}.c{clients}"),
                clients,
                orders,
                quiet,
            )
            .await?;
        system.stop().await?;
    }
    let at = |name: &str| format!("scale.{name}.c{clients}.orders_per_s");
    report.ratio("scale.pay2_over_pay1", &at("r1.pay2"), &at("r1.pay1"));
    report.ratio("scale.r3_over_r1", &at("r3.pay1"), &at("r1.pay1"));
    Ok(())
}

/// A long run: memory must stay flat and the rate must hold.
pub async fn soak(
    report: &mut Report,
    orders: usize,
    clients: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    let stock = orders.div_ceil(PRODUCTS) as u32 + 10;
    let system = System::start(Topology::single(Storage::Durable), stock).await?;
    let progress = bar(quiet, orders, "soak".to_owned());
    let tenth = (orders / 10).max(1);
    // Ten slices; RSS after the 1st, 5th and 10th; rate of the first and last.
    let mut rates = Vec::new();
    for slice in 1..=10 {
        let (elapsed, _) = system.load(clients, tenth, &progress).await?;
        rates.push(tenth as f64 / elapsed.as_secs_f64());
        if matches!(slice, 1 | 5 | 10) {
            report.add(format!("soak.rss_at_{}pct", slice * 10), rss_mib(), "MiB");
        }
    }
    progress.finish_and_clear();
    report.add("soak.orders", (tenth * 10) as f64, "orders");
    report.add("soak.first_10pct.orders_per_s", rates[0], "orders/s");
    report.add("soak.last_10pct.orders_per_s", rates[9], "orders/s");
    report.ratio(
        "soak.last_over_first",
        "soak.last_10pct.orders_per_s",
        "soak.first_10pct.orders_per_s",
    );
    system.stop().await
}

/// Where the durable saga's cost goes: the saga at `clients` with every
/// module's state stored (the baseline), then with one module at a time
/// keeping its state in memory instead (its events still stored), `rounds`
/// rounds interleaved; the median of each. Never asserted anywhere: a
/// measurement for choosing what to change.
pub async fn ablate(
    report: &mut Report,
    orders: usize,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let cases: Vec<(String, Option<&'static str>)> = std::iter::once(("durable".to_owned(), None))
        .chain(
            GO_DEMO_MODULES
                .split(',')
                .map(|module| (format!("{module}_in_memory"), Some(module))),
        )
        .collect();
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds.max(1) {
        for (case, (_, in_memory)) in cases.iter().enumerate() {
            let topology = Topology {
                in_memory: *in_memory,
                ..Topology::single(Storage::Durable)
            };
            let warm_up = 200.min(orders);
            let stock = (orders + warm_up).div_ceil(PRODUCTS) as u32 + 10;
            let system = System::start(topology, stock).await?;
            system.load(16, warm_up, &ProgressBar::hidden()).await?;
            let (ours0, nats0) = system.cpu();
            let (elapsed, _) = system.load(clients, orders, &ProgressBar::hidden()).await?;
            let (ours1, nats1) = system.cpu();
            system.stop().await?;
            let rate = orders as f64 / elapsed.as_secs_f64();
            let cpu = (ours1 - ours0 + nats1 - nats0) * 1000.0 / orders as f64;
            runs[case].push((rate, cpu));
        }
    }
    for ((name, _), results) in cases.iter().zip(runs) {
        let prefix = format!("ablation.{name}.c{clients}");
        let rates: Vec<f64> = results.iter().map(|r| r.0).collect();
        let cpus: Vec<f64> = results.iter().map(|r| r.1).collect();
        report.add(format!("{prefix}.orders_per_s"), median(rates), "orders/s");
        report.add(format!("{prefix}.cpu"), median(cpus), "cpu-s/1k-orders");
    }
    for (name, _) in &cases[1..] {
        report.ratio(
            format!("ablation.{name}_over_durable"),
            &format!("ablation.{name}.c{clients}.orders_per_s"),
            &format!("ablation.durable.c{clients}.orders_per_s"),
        );
    }
    Ok(())
}

/// The middle value (the upper of the two middle ones of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

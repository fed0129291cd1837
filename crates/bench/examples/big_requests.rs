//! Memory under large requests: many 1 MB requests pipelined on one raw
//! socket to a module in this process; the peak and settled resident
//! memory of the process, and how the requests were answered (`413`:
//! larger than the contract allows, refused before it is decoded).
//!
//! `cargo run --release -p bench --example big_requests -- [REQUESTS]`
//! (default 2000, i.e. about 2 GB sent)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::{ModuleOptions, Storage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// The bench's own measures, shared rather than copied.
#[allow(dead_code)]
#[path = "../src/process.rs"]
mod process;
use process::rss_mib;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "big").await?;
    let users = user::register_with(
        conn.client().clone(),
        ModuleOptions::with_storage(Storage::Memory),
    )
    .await?;
    let before = rss_mib();

    // Sample the resident memory every 5 ms until told to stop.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak: f64 = 0.0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        }
    });

    let address = server.url().trim_start_matches("nats://").to_owned();
    let (read, mut write) = TcpStream::connect(&address).await?.into_split();
    let mut read = BufReader::with_capacity(1 << 20, read);
    let mut line = String::new();
    read.read_line(&mut line).await?; // INFO
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nSUB _INBOX.big.> 1\r\nPING\r\n")
        .await?;
    loop {
        line.clear();
        read.read_line(&mut line).await?;
        if line.starts_with("PONG") {
            break;
        }
    }

    // One valid 1,000,000-byte request, sent `total` times from the same
    // buffer (the sender allocates nothing per request).
    // A valid user (unknown fields are ignored), padded to 1,000,000 bytes.
    let pad = "x".repeat(1_000_000 - r#"{"name":"Ada","pad":""}"#.len());
    let payload = format!(r#"{{"name":"Ada","pad":"{pad}"}}"#);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..total {
            let head = format!("PUB user.create _INBOX.big.{i} {}\r\n", payload.len());
            write.write_all(head.as_bytes()).await?;
            write.write_all(payload.as_bytes()).await?;
            write.write_all(b"\r\n").await?;
        }
        anyhow::Ok(write)
    });

    // Count the answers, until all came or none came for 10 s.
    let (mut answered, mut too_large) = (0usize, 0usize);
    let mut body = Vec::new();
    while answered < total {
        line.clear();
        match tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(result) => {
                result?;
            }
        }
        match line.split_whitespace().next() {
            Some("HMSG") | Some("MSG") => {
                let len: usize = line.split_whitespace().last().unwrap_or("0").parse()?;
                body.resize(len + 2, 0);
                read.read_exact(&mut body).await?;
                if String::from_utf8_lossy(&body).contains("Nats-Service-Error-Code: 413") {
                    too_large += 1;
                }
                answered += 1;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let _write = writer.await??;
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("big_requests {total} (1,000,000 bytes each)");
    println!("big_answered {answered}");
    println!("big_answered_413 {too_large}");
    println!("big_seconds {:.2}", elapsed.as_secs_f64());
    println!("big_rss_before_mib {before:.1}");
    println!("big_rss_peak_mib {peak:.1}");
    println!("big_rss_2s_after_mib {:.1}", rss_mib());
    users.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}

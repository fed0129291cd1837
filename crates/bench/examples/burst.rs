//! A pipelined burst on one socket: how many requests get an answer (a
//! value, or a `503` when saturated) and how many get none.
//!
//! `cargo run --release -p bench --example burst -- [REQUESTS]` (default 200000)

use std::time::{Duration, Instant};

use messaging_core::{ModuleOptions, Storage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let server = broker::NatsServer::start().await?;
    let conn = messaging_core::Connection::connect(server.url(), "burst").await?;
    let users = user::register_with(
        conn.client().clone(),
        ModuleOptions::with_storage(Storage::Memory),
    )
    .await?;

    let address = server.url().trim_start_matches("nats://").to_owned();
    let (read, mut write) = TcpStream::connect(&address).await?.into_split();
    let mut read = BufReader::with_capacity(1 << 20, read);
    let mut line = String::new();
    read.read_line(&mut line).await?; // INFO
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nSUB _INBOX.burst.> 1\r\nPING\r\n")
        .await?;
    loop {
        line.clear();
        read.read_line(&mut line).await?;
        if line.starts_with("PONG") {
            break;
        }
    }

    // Every request first, as fast as the socket takes them.
    let payload = format!(r#"{{"id":"{}"}}"#, uuid::Uuid::new_v4());
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(1 << 20);
        for i in 0..total {
            buffer.extend_from_slice(
                format!(
                    "PUB user.get _INBOX.burst.{i} {}\r\n{payload}\r\n",
                    payload.len()
                )
                .as_bytes(),
            );
            if buffer.len() > 1 << 19 {
                write.write_all(&buffer).await?;
                buffer.clear();
            }
        }
        write.write_all(&buffer).await?;
        anyhow::Ok(write)
    });

    // Then count the answers, until all came or none came for 10 s.
    let (mut answered, mut unavailable) = (0usize, 0usize);
    let mut body = Vec::new();
    while answered < total {
        line.clear();
        match tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(result) => {
                result?;
            }
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("HMSG") => {
                let total_len: usize = line.split_whitespace().last().unwrap_or("0").parse()?;
                body.resize(total_len + 2, 0);
                read.read_exact(&mut body).await?;
                if String::from_utf8_lossy(&body).contains("Nats-Service-Error-Code: 503") {
                    unavailable += 1;
                }
                answered += 1;
            }
            Some("MSG") => {
                let len: usize = line.split_whitespace().last().unwrap_or("0").parse()?;
                body.resize(len + 2, 0);
                read.read_exact(&mut body).await?;
                answered += 1;
            }
            Some("PING") => {}
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let _write = writer.await??;
    println!("burst_requests {total}");
    println!("burst_answered {answered}");
    println!("burst_answered_503 {unavailable}");
    println!("burst_unanswered {}", total - answered);
    println!("burst_seconds {:.2}", elapsed.as_secs_f64());
    users.shutdown().await;
    conn.drain(Duration::from_secs(5)).await?;
    server.stop().await?;
    Ok(())
}

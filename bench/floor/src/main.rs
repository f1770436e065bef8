//! `bench-floor`: the floor that `bench/compare` measures SSE servers against.
//!
//! A minimal broadcaster with no product logic (no auth, log, replay, limits or
//! heartbeats): `GET /sub/{topic}` opens a stream; `POST /pub/{topic}` with the
//! data as body encodes one SSE frame once and hands the same `Bytes` to every
//! subscriber task of that topic through its own (unbounded: no loss) channel.
//! Each connection is one task, which writes every frame ready in its channel
//! as one HTTP chunk with one write. Publish connections are kept alive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Subscribers' channels by topic; the frame counter for `id:`.
#[derive(Debug, Default)]
struct Hub {
    topics: Mutex<HashMap<String, Vec<UnboundedSender<Bytes>>>>,
    next_id: AtomicU64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = String::from("127.0.0.1:8090");
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("usage: bench-floor [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let hub = Arc::new(Hub::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let hub = hub.clone();
                tokio::spawn(async move { serve(stream, &hub).await });
            }
            // Out of file descriptors and the like: back off, keep serving.
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves requests on one connection until it closes or becomes a stream.
async fn serve(mut stream: TcpStream, hub: &Hub) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = buf.split_to(head_end);
        let head = String::from_utf8_lossy(&head);
        let mut words = head.split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let length = head.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        while buf.len() < length.unwrap_or(0) {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(length.unwrap_or(0));
        if let ("GET", Some(topic)) = (method, path.strip_prefix("/sub/")) {
            return subscribe(stream, hub, topic).await;
        }
        let reply = match (method, path.strip_prefix("/pub/")) {
            ("POST", Some(topic)) => format!("{}\n", publish(hub, topic, &body)),
            _ => String::from("not found\n"),
        };
        let status = if reply.starts_with("not") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// Encodes the frame once and queues it on every subscriber; returns how many.
fn publish(hub: &Hub, topic: &str, data: &[u8]) -> usize {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let mut frame = BytesMut::with_capacity(data.len() + 32);
    frame.put_slice(format!("id: {id}\n").as_bytes());
    for line in data.split(|&b| b == b'\n') {
        frame.put_slice(b"data: ");
        frame.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    let frame = frame.freeze();
    let mut topics = hub.topics.lock().unwrap_or_else(|e| e.into_inner());
    let Some(subscribers) = topics.get_mut(topic) else {
        return 0;
    };
    subscribers.retain(|tx| tx.send(frame.clone()).is_ok());
    subscribers.len()
}

/// Streams the topic's frames to one subscriber until either side closes.
async fn subscribe(mut stream: TcpStream, hub: &Hub, topic: &str) -> std::io::Result<()> {
    let (tx, mut rx) = unbounded_channel::<Bytes>();
    hub.topics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(topic.to_owned())
        .or_default()
        .push(tx);
    let (mut reader, mut writer) = stream.split();
    // The head and a first chunk holding a comment, so clients see the stream open.
    writer
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n4\r\n:ok\n\r\n")
        .await?;
    let mut out = BytesMut::new();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                // Coalesce: everything already queued goes out as one chunk.
                let mut frames = vec![frame];
                while let Ok(frame) = rx.try_recv() {
                    frames.push(frame);
                }
                let len: usize = frames.iter().map(Bytes::len).sum();
                out.clear();
                out.put_slice(format!("{len:x}\r\n").as_bytes());
                frames.iter().for_each(|frame| out.put_slice(frame));
                out.put_slice(b"\r\n");
                writer.write_all(&out).await?;
            }
            // The client closed (or sent something we ignore).
            read = reader.read(&mut scratch) => if read? == 0 { return Ok(()) },
        }
    }
}

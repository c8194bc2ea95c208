//! A proxy in front of moto's RDS that can make snapshots look stuck: moto makes every
//! snapshot `available` at once, so a snapshot that stays `creating` past a timeout can only
//! be shown to backupd by rewriting moto's answers. Everything else is moto's own answer.
//!
//! One request per connection (the proxy answers `Connection: close`), plain std threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

pub struct StuckSnapshotProxy {
    addr: SocketAddr,
    stuck: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl StuckSnapshotProxy {
    /// Forwards to moto at `upstream` (`http://127.0.0.1:PORT`); snapshots are stuck from
    /// the start.
    pub fn start(upstream: &str) -> StuckSnapshotProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("an http://IP:PORT upstream");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let stuck = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (stuck_in, stop_in) = (stuck.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop_in.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let stuck = stuck_in.clone();
                thread::spawn(move || {
                    let _ = forward(client, upstream, stuck.load(Ordering::SeqCst));
                });
            }
        });
        StuckSnapshotProxy { addr, stuck, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether snapshots that moto reports `available` are reported `creating`.
    pub fn set_stuck(&self, stuck: bool) {
        self.stuck.store(stuck, Ordering::SeqCst);
    }
}

impl Drop for StuckSnapshotProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request head and body (by Content-Length).
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((head, body))
}

fn forward(client: TcpStream, upstream: SocketAddr, stuck: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let (head, body) = read_message(&mut reader)?;
    let mut server = TcpStream::connect(upstream)?;
    let mut request = String::new();
    for line in &head {
        let name = line.split(':').next().unwrap_or("");
        if !name.eq_ignore_ascii_case("connection") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    server.write_all(request.as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len());
    let answer_head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut answer_body =
        String::from_utf8_lossy(answer.get(split + 4..).unwrap_or(&[])).into_owned();
    if stuck
        && (answer_body.contains("<DescribeDBSnapshotsResponse")
            || answer_body.contains("<DescribeDBClusterSnapshotsResponse"))
    {
        answer_body =
            answer_body.replace("<Status>available</Status>", "<Status>creating</Status>");
    }
    let mut out = String::new();
    for line in answer_head.split("\r\n") {
        let name = line.split(':').next().unwrap_or("");
        if !["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        answer_body.len()
    ));
    let mut client = client;
    client.write_all(out.as_bytes())?;
    client.write_all(answer_body.as_bytes())?;
    client.flush()
}

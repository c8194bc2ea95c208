//! A fault-injecting TCP proxy for HTTP services (S3 test servers): tests point a client at
//! [`FaultProxy::endpoint`] and, while traffic flows, make the service throttle
//! ([`FaultProxy::throttle_next`]), vanish mid-upload ([`FaultProxy::cut_after_bytes`]) or
//! stay unreachable ([`FaultProxy::go_down`]) until [`FaultProxy::heal`].
//!
//! Requests (client to server) are followed one HTTP/1.1 message at a time, so faults hit
//! individual requests even on kept-alive connections; responses are copied as they come.
//! Every request head seen is logged ([`FaultProxy::requests`]), which lets a test count
//! the client's retries without timing anything. Plain std threads: the proxy works the
//! same under any (or no) async runtime, including while the test blocks on a child process.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The throttling answer, as S3 sends it.
const SLOW_DOWN_BODY: &str =
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
/// Longest request head (or chunk-size line) accepted; a real S3 request head is a few KiB.
const MAX_HEAD: usize = 64 << 10;
/// How long a refused connection may take to send its request line before it is dropped.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_secs(1);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed on to the server (possibly cut short by [`FaultProxy::cut_after_bytes`]).
    Forwarded,
    /// Answered `503 SlowDown` by the proxy; the server never saw it.
    Throttled,
    /// Arrived while the proxy was down: the connection was closed without an answer.
    Refused,
}

/// One request head the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target, e.g. `/bucket/key?partNumber=3&uploadId=...`.
    pub target: String,
    pub outcome: Outcome,
}

/// A proxy on a free loopback port in front of one upstream server. Stops (and drops every
/// connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stopping: bool,
    down: bool,
    /// Request bytes still allowed through before the proxy goes down.
    cut_budget: Option<u64>,
    throttle: u64,
    /// Throttle only requests with this method (`None`: any).
    throttle_method: Option<String>,
    throttled: u64,
    forwarded: u64,
    requests: Vec<Request>,
    next_id: u64,
    /// Both sockets of every open connection, so faults can drop them from outside.
    open: HashMap<u64, (TcpStream, TcpStream)>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream`, given as an endpoint URL (`http://127.0.0.1:8333`)
    /// or an address (`127.0.0.1:8333`). Panics if it cannot listen or resolve.
    pub fn start(upstream: &str) -> FaultProxy {
        let authority = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/');
        assert!(
            !authority.contains("://"),
            "FaultProxy speaks plain HTTP only, not {upstream}"
        );
        let upstream = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the proxy's upstream {upstream:?}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("fault-proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy's accept thread")
        };
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next `n` requests with `503 SlowDown` (and `Connection: close`) instead
    /// of forwarding them. Replaces any throttling still pending.
    pub fn throttle_next(&self, n: u64) {
        let mut state = self.shared.lock();
        state.throttle = n;
        state.throttle_method = None;
    }

    /// Like [`FaultProxy::throttle_next`], for the next `n` requests with this method
    /// (e.g. `PUT`: uploads, not the lookups before them).
    pub fn throttle_next_with_method(&self, n: u64, method: &str) {
        let mut state = self.shared.lock();
        state.throttle = n;
        state.throttle_method = Some(method.to_ascii_uppercase());
    }

    /// Requests answered `503 SlowDown` so far.
    pub fn throttled(&self) -> u64 {
        self.shared.lock().throttled
    }

    /// After `n` more request bytes (over all connections), drops every connection and
    /// refuses new ones until [`FaultProxy::heal`]: the endpoint goes down mid-request.
    pub fn cut_after_bytes(&self, n: u64) {
        let mut state = self.shared.lock();
        if n == 0 {
            state.go_down();
        } else {
            state.cut_budget = Some(n);
        }
    }

    /// Drops every connection and refuses new ones until [`FaultProxy::heal`].
    pub fn go_down(&self) {
        self.shared.lock().go_down();
    }

    /// Forwards again; cancels a pending [`FaultProxy::cut_after_bytes`].
    pub fn heal(&self) {
        let mut state = self.shared.lock();
        state.down = false;
        state.cut_budget = None;
    }

    pub fn is_down(&self) -> bool {
        self.shared.lock().down
    }

    /// Request bytes (heads and bodies) passed to the server so far.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.lock().forwarded
    }

    /// Every request head seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            state.go_down();
        }
        // Wakes the accept loop, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test's controls down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, head: &Head, outcome: Outcome) {
        self.lock().requests.push(Request {
            method: head.method.clone(),
            target: head.target.clone(),
            outcome,
        });
    }

    /// Whether to throttle a request with this method; uses up one throttling if so.
    fn take_throttle(&self, method: &str) -> bool {
        let mut state = self.lock();
        let applies = state
            .throttle_method
            .as_deref()
            .is_none_or(|only| only == method);
        if state.throttle == 0 || !applies {
            return false;
        }
        state.throttle -= 1;
        true
    }

    /// Writes request bytes upstream within the cut budget; going down when it runs out.
    fn forward(&self, mut upstream: &TcpStream, data: &[u8]) -> io::Result<()> {
        let (allowed, cut) = {
            let mut state = self.lock();
            if state.down {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            let len = data.len() as u64;
            let (allowed, cut) = match state.cut_budget {
                Some(budget) if budget <= len => {
                    // Down from now on; open connections are dropped once these last
                    // bytes are out.
                    state.down = true;
                    state.cut_budget = None;
                    (budget, true)
                }
                Some(budget) => {
                    state.cut_budget = Some(budget - len);
                    (len, false)
                }
                None => (len, false),
            };
            state.forwarded += allowed;
            (allowed as usize, cut)
        };
        upstream.write_all(&data[..allowed])?;
        if cut {
            self.lock().go_down();
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }
}

impl State {
    fn go_down(&mut self) {
        self.down = true;
        self.cut_budget = None;
        for (client, upstream) in self.open.values() {
            // Wakes the threads blocked on these sockets; they close them, and the kernel
            // resets connections that still had unread data.
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        // Out of threads: the client sees a closed connection, as with a failing server.
        let _ = thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || serve(&shared, client));
    }
}

fn serve(shared: &Arc<Shared>, client: TcpStream) {
    if shared.lock().down {
        return refuse(shared, client);
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
    else {
        return; // the server is gone: so is the connection
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let clones = || Ok::<_, io::Error>((client.try_clone()?, upstream.try_clone()?));
    let (Ok(registered), Ok((to_client, from_upstream))) = (clones(), clones()) else {
        return;
    };
    let id = {
        let mut state = shared.lock();
        if state.down {
            drop(state);
            return refuse(shared, client);
        }
        state.next_id += 1;
        let id = state.next_id;
        state.open.insert(id, registered);
        id
    };
    let responses = thread::Builder::new()
        .name("fault-proxy-resp".into())
        .spawn(move || copy_responses(from_upstream, to_client));
    if responses.is_ok() {
        let _ = forward_requests(shared, &client, &upstream);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    shared.lock().open.remove(&id);
    if let Ok(responses) = responses {
        let _ = responses.join();
    }
}

/// Copies responses as they come; either side closing closes the connection.
fn copy_responses(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Reads the request head of a connection that arrived while down, for the log, then
/// drops the connection unanswered.
fn refuse(shared: &Shared, client: TcpStream) {
    let _ = client.set_read_timeout(Some(REFUSE_READ_TIMEOUT));
    let mut reader = BufReader::new(&client);
    if let Ok(Some(head)) = read_head(&mut reader) {
        shared.log(&head, Outcome::Refused);
    }
}

/// Forwards requests one by one until either side closes or a fault ends the connection.
fn forward_requests(shared: &Shared, client: &TcpStream, upstream: &TcpStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, client);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        if head.framing == Framing::Raw {
            // Not HTTP as we know it: pass everything through, still within the cut budget.
            shared.log(&head, Outcome::Forwarded);
            shared.forward(upstream, &head.raw)?;
            return copy_body(&mut reader, Framing::Raw, &mut |data| {
                shared.forward(upstream, data)
            });
        }
        if shared.take_throttle(&head.method) {
            return throttle(shared, &mut reader, client, &head);
        }
        shared.log(&head, Outcome::Forwarded);
        shared.forward(upstream, &head.raw)?;
        copy_body(&mut reader, head.framing, &mut |data| {
            shared.forward(upstream, data)
        })?;
    }
}

/// Answers a request `503 SlowDown` after consuming its body, so the client reads the
/// answer instead of failing on a reset.
fn throttle(
    shared: &Shared,
    reader: &mut BufReader<&TcpStream>,
    mut client: &TcpStream,
    head: &Head,
) -> io::Result<()> {
    // A client waiting for `100 Continue` sends no body: answer at once.
    if !head.expect_continue {
        copy_body(reader, head.framing, &mut |_| Ok(()))?;
    }
    // Counted before answering, so a client that got the answer sees it counted.
    shared.lock().throttled += 1;
    shared.log(head, Outcome::Throttled);
    let body = if head.method == "HEAD" {
        ""
    } else {
        SLOW_DOWN_BODY
    };
    let response = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        SLOW_DOWN_BODY.len()
    );
    client.write_all(response.as_bytes())?;
    client.flush()?;
    client.shutdown(Shutdown::Write)?;
    if head.expect_continue {
        // It may send the body anyway: read it so the close does not reset the answer.
        let _ = client.set_read_timeout(Some(REFUSE_READ_TIMEOUT));
        let _ = io::copy(reader, &mut io::sink());
    }
    Ok(())
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Not an HTTP/1.x request: everything up to the end of the connection.
    Raw,
}

struct Head {
    method: String,
    target: String,
    framing: Framing,
    expect_continue: bool,
    /// The head exactly as received.
    raw: Vec<u8>,
}

impl Head {
    /// Bytes that do not start an HTTP/1.x request.
    fn raw(raw: Vec<u8>) -> Head {
        Head {
            method: String::new(),
            target: String::new(),
            framing: Framing::Raw,
            expect_continue: false,
            raw,
        }
    }
}

/// Reads one request head; `None` if the connection ended cleanly before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    if read_line(reader, &mut raw)? == 0 {
        return Ok(None);
    }
    let request_line = String::from_utf8_lossy(&raw).into_owned();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Some(Head::raw(raw)));
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(Some(Head::raw(raw)));
    }
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        framing: Framing::Length(0),
        expect_continue: false,
        raw: Vec::new(),
    };
    loop {
        let start = raw.len();
        if read_line(reader, &mut raw)? == 0 || raw.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "incomplete or oversized request head",
            ));
        }
        let line = String::from_utf8_lossy(&raw[start..]);
        let Some((name, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                break;
            }
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                head.framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // Transfer-Encoding wins over Content-Length (RFC 9112, 6.3).
            if head.framing != Framing::Chunked {
                let length = value.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
                head.framing = Framing::Length(length);
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    head.raw = raw;
    Ok(Some(head))
}

/// Appends one line (with its `\n`) to `buf`; returns its length, 0 at the end of input.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    let n = reader
        .by_ref()
        .take(MAX_HEAD as u64)
        .read_until(b'\n', buf)?;
    if n > 0 && !buf.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated or oversized line",
        ));
    }
    Ok(n)
}

/// Passes a request body (as framed) from `reader` to `out`.
fn copy_body(
    reader: &mut impl BufRead,
    framing: Framing,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    match framing {
        Framing::Length(n) => copy_exact(reader, n, out),
        Framing::Raw => loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            let n = buf.len();
            out(buf)?;
            reader.consume(n);
        },
        Framing::Chunked => loop {
            let mut line = Vec::new();
            if read_line(reader, &mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out(&line)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size > 0 {
                copy_exact(reader, size + 2, out)?; // the data and its CRLF
                continue;
            }
            // The last chunk: trailers up to an empty line.
            loop {
                let mut trailer = Vec::new();
                if read_line(reader, &mut trailer)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                out(&trailer)?;
                if trailer == b"\r\n" || trailer == b"\n" {
                    return Ok(());
                }
            }
        },
    }
}

fn copy_exact(
    reader: &mut impl BufRead,
    mut remaining: u64,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    while remaining > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(remaining.try_into().unwrap_or(usize::MAX));
        out(&buf[..n])?;
        reader.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 server that answers every request `200` with "METHOD TARGET BODY-BYTES",
    /// keeping connections alive. Runs until the test process ends.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                thread::spawn(move || {
                    let mut reader = BufReader::new(&conn);
                    while let Ok(Some(head)) = read_head(&mut reader) {
                        let mut received = 0;
                        let counted = copy_body(&mut reader, head.framing, &mut |data| {
                            received += data.len();
                            Ok(())
                        });
                        if counted.is_err() {
                            return;
                        }
                        let body = format!("{} {} {received}", head.method, head.target);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if (&conn).write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let conn = TcpStream::connect(proxy.addr()).unwrap();
        // Only a safety net against a hung test, never part of an assertion.
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn
    }

    /// Sends one request and reads the answer: (status, body).
    fn exchange(conn: &TcpStream, request: &[u8]) -> io::Result<(u16, String)> {
        let mut writer = conn;
        writer.write_all(request)?;
        let mut reader = BufReader::new(conn);
        let mut status_line = Vec::new();
        if read_line(&mut reader, &mut status_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            let mut line = Vec::new();
            if read_line(&mut reader, &mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        // Everything was consumed: the buffered reader holds nothing of the next answer.
        assert!(reader.buffer().is_empty());
        Ok((status, String::from_utf8(body).unwrap()))
    }

    fn put(target: &str, body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    fn is_closed(conn: &TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!((&*conn).read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn throttles_single_requests_on_kept_alive_connections() {
        let proxy = FaultProxy::start(&format!("http://{}/", echo_server()));
        let conn = connect(&proxy);
        let big = vec![7u8; 300_000];
        assert_eq!(
            exchange(&conn, &put("/b/one", &big)).unwrap(),
            (200, "PUT /b/one 300000".into())
        );
        let chunked = b"PUT /b/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (status, body) = exchange(&conn, chunked).unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("PUT /b/chunked "), "{body}");

        proxy.throttle_next_with_method(1, "put");
        // Same connection: a GET passes, the next PUT is answered by the proxy.
        assert_eq!(
            exchange(&conn, &get("/b/one")).unwrap(),
            (200, "GET /b/one 0".into())
        );
        let (status, body) = exchange(&conn, &put("/b/two", &big)).unwrap();
        assert_eq!(status, 503);
        assert_eq!(body, SLOW_DOWN_BODY);
        assert!(is_closed(&conn), "a throttled connection must be closed");
        assert_eq!(proxy.throttled(), 1);
        // The throttling is used up: the retry goes through.
        let conn = connect(&proxy);
        assert_eq!(
            exchange(&conn, &put("/b/two", &big)).unwrap(),
            (200, "PUT /b/two 300000".into())
        );

        proxy.throttle_next(2);
        for _ in 0..2 {
            let conn = connect(&proxy);
            assert_eq!(exchange(&conn, &get("/b/two")).unwrap().0, 503);
        }
        assert_eq!(exchange(&connect(&proxy), &get("/b/two")).unwrap().0, 200);
        assert_eq!(proxy.throttled(), 3);

        let outcomes: Vec<(String, String, Outcome)> = proxy
            .requests()
            .into_iter()
            .map(|r| (r.method, r.target, r.outcome))
            .collect();
        let expected = [
            ("PUT", "/b/one", Outcome::Forwarded),
            ("PUT", "/b/chunked", Outcome::Forwarded),
            ("GET", "/b/one", Outcome::Forwarded),
            ("PUT", "/b/two", Outcome::Throttled),
            ("PUT", "/b/two", Outcome::Forwarded),
            ("GET", "/b/two", Outcome::Throttled),
            ("GET", "/b/two", Outcome::Throttled),
            ("GET", "/b/two", Outcome::Forwarded),
        ]
        .map(|(m, t, o)| (m.to_owned(), t.to_owned(), o));
        assert_eq!(outcomes, expected);
    }

    #[test]
    fn a_cut_drops_open_connections_and_refuses_new_ones_until_healed() {
        let proxy = FaultProxy::start(&echo_server().to_string());
        let idle = connect(&proxy);
        assert_eq!(exchange(&idle, &get("/warm")).unwrap().0, 200);
        let head_len = put("/big", &[]).len() as u64;
        let before = proxy.bytes_forwarded();

        proxy.cut_after_bytes(head_len + 1000);
        let conn = connect(&proxy);
        assert!(exchange(&conn, &put("/big", &vec![1u8; 4 << 20])).is_err());
        assert_eq!(proxy.bytes_forwarded() - before, head_len + 1000);
        assert!(proxy.is_down());
        assert!(
            is_closed(&idle),
            "open connections go down with the endpoint"
        );
        assert!(exchange(&connect(&proxy), &get("/while-down")).is_err());

        proxy.heal();
        assert_eq!(
            exchange(&connect(&proxy), &get("/again")).unwrap(),
            (200, "GET /again 0".into())
        );
        proxy.go_down();
        assert!(exchange(&connect(&proxy), &get("/down")).is_err());
        proxy.heal();
        assert_eq!(exchange(&connect(&proxy), &get("/up")).unwrap().0, 200);

        let outcomes: Vec<(String, Outcome)> = proxy
            .requests()
            .into_iter()
            .map(|r| (r.target, r.outcome))
            .collect();
        let expected = [
            ("/warm", Outcome::Forwarded),
            ("/big", Outcome::Forwarded),
            ("/while-down", Outcome::Refused),
            ("/again", Outcome::Forwarded),
            ("/down", Outcome::Refused),
            ("/up", Outcome::Forwarded),
        ]
        .map(|(t, o)| (t.to_owned(), o));
        assert_eq!(outcomes, expected);
    }
}

//! A tiny HTTP/1.1 server for the downloader's tests and benchmark, std only.
//!
//! It listens on 127.0.0.1 with a port chosen by the system, serves each connection on its own
//! thread and answers exactly one request per connection, always with `Connection: close`.
//! Every route is an exact path (the query string is ignored) with a [`Behavior`]: a normal
//! file, a file without range support, an error status, or one of the faults below. Unknown
//! paths get 404, methods other than GET and HEAD get 405, and HEAD gets the headers GET would
//! get, without a body.
//!
//! Only `Range: bytes=N-` is understood (what a resuming client sends). Any other range form
//! (`bytes=N-M`, `bytes=-N`, several ranges) is ignored and answered with 200 and the whole
//! body, which HTTP allows.
//!
//! What a client sees for each fault (observed with `std::net::TcpStream` on Linux):
//!
//! * `ResetAfter`: the status line and headers announce the whole (remaining) length, then
//!   `after` bytes arrive, then the connection ends. Without `SO_LINGER` 0 (not reachable with
//!   std alone) the server cannot send a real RST, so it shuts the socket down and drops it:
//!   the client's `read` returns `Ok(0)` (end of file) after the short body, never an error.
//!   An HTTP client must report this as a body shorter than `Content-Length` (hyper:
//!   "end of file before message length reached").
//! * `Truncate`: the same as seen from the client (short body, then `Ok(0)`), but on every
//!   request, and always from offset 0 with 200 (a `Range` header is ignored), so a client can
//!   never complete the download by resuming.
//! * `Slow`: status line and headers arrive at once, the body only after `delay`. A client
//!   read timeout fires as `ErrorKind::WouldBlock` on Unix (`TimedOut` on Windows). When the
//!   [`Server`] is dropped meanwhile, the connection is shut down and the client reads `Ok(0)`.
//! * Dropping the [`Server`] shuts down every open connection (the client reads `Ok(0)`, or a
//!   write fails) and returns within a few tens of milliseconds, whatever is in flight.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the accept loop and sleeping handlers look at the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// Size of the pieces `OkFile` reads from disk and writes to the socket.
const CHUNK: usize = 256 * 1024;
/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server does for one path.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with `Content-Length`; `Range: bytes=N-` gets 206 with `Content-Range` and the body
    /// from offset N, or 416 if N is not below the length.
    Ok(Vec<u8>),
    /// Like `Ok`, but streams the file from disk in 256 KiB pieces (for large files). A file
    /// that cannot be opened gets 500.
    OkFile(PathBuf),
    /// 200 with the whole body, even when a `Range` header was sent (no range support).
    NoRange(Vec<u8>),
    /// That status with a short text body (`404 Not Found\n`); 204 and 304 get no body.
    Status(u16),
    /// The first `failures` requests (GET or HEAD) get `status`, later ones behave like `Ok(body)`.
    FailThenOk {
        failures: usize,
        status: u16,
        body: Vec<u8>,
    },
    /// The first `times` GET requests get the headers of `Ok(body)` (200, or 206 from the range
    /// offset) but only `after` bytes of the body before the connection is shut down and
    /// dropped. Later GETs, and every HEAD, behave like `Ok(body)`.
    ResetAfter { body: Vec<u8>, after: usize, times: usize },
    /// Every request gets 200 with the whole body's `Content-Length` but only its first `send`
    /// bytes, then a clean close. `Range` is ignored.
    Truncate { body: Vec<u8>, send: usize },
    /// Like `Ok(body)` (ranges included), but the body follows the headers only after `delay`.
    Slow { body: Vec<u8>, delay: Duration },
    /// 302 with `Location:` this value (a path such as `/real/file`, or a full URL).
    Redirect(String),
}

/// One request the server answered: its path (without query string), the start offset of its
/// `Range: bytes=N-` header if it had one, and the status sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<u64>,
    pub status: u16,
}

/// A running server. Dropping it stops the accept loop, shuts down open connections and joins
/// every thread; that takes a few tens of milliseconds at most.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    routes: Vec<Route>,
    stop: AtomicBool,
    log: Mutex<Vec<Request>>,
    /// A clone of every open connection, so that stopping can shut them all down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

struct Route {
    path: String,
    behavior: Behavior,
    hits: AtomicUsize,
}

impl Server {
    /// Starts a server on 127.0.0.1 with a free port. Paths match exactly; panics if a path is
    /// given twice or the socket cannot be set up.
    pub fn start(routes: Vec<(&str, Behavior)>) -> Server {
        let mut table: Vec<Route> = Vec::with_capacity(routes.len());
        for (path, behavior) in routes {
            assert!(
                table.iter().all(|r| r.path != path),
                "http_server: route {path} given twice"
            );
            table.push(Route {
                path: path.to_string(),
                behavior,
                hits: AtomicUsize::new(0),
            });
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("http_server: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("http_server: nonblocking listener");
        let addr = listener.local_addr().expect("http_server: local address");
        let shared = Arc::new(Shared {
            routes: table,
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("http-server-accept".to_string())
                .spawn(move || accept_loop(listener, shared))
                .expect("http_server: spawn accept thread")
        };
        Server {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request answered so far, in the order the responses were started.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicking handler must not hide the log from the test.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records a connection so that stopping can shut it down; false if the server is stopping
    /// (checked under the lock that `Drop` takes after raising the flag, so none slips through).
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let mut conns = lock(&self.conns);
        if self.stopped() {
            return false;
        }
        match stream.try_clone() {
            Ok(clone) => {
                conns.insert(id, clone);
                true
            }
            Err(_) => false,
        }
    }

    /// Sleeps for `delay` in small slices; false if the server stopped meanwhile.
    fn sleep(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep(POLL.min(deadline - now));
        }
    }
}

/// Removes a connection from the registry when its handler ends, even by panic.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                workers.retain(|w| !w.is_finished());
                let id = next_id;
                next_id += 1;
                if !shared.register(id, &stream) {
                    continue;
                }
                let worker_shared = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name("http-server-conn".to_string())
                    .spawn(move || {
                        let _registered = Registered {
                            shared: &worker_shared,
                            id,
                        };
                        handle(stream, &worker_shared);
                    });
                match spawned {
                    Ok(worker) => workers.push(worker),
                    Err(_) => {
                        lock(&shared.conns).remove(&id);
                    }
                }
            }
            // WouldBlock is the normal "nobody waiting"; anything else (out of descriptors,
            // aborted handshake) is retried after the same pause.
            Err(_) => thread::sleep(POLL),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// A request as parsed from the wire.
struct Incoming {
    method: String,
    path: String,
    range: Option<u64>,
}

fn handle(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(Some(head)) => head,
        // The client left (or the server stopped) before sending a whole request.
        Ok(None) => return,
        Err(_) => {
            let mut reply = Reply::new(&mut stream, shared, "", None, false);
            let _ = reply.text(400, &[]);
            return;
        }
    };
    let Some(incoming) = parse_head(&head) else {
        let mut reply = Reply::new(&mut stream, shared, "", None, false);
        let _ = reply.text(400, &[]);
        return;
    };
    // Errors here mean the client went away or the server is stopping: nothing to do.
    let _ = respond(&mut stream, shared, &incoming);
    let _ = stream.flush();
    // Dropping the stream closes it: the end of every response (`Connection: close`).
}

/// Reads up to the blank line ending the request head. `Ok(None)` if the connection ended first.
pub fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A TLS handshake (record type 0x16) on this plain-HTTP port: refuse it at once, as
        // Go's net/http does, so a client trying https first falls back without a timeout.
        if head.is_empty() && buf[0] == 0x16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake on a plain-HTTP port",
            ));
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(pos) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + pos);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?;
    let target = request_line.next()?;
    let version = request_line.next()?;
    if !version.starts_with("HTTP/") || request_line.next().is_some() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let mut range = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("range") {
            range = parse_range(value.trim());
        }
    }
    Some(Incoming {
        method: method.to_string(),
        path: path.to_string(),
        range,
    })
}

/// The start offset of `bytes=N-`; `None` for every other form.
pub fn parse_range(value: &str) -> Option<u64> {
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    if !end.trim().is_empty() {
        return None;
    }
    start.trim().parse().ok()
}

fn respond(stream: &mut TcpStream, shared: &Shared, incoming: &Incoming) -> io::Result<()> {
    let head_only = incoming.method == "HEAD";
    let mut reply = Reply::new(stream, shared, &incoming.path, incoming.range, head_only);
    if incoming.method != "GET" && !head_only {
        return reply.text(405, &[("Allow", "GET, HEAD".to_string())]);
    }
    let Some(route) = shared.routes.iter().find(|r| r.path == incoming.path) else {
        return reply.text(404, &[]);
    };
    match &route.behavior {
        Behavior::Ok(body) => reply.bytes(body, Serve::default()),
        Behavior::OkFile(path) => reply.file(path),
        Behavior::NoRange(body) => reply.bytes(
            body,
            Serve {
                ignore_range: true,
                ..Serve::default()
            },
        ),
        Behavior::Status(status) => reply.text(*status, &[]),
        Behavior::FailThenOk { failures, status, body } => {
            if route.hits.fetch_add(1, Ordering::SeqCst) < *failures {
                reply.text(*status, &[])
            } else {
                reply.bytes(body, Serve::default())
            }
        }
        Behavior::ResetAfter { body, after, times } => {
            if !head_only && route.hits.fetch_add(1, Ordering::SeqCst) < *times {
                let sent = reply.bytes(
                    body,
                    Serve {
                        limit: Some(*after),
                        ..Serve::default()
                    },
                );
                let _ = reply.stream.shutdown(Shutdown::Both);
                sent
            } else {
                reply.bytes(body, Serve::default())
            }
        }
        Behavior::Truncate { body, send } => reply.bytes(
            body,
            Serve {
                ignore_range: true,
                limit: Some(*send),
                ..Serve::default()
            },
        ),
        Behavior::Slow { body, delay } => reply.bytes(
            body,
            Serve {
                delay: Some(*delay),
                ..Serve::default()
            },
        ),
        Behavior::Redirect(location) => reply.text(302, &[("Location", location.clone())]),
    }
}

/// How to serve a body.
#[derive(Default, Clone, Copy)]
struct Serve {
    /// Answer 200 with the whole body even if a range was asked for.
    ignore_range: bool,
    /// Send at most this many body bytes, whatever `Content-Length` says.
    limit: Option<usize>,
    /// Wait this long between the headers and the body.
    delay: Option<Duration>,
}

/// Where the body starts, or why it cannot be served.
enum Plan {
    /// 200, from offset 0.
    Whole,
    /// 206, from this offset.
    From(u64),
    /// 416.
    Unsatisfiable,
}

fn plan(total: u64, range: Option<u64>, ignore_range: bool) -> Plan {
    match range {
        _ if ignore_range => Plan::Whole,
        None => Plan::Whole,
        Some(start) if start < total => Plan::From(start),
        Some(_) => Plan::Unsatisfiable,
    }
}

/// The response being written for one request.
struct Reply<'a> {
    stream: &'a mut TcpStream,
    shared: &'a Shared,
    path: &'a str,
    range: Option<u64>,
    head_only: bool,
}

impl<'a> Reply<'a> {
    fn new(stream: &'a mut TcpStream, shared: &'a Shared, path: &'a str, range: Option<u64>, head_only: bool) -> Self {
        Reply {
            stream,
            shared,
            path,
            range,
            head_only,
        }
    }

    /// Logs the request, then writes the status line and headers.
    fn head(&mut self, status: u16, length: Option<u64>, headers: &[(&str, String)]) -> io::Result<()> {
        lock(&self.shared.log).push(Request {
            path: self.path.to_string(),
            range: self.range,
            status,
        });
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        if let Some(length) = length {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        self.stream.write_all(head.as_bytes())
    }

    /// `status` with a one-line text body (none for 204 and 304).
    fn text(&mut self, status: u16, headers: &[(&str, String)]) -> io::Result<()> {
        if matches!(status, 204 | 304) {
            return self.head(status, None, headers);
        }
        let body = format!("{status} {}\n", reason(status));
        let mut all = vec![("Content-Type", "text/plain; charset=utf-8".to_string())];
        all.extend(headers.iter().cloned());
        self.head(status, Some(body.len() as u64), &all)?;
        if self.head_only {
            return Ok(());
        }
        self.stream.write_all(body.as_bytes())
    }

    /// Writes the headers for a body of `total` bytes; returns the offset the body starts at,
    /// or `None` once a 416 has been sent.
    fn body_head(&mut self, total: u64, ignore_range: bool) -> io::Result<Option<u64>> {
        let octets = ("Content-Type", "application/octet-stream".to_string());
        match plan(total, self.range, ignore_range) {
            Plan::Whole if ignore_range => self.head(200, Some(total), &[octets]).map(|()| Some(0)),
            Plan::Whole => {
                let ranges = ("Accept-Ranges", "bytes".to_string());
                self.head(200, Some(total), &[octets, ranges]).map(|()| Some(0))
            }
            Plan::From(start) => {
                let headers = [
                    octets,
                    ("Accept-Ranges", "bytes".to_string()),
                    ("Content-Range", format!("bytes {start}-{}/{total}", total - 1)),
                ];
                self.head(206, Some(total - start), &headers).map(|()| Some(start))
            }
            Plan::Unsatisfiable => {
                self.text(416, &[("Content-Range", format!("bytes */{total}"))])?;
                Ok(None)
            }
        }
    }

    fn bytes(&mut self, body: &[u8], serve: Serve) -> io::Result<()> {
        let Some(start) = self.body_head(body.len() as u64, serve.ignore_range)? else {
            return Ok(());
        };
        if self.head_only {
            return Ok(());
        }
        if let Some(delay) = serve.delay
            && !self.shared.sleep(delay)
        {
            return Ok(());
        }
        let rest = &body[start as usize..];
        let rest = &rest[..serve.limit.map_or(rest.len(), |limit| limit.min(rest.len()))];
        self.stream.write_all(rest)
    }

    fn file(&mut self, path: &Path) -> io::Result<()> {
        let opened = File::open(path).and_then(|file| Ok((file.metadata()?.len(), file)));
        let Ok((total, mut file)) = opened else {
            return self.text(500, &[]);
        };
        let Some(start) = self.body_head(total, false)? else {
            return Ok(());
        };
        if self.head_only {
            return Ok(());
        }
        file.seek(SeekFrom::Start(start))?;
        let mut file = file.take(total - start);
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.shared.stopped() {
                return Ok(());
            }
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.stream.write_all(&buf[..n])?;
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A raw HTTP/1.1 client for the servers' own tests: exactly the bytes sent, and the
/// response as it came, including how the connection ended.
#[cfg(test)]
pub mod client {
    use std::io::{self, Read as _, Write as _};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// How reading a response ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum End {
        Eof,
        Error(io::ErrorKind),
    }

    #[derive(Debug)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        pub end: End,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn content_length<T: std::str::FromStr<Err: std::fmt::Debug>>(&self) -> Option<T> {
            self.header("content-length").map(|v| v.parse().unwrap())
        }
    }

    /// Sends one request (with `Host`) and returns the connection, its reads bounded by `timeout`.
    pub fn send(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> TcpStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        stream
    }

    /// Reads until end of file or an error, and says which.
    pub fn read_all(stream: &mut TcpStream, into: &mut Vec<u8>) -> End {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return End::Eof,
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return End::Error(e.kind()),
            }
        }
    }

    /// Reads until the blank line after the headers; returns the head and any body bytes read.
    pub fn read_until_body(stream: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let body = data.split_off(pos + 4);
                return (data, body);
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "connection ended inside the headers");
            data.extend_from_slice(&buf[..n]);
        }
    }

    pub fn parse(data: Vec<u8>, end: End) -> Response {
        let pos = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?} ({end:?})", String::from_utf8_lossy(&data)));
        let head = std::str::from_utf8(&data[..pos]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_string(), value.trim().to_string())
            })
            .collect();
        Response {
            status,
            headers,
            body: data[pos + 4..].to_vec(),
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::*;
    use super::*;

    /// Bytes that differ from their neighbours, so an offset mistake shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn connect(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
        send(server.addr, method, path, headers, Duration::from_secs(5))
    }

    fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut stream = connect(server, method, path, headers);
        let mut data = Vec::new();
        let end = read_all(&mut stream, &mut data);
        parse(data, end)
    }

    fn get(server: &Server, path: &str) -> Response {
        request(server, "GET", path, &[])
    }

    fn get_from(server: &Server, path: &str, start: u64) -> Response {
        request(server, "GET", path, &[("Range", &format!("bytes={start}-"))])
    }

    fn log(path: &str, range: Option<u64>, status: u16) -> Request {
        Request {
            path: path.to_string(),
            range,
            status,
        }
    }

    #[test]
    fn url_and_base_point_at_loopback() {
        let server = Server::start(vec![]);
        let base = server.base();
        let port: u16 = base.strip_prefix("http://127.0.0.1:").unwrap().parse().unwrap();
        assert_ne!(port, 0);
        assert_eq!(server.url("/a/b"), format!("{base}/a/b"));
    }

    #[test]
    fn ok_serves_the_body_with_its_length_and_closes() {
        let body = pattern(100_000);
        let server = Server::start(vec![("/f", Behavior::Ok(body.clone()))]);
        let r = get(&server, "/f");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(body.len()));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.body, body);
        assert_eq!(r.end, End::Eof);
    }

    #[test]
    fn head_sends_headers_only() {
        let body = pattern(1234);
        let server = Server::start(vec![("/f", Behavior::Ok(body))]);
        let r = request(&server, "HEAD", "/f", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(1234));
        assert!(r.body.is_empty());
        assert_eq!(server.requests(), vec![log("/f", None, 200)]);
    }

    #[test]
    fn range_from_an_offset_gets_206_and_the_tail() {
        let body = pattern(1000);
        let server = Server::start(vec![("/f", Behavior::Ok(body.clone()))]);
        let r = get_from(&server, "/f", 600);
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 600-999/1000"));
        assert_eq!(r.content_length(), Some(400));
        assert_eq!(r.body, &body[600..]);

        let last = get_from(&server, "/f", 999);
        assert_eq!(last.status, 206);
        assert_eq!(last.header("content-range"), Some("bytes 999-999/1000"));
        assert_eq!(last.body, &body[999..]);

        let zero = get_from(&server, "/f", 0);
        assert_eq!(zero.status, 206);
        assert_eq!(zero.body, body);
    }

    #[test]
    fn range_at_or_past_the_end_gets_416() {
        let server = Server::start(vec![("/f", Behavior::Ok(pattern(1000)))]);
        for start in [1000, 5000] {
            let r = get_from(&server, "/f", start);
            assert_eq!(r.status, 416);
            assert_eq!(r.header("content-range"), Some("bytes */1000"));
            assert_eq!(r.content_length(), Some(r.body.len()));
        }
        assert_eq!(
            server.requests(),
            vec![log("/f", Some(1000), 416), log("/f", Some(5000), 416)]
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_other_range_forms_are_ignored() {
        let body = pattern(100);
        let server = Server::start(vec![("/f", Behavior::Ok(body.clone()))]);
        let r = request(&server, "GET", "/f", &[("rAnGe", "bytes=10-")]);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &body[10..]);
        for form in ["bytes=10-20", "bytes=-10", "bytes=1-,5-", "items=10-", "bytes=x-"] {
            let r = request(&server, "GET", "/f", &[("Range", form)]);
            assert_eq!(r.status, 200, "{form}");
            assert_eq!(r.body, body, "{form}");
        }
    }

    #[test]
    fn no_range_ignores_the_range_header() {
        let body = pattern(1000);
        let server = Server::start(vec![("/f", Behavior::NoRange(body.clone()))]);
        let r = get_from(&server, "/f", 600);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(1000));
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.header("accept-ranges"), None);
        assert_eq!(r.body, body);
        assert_eq!(server.requests(), vec![log("/f", Some(600), 200)]);
    }

    #[test]
    fn unknown_paths_get_404_and_status_routes_their_status() {
        let server = Server::start(vec![("/boom", Behavior::Status(500)), ("/gone", Behavior::Status(404))]);
        let r = get(&server, "/nope");
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"404 Not Found\n");
        let r = get(&server, "/boom");
        assert_eq!(r.status, 500);
        assert_eq!(r.body, b"500 Internal Server Error\n");
        assert_eq!(r.content_length(), Some(r.body.len()));
        assert_eq!(get(&server, "/gone").status, 404);
        // Path match is exact.
        assert_eq!(get(&server, "/boom/").status, 404);
        assert_eq!(get(&server, "/boo").status, 404);
    }

    #[test]
    fn other_methods_get_405_and_garbage_gets_400() {
        let server = Server::start(vec![("/f", Behavior::Ok(pattern(10)))]);
        let r = request(&server, "POST", "/f", &[]);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));

        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(b"nonsense\r\n\r\n").unwrap();
        let mut data = Vec::new();
        let end = read_all(&mut stream, &mut data);
        assert_eq!(parse(data, end).status, 400);
        assert_eq!(server.requests(), vec![log("/f", None, 405), log("", None, 400)]);
    }

    #[test]
    fn a_tls_handshake_gets_400_at_once() {
        let server = Server::start(vec![("/f", Behavior::Ok(pattern(10)))]);
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // The start of a TLS ClientHello: no CRLF will ever come.
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        let mut data = Vec::new();
        let end = read_all(&mut stream, &mut data);
        assert_eq!(parse(data, end).status, 400);
    }

    #[test]
    fn fail_then_ok_fails_the_first_requests_then_serves() {
        let body = pattern(500);
        let server = Server::start(vec![(
            "/f",
            Behavior::FailThenOk {
                failures: 2,
                status: 503,
                body: body.clone(),
            },
        )]);
        assert_eq!(get(&server, "/f").status, 503);
        assert_eq!(get_from(&server, "/f", 100).status, 503);
        let r = get(&server, "/f");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        let r = get_from(&server, "/f", 100);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &body[100..]);
        assert_eq!(
            server.requests(),
            vec![
                log("/f", None, 503),
                log("/f", Some(100), 503),
                log("/f", None, 200),
                log("/f", Some(100), 206),
            ]
        );
    }

    #[test]
    fn reset_after_cuts_the_first_gets_short_then_serves_ranges() {
        let body = pattern(10_000);
        let server = Server::start(vec![(
            "/f",
            Behavior::ResetAfter {
                body: body.clone(),
                after: 3000,
                times: 2,
            },
        )]);
        // HEAD is answered normally and does not use up a fault.
        let head = request(&server, "HEAD", "/f", &[]);
        assert_eq!((head.status, head.content_length()), (200, Some(10_000)));

        let first = get(&server, "/f");
        assert_eq!(first.status, 200);
        assert_eq!(first.content_length(), Some(10_000));
        assert_eq!(first.body, &body[..3000]);
        assert_eq!(first.end, End::Eof, "a shut-down socket reads as end of file");

        let second = get_from(&server, "/f", 3000);
        assert_eq!(second.status, 206);
        assert_eq!(second.header("content-range"), Some("bytes 3000-9999/10000"));
        assert_eq!(second.content_length(), Some(7000));
        assert_eq!(second.body, &body[3000..6000]);
        assert_eq!(second.end, End::Eof);

        let third = get_from(&server, "/f", 6000);
        assert_eq!(third.status, 206);
        assert_eq!(third.body, &body[6000..]);
        let fourth = get(&server, "/f");
        assert_eq!(fourth.body, body);
        assert_eq!(
            server.requests(),
            vec![
                log("/f", None, 200),
                log("/f", None, 200),
                log("/f", Some(3000), 206),
                log("/f", Some(6000), 206),
                log("/f", None, 200),
            ]
        );
    }

    #[test]
    fn reset_after_larger_than_the_body_sends_it_all() {
        let body = pattern(100);
        let server = Server::start(vec![(
            "/f",
            Behavior::ResetAfter {
                body: body.clone(),
                after: 1000,
                times: 1,
            },
        )]);
        let r = get_from(&server, "/f", 40);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &body[40..]);
    }

    #[test]
    fn truncate_always_sends_a_short_whole_body_response() {
        let body = pattern(1000);
        let server = Server::start(vec![(
            "/f",
            Behavior::Truncate {
                body: body.clone(),
                send: 10,
            },
        )]);
        for r in [get(&server, "/f"), get(&server, "/f"), get_from(&server, "/f", 10)] {
            assert_eq!(r.status, 200);
            assert_eq!(r.content_length(), Some(1000));
            assert_eq!(r.header("content-range"), None);
            assert_eq!(r.body, &body[..10]);
            assert_eq!(r.end, End::Eof);
        }
        assert_eq!(
            server.requests(),
            vec![log("/f", None, 200), log("/f", None, 200), log("/f", Some(10), 200)]
        );
    }

    #[test]
    fn redirect_sends_302_with_location() {
        let body = pattern(50);
        let server = Server::start(vec![
            ("/link", Behavior::Redirect("/real/file".to_string())),
            ("/real/file", Behavior::Ok(body.clone())),
        ]);
        let r = get(&server, "/link");
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some("/real/file"));
        let followed = get(&server, r.header("location").unwrap());
        assert_eq!(followed.body, body);
        assert_eq!(
            server.requests(),
            vec![log("/link", None, 302), log("/real/file", None, 200)]
        );
    }

    #[test]
    fn slow_sends_headers_then_the_body_after_the_delay() {
        let body = pattern(100);
        let server = Server::start(vec![(
            "/f",
            Behavior::Slow {
                body: body.clone(),
                delay: Duration::from_millis(300),
            },
        )]);
        let started = Instant::now();
        let r = get_from(&server, "/f", 20);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &body[20..]);
    }

    #[test]
    fn slow_trips_a_client_read_timeout() {
        let server = Server::start(vec![(
            "/f",
            Behavior::Slow {
                body: pattern(100),
                delay: Duration::from_secs(30),
            },
        )]);
        let mut stream = connect(&server, "GET", "/f", &[]);
        let (head, early) = read_until_body(&mut stream);
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(early.is_empty());
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut rest = Vec::new();
        let end = read_all(&mut stream, &mut rest);
        assert_eq!(end, End::Error(io::ErrorKind::WouldBlock));
        assert!(rest.is_empty());
    }

    #[test]
    fn drop_returns_promptly_with_a_slow_request_in_flight() {
        let server = Server::start(vec![(
            "/f",
            Behavior::Slow {
                body: pattern(100),
                delay: Duration::from_secs(60),
            },
        )]);
        let mut stream = connect(&server, "GET", "/f", &[]);
        let (head, _) = read_until_body(&mut stream);
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(server.requests(), vec![log("/f", None, 200)]);
        let started = Instant::now();
        drop(server);
        let took = started.elapsed();
        // Promptly = without waiting out the 60 s delay (the handler looks every POLL); the
        // bound leaves a loaded machine plenty of room and still catches a handler that waits.
        assert!(took < Duration::from_secs(10), "drop took {took:?}");
        let mut rest = Vec::new();
        assert_eq!(read_all(&mut stream, &mut rest), End::Eof);
        assert!(rest.is_empty());
    }

    #[test]
    fn drop_returns_promptly_with_an_idle_connection_and_a_stalled_download() {
        let server = Server::start(vec![("/big", Behavior::Ok(pattern(32 << 20)))]);
        // Connected but never sends a request.
        let mut idle = TcpStream::connect(server.addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Sends a request but does not read the 32 MiB answer: the server blocks writing.
        let mut stalled = connect(&server, "GET", "/big", &[]);
        let _ = read_until_body(&mut stalled);
        thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        drop(server);
        let took = started.elapsed();
        // A drop that waited for the idle client would take REQUEST_TIMEOUT (10 s).
        assert!(took < Duration::from_secs(5), "drop took {took:?}");
        let mut nothing = Vec::new();
        assert_eq!(read_all(&mut idle, &mut nothing), End::Eof);
        assert!(nothing.is_empty());
    }

    #[test]
    fn a_slow_request_does_not_hold_up_others() {
        let body = pattern(1000);
        let server = Arc::new(Server::start(vec![
            (
                "/slow",
                Behavior::Slow {
                    body: pattern(10),
                    delay: Duration::from_secs(30),
                },
            ),
            ("/f", Behavior::Ok(body.clone())),
        ]));
        let mut slow = connect(&server, "GET", "/slow", &[]);
        let _ = read_until_body(&mut slow);
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let server = Arc::clone(&server);
                thread::spawn(move || get_from(&server, "/f", i * 100))
            })
            .collect();
        for (i, client) in clients.into_iter().enumerate() {
            let r = client.join().unwrap();
            assert_eq!(r.body, &body[i * 100..]);
        }
        assert_eq!(server.requests().len(), 9);
    }

    #[test]
    fn ok_file_streams_from_disk_with_ranges() {
        let body = pattern(3 * CHUNK + 12_345);
        let path = std::env::temp_dir().join(format!("kubestick-http-server-{}.bin", std::process::id()));
        std::fs::write(&path, &body).unwrap();
        let missing = path.with_extension("missing");
        let server = Server::start(vec![
            ("/file", Behavior::OkFile(path.clone())),
            ("/missing", Behavior::OkFile(missing)),
        ]);
        let whole = get(&server, "/file");
        let tail = get_from(&server, "/file", CHUNK as u64 + 7);
        let past = get_from(&server, "/file", body.len() as u64);
        let head = request(&server, "HEAD", "/file", &[]);
        let gone = get(&server, "/missing");
        std::fs::remove_file(&path).unwrap();

        assert_eq!(whole.status, 200);
        assert_eq!(whole.content_length(), Some(body.len()));
        assert!(whole.body == body, "whole file differs");
        assert_eq!(tail.status, 206);
        let expected_range = format!("bytes {}-{}/{}", CHUNK + 7, body.len() - 1, body.len());
        assert_eq!(tail.header("content-range"), Some(expected_range.as_str()));
        assert!(tail.body == body[CHUNK + 7..], "tail differs");
        assert_eq!(past.status, 416);
        assert_eq!((head.status, head.content_length()), (200, Some(body.len())));
        assert!(head.body.is_empty());
        assert_eq!(gone.status, 500);
    }

    #[test]
    fn request_log_records_path_range_and_status_in_order() {
        let server = Server::start(vec![("/a", Behavior::Ok(pattern(10))), ("/b", Behavior::Status(500))]);
        assert!(server.requests().is_empty());
        get(&server, "/a");
        get_from(&server, "/a", 4);
        get(&server, "/a?cache=no");
        get(&server, "/b");
        get_from(&server, "/zzz", 1);
        request(&server, "HEAD", "/a", &[]);
        assert_eq!(
            server.requests(),
            vec![
                log("/a", None, 200),
                log("/a", Some(4), 206),
                log("/a", None, 200),
                log("/b", None, 500),
                log("/zzz", Some(1), 404),
                log("/a", None, 200),
            ]
        );
    }

    #[test]
    fn a_client_that_leaves_without_a_request_is_not_logged() {
        let server = Server::start(vec![("/a", Behavior::Ok(pattern(10)))]);
        drop(TcpStream::connect(server.addr).unwrap());
        let mut partial = TcpStream::connect(server.addr).unwrap();
        partial.write_all(b"GET /a HTTP/1.1\r\n").unwrap();
        drop(partial);
        get(&server, "/a");
        assert_eq!(server.requests(), vec![log("/a", None, 200)]);
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn a_path_given_twice_is_refused() {
        Server::start(vec![("/a", Behavior::Status(200)), ("/a", Behavior::Status(404))]);
    }
}

//! Client side of server-sent event streams, shared by the streaming benchmark modes
//! (`watch-fanout`, `sse-fanout`): an incremental `text/event-stream` parser, opening one
//! stream on its own HTTP/1 connection, and small helpers (error log, quantiles, fd limit).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;

use crate::Config;

/// A single SSE line may not grow beyond this (protects against a runaway stream).
pub const MAX_SSE_LINE: usize = 16 << 20;
/// Read buffer of each stream's connection.
const READ_BUF: usize = 32 << 10;

// ---------------------------------------------------------------------------------------------
// Parsing

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field, `message` when absent.
    pub event: String,
    /// The last `id:` seen on the stream so far (ids persist across events).
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental `text/event-stream` parser: feed it body chunks as they arrive (split anywhere,
/// even inside a UTF-8 sequence), get complete events back. Lines end in `\n` or `\r\n`
/// (a lone `\r` is not treated as a line end); `:` lines are comments.
///
/// Complete lines are parsed straight from the chunk; only an unfinished last line is copied
/// into the internal buffer (the fan-out benchmarks push a lot of bytes through this).
#[derive(Default)]
pub struct SseParser {
    /// The unfinished last line.
    buf: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Parses `chunk`, appending every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> anyhow::Result<()> {
        let mut rest = chunk;
        if !self.buf.is_empty() {
            let Some(pos) = find_newline(rest) else {
                self.buf.extend_from_slice(rest);
                return self.check_len();
            };
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..pos]);
            self.line(&line, out);
            line.clear();
            self.buf = line;
            rest = &rest[pos + 1..];
        }
        while let Some(pos) = find_newline(rest) {
            self.line(&rest[..pos], out);
            rest = &rest[pos + 1..];
        }
        self.buf.extend_from_slice(rest);
        self.check_len()
    }

    fn check_len(&self) -> anyhow::Result<()> {
        ensure!(
            self.buf.len() <= MAX_SSE_LINE,
            "SSE line longer than {MAX_SSE_LINE} bytes"
        );
        Ok(())
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    id: self.id.clone(),
                    data,
                });
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // `from_utf8` has an ASCII fast path; `from_utf8_lossy` checks byte by byte.
        let value = match std::str::from_utf8(value) {
            Ok(v) => Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"id" => self.id = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            _ => {}
        }
    }
}

/// Index of the first `\n` in `s`, eight bytes at a time.
fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    // Nonzero exactly when some byte of `word` is `\n`.
    let hit = |word: &[u8]| {
        let bytes: [u8; 8] = word.try_into().expect("8-byte slice");
        let x = u64::from_le_bytes(bytes) ^ NL;
        x.wrapping_sub(LO) & !x & HI
    };
    let mut skipped = 0;
    // 32 bytes per step while there is no newline, then 8, then one by one.
    for block in s.chunks_exact(32) {
        if hit(&block[..8]) | hit(&block[8..16]) | hit(&block[16..24]) | hit(&block[24..]) != 0 {
            break;
        }
        skipped += 32;
    }
    for word in s[skipped..].chunks_exact(8) {
        if hit(word) != 0 {
            break;
        }
        skipped += 8;
    }
    s[skipped..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| p + skipped)
}

// ---------------------------------------------------------------------------------------------
// Opening a stream

/// Everything needed to open one stream on its own connection.
pub struct StreamRequest {
    pub addr: SocketAddr,
    host: HeaderValue,
    method: Method,
    /// Path and query, including any prefix of `--url`.
    path: String,
    auth: HeaderValue,
    /// Sent as `application/json` when present.
    json_body: Option<Bytes>,
    pub timeout: Duration,
}

impl StreamRequest {
    /// A request to `{--url}{path}` with the bearer token; resolves the (loopback) target.
    pub async fn new(
        cfg: &Config,
        method: Method,
        path: &str,
        json_body: Option<Bytes>,
    ) -> anyhow::Result<Self> {
        let url: Uri = cfg.target.base.parse().context("base URL")?;
        let authority = url.authority().context("base URL has no host")?;
        let prefix = url.path().trim_end_matches('/');
        let mut auth = HeaderValue::try_from(format!("Bearer {}", cfg.token))
            .context("the token contains characters not allowed in a header")?;
        auth.set_sensitive(true);
        Ok(Self {
            addr: resolve(&cfg.target.host, cfg.target.port).await?,
            host: HeaderValue::from_str(authority.as_str()).context("host header")?,
            method,
            path: format!("{prefix}{path}"),
            auth,
            json_body,
            timeout: cfg.timeout,
        })
    }

    fn build(&self) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "text/event-stream");
        if self.json_body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(self.json_body.clone().unwrap_or_default()))
    }
}

/// Aborts the spawned connection task when dropped.
pub struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    pub fn new(handle: AbortHandle) -> Self {
        Self(handle)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open stream: the response body, and the connection it lives on (closed when dropped).
pub struct OpenStream {
    pub body: Incoming,
    pub conn: AbortOnDrop,
}

/// Where opening a stream failed; each mode maps these to its own error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenStage {
    Build,
    Connect,
    Handshake,
    /// No response head within the timeout.
    Timeout,
    Transport,
    /// A status other than 200 (and other than 503/429, which are retried).
    Status,
}

/// Error kinds a stream reader reports, prefixed per mode (`sub_…`, `watch_…`).
pub struct StreamKinds {
    pub closed: &'static str,
    pub body: &'static str,
    pub bad_event: &'static str,
}

/// Reads the next chunk of `body` into `events` (complete events only). `Ok(false)` when `stop`
/// changed first: the caller should finish.
pub async fn next_events(
    body: &mut Incoming,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    parser: &mut SseParser,
    events: &mut Vec<SseEvent>,
    kinds: &StreamKinds,
) -> Result<bool, (&'static str, String)> {
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => return Ok(false),
        };
        let frame = match frame {
            None => return Err((kinds.closed, "the server ended the stream".to_owned())),
            Some(Err(e)) => return Err((kinds.body, e.to_string())),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser
            .feed(&data, events)
            .map_err(|e| (kinds.bad_event, e.to_string()))?;
        return Ok(true);
    }
}

/// Opens the stream on a new HTTP/1 connection and waits for a `200` head. `503` and `429`
/// answers are retried (counted in `retries`) for as long as the caller lets this run: wrap it
/// in a timeout or abort the task.
pub async fn open_stream(
    req: &StreamRequest,
    idx: usize,
    retries: &AtomicU64,
) -> Result<OpenStream, (OpenStage, String)> {
    loop {
        let stream = tokio::time::timeout(req.timeout, tokio::net::TcpStream::connect(req.addr))
            .await
            .map_err(|_| (OpenStage::Connect, "connect timed out".to_owned()))?
            .map_err(|e| (OpenStage::Connect, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        // A fixed read buffer: hyper's adaptive one grows to hundreds of KiB under a busy
        // stream and is reallocated as it goes, and every fresh allocation costs page faults.
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUF))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| (OpenStage::Handshake, e.to_string()))?;
        let conn = AbortOnDrop::new(tokio::spawn(conn).abort_handle());
        let request = req.build().map_err(|e| (OpenStage::Build, e.to_string()))?;
        let resp = tokio::time::timeout(req.timeout, sender.send_request(request))
            .await
            .map_err(|_| (OpenStage::Timeout, "no response head in time".to_owned()))?
            .map_err(|e| (OpenStage::Transport, e.to_string()))?;
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(OpenStream {
                body: resp.into_body(),
                conn,
            });
        }
        let body = tokio::time::timeout(req.timeout, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            // Overloaded or rate limited: back off and retry until the open phase gives up.
            retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100 + (idx % 100) as u64)).await;
            continue;
        }
        return Err((
            OpenStage::Status,
            format!("stream open answered {status}: {body}"),
        ));
    }
}

/// Resolves the target (already checked to be loopback) to one socket address.
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let addr = tokio::net::lookup_host((host, port))
        .await
        .context("resolving the target")?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} did not resolve"))?;
    ensure!(addr.ip().is_loopback(), "refusing: {addr} is not loopback");
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Raw streams (`sse-fanout`): hand-written HTTP/1.1 on a tokio `TcpStream`, chunked decoding
// and event counting straight from one reusable read buffer, nothing allocated per event.

/// Largest response head accepted from the server.
const MAX_HEAD: usize = 16 << 10;
/// Bytes of each event kept for a look at its fields (the rest is only scanned for its end).
pub const EVENT_HEAD: usize = 512;

/// A `GET` of an event stream, written by hand (request line, `Host`, bearer token, `Accept`).
pub struct RawRequest {
    pub addr: SocketAddr,
    request: Vec<u8>,
    pub timeout: Duration,
}

impl RawRequest {
    /// `GET {--url}{path}` with the bearer token; resolves the (loopback) target.
    pub async fn get(cfg: &Config, path: &str) -> anyhow::Result<Self> {
        let url: Uri = cfg.target.base.parse().context("base URL")?;
        let authority = url.authority().context("base URL has no host")?;
        let prefix = url.path().trim_end_matches('/');
        // The same check hyper makes: no CR, LF or other control bytes in a header.
        HeaderValue::try_from(format!("Bearer {}", cfg.token))
            .context("the token contains characters not allowed in a header")?;
        ensure!(
            !path.bytes().any(|b| b.is_ascii_control() || b == b' '),
            "the stream path contains spaces or control characters"
        );
        let request = format!(
            "GET {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\n\r\n",
            cfg.token
        );
        Ok(Self {
            addr: resolve(&cfg.target.host, cfg.target.port).await?,
            request: request.into_bytes(),
            timeout: cfg.timeout,
        })
    }
}

/// How the body of an open raw stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked` (what the server sends for a stream).
    Chunked,
    /// Neither chunked nor a length: the body runs until the connection closes.
    UntilClose,
}

/// An open raw stream: the connection, and the body bytes that came with the head.
pub struct RawStream {
    pub conn: tokio::net::TcpStream,
    pub framing: Framing,
    /// Body bytes read together with the response head.
    pub leftover: Vec<u8>,
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_type: Option<String>,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// Parses an HTTP/1.1 response head (everything before the blank line, without it).
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("not an HTTP/1 status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut out = ResponseHead {
        status,
        content_type: None,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            out.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            out.content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length: {value:?}"))?,
            );
        }
    }
    Ok(out)
}

/// Opens the stream on a new connection and waits for a `200` head with
/// `content-type: text/event-stream`. `503` and `429` answers are retried (counted in
/// `retries`) for as long as the caller lets this run: wrap it in a timeout or abort the task.
pub async fn open_raw_stream(
    req: &RawRequest,
    idx: usize,
    retries: &AtomicU64,
) -> Result<RawStream, (OpenStage, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let mut conn = tokio::time::timeout(req.timeout, tokio::net::TcpStream::connect(req.addr))
            .await
            .map_err(|_| (OpenStage::Connect, "connect timed out".to_owned()))?
            .map_err(|e| (OpenStage::Connect, e.to_string()))?;
        let _ = conn.set_nodelay(true);
        let head = tokio::time::timeout(req.timeout, async {
            conn.write_all(&req.request).await?;
            let mut buf = Vec::with_capacity(4096);
            loop {
                if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                    return Ok(Some((buf, end)));
                }
                if buf.len() >= MAX_HEAD {
                    return Ok(None);
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
                if conn.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection before the response head",
                    ));
                }
            }
        })
        .await
        .map_err(|_| (OpenStage::Timeout, "no response head in time".to_owned()))?
        .map_err(|e| (OpenStage::Transport, e.to_string()))?;
        let Some((mut buf, end)) = head else {
            return Err((
                OpenStage::Handshake,
                format!("response head longer than {MAX_HEAD} bytes"),
            ));
        };
        let parsed = parse_response_head(&buf[..end]).map_err(|e| (OpenStage::Handshake, e))?;
        buf.drain(..end + 4);
        if parsed.status == 200 {
            let is_sse = parsed
                .content_type
                .as_deref()
                .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
            if !is_sse {
                return Err((
                    OpenStage::Status,
                    format!(
                        "stream answered 200 with content-type {:?}",
                        parsed.content_type
                    ),
                ));
            }
            let framing = if parsed.chunked {
                Framing::Chunked
            } else if parsed.content_length.is_some() {
                return Err((
                    OpenStage::Status,
                    "stream answered 200 with a content-length".to_owned(),
                ));
            } else {
                Framing::UntilClose
            };
            return Ok(RawStream {
                conn,
                framing,
                leftover: buf,
            });
        }
        // An error answer: read what of its body arrives quickly, for the message.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let want = parsed.content_length.unwrap_or(4096).min(4096);
            while buf.len() < want {
                buf.reserve(want - buf.len());
                if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        })
        .await;
        let body = String::from_utf8_lossy(&buf).into_owned();
        if matches!(parsed.status, 503 | 429) {
            // Overloaded or rate limited: back off and retry until the open phase gives up.
            retries.fetch_add(1, Ordering::SeqCst);
            drop(conn);
            tokio::time::sleep(Duration::from_millis(100 + (idx % 100) as u64)).await;
            continue;
        }
        return Err((
            OpenStage::Status,
            format!("stream open answered {}: {body}", parsed.status),
        ));
    }
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body: hands out the data as slices
/// of the input (no copy), whatever the read boundaries.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading the hex size (`digits` so far).
    #[default]
    SizeStart,
    Size {
        value: u64,
        digits: u8,
    },
    /// A chunk extension after `;`, up to the line end.
    Ext {
        value: u64,
    },
    /// `\r` of the size line seen.
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// The last (empty) chunk was seen: the body ended.
    Done,
}

impl Dechunker {
    /// Feeds `input`, calling `data` with every piece of chunk data in order. `Ok(true)` once
    /// the last chunk has been seen (what follows it, trailers included, is ignored).
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<bool, String> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Data { left } => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { left }
                    };
                    continue;
                }
                ChunkState::SizeStart => match hex_digit(b) {
                    Some(d) => ChunkState::Size {
                        value: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(format!("bad chunk size byte {b:#04x}")),
                },
                ChunkState::Size { value, digits } => match (b, hex_digit(b)) {
                    (_, Some(d)) if digits < 15 => ChunkState::Size {
                        value: value << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    (_, Some(_)) => return Err("chunk size too large".to_owned()),
                    (b';' | b' ' | b'\t', _) => ChunkState::Ext { value },
                    (b'\r', _) => ChunkState::SizeLf { value },
                    _ => return Err(format!("bad chunk size byte {b:#04x}")),
                },
                ChunkState::Ext { value } => match b {
                    b'\r' => ChunkState::SizeLf { value },
                    b'\n' => return Err("bare LF in a chunk extension".to_owned()),
                    _ => ChunkState::Ext { value },
                },
                ChunkState::SizeLf { value } => match b {
                    b'\n' if value == 0 => ChunkState::Done,
                    b'\n' => ChunkState::Data { left: value },
                    _ => return Err("chunk size line not ended by CRLF".to_owned()),
                },
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    _ => return Err("chunk data not followed by CRLF".to_owned()),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::SizeStart,
                    _ => return Err("chunk data not followed by CRLF".to_owned()),
                },
            };
            i += 1;
        }
        Ok(self.state == ChunkState::Done)
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Finds the events of a `text/event-stream` body without building them: every event's end
/// (a blank line; lines end in `\n` or `\r\n`) is found with `memchr`, and only its first
/// [`EVENT_HEAD`] bytes are kept, in a fixed buffer, for a look at its fields.
pub struct EventScanner {
    head: [u8; EVENT_HEAD],
    head_len: usize,
    /// Bytes of the current event so far (blank lines excluded).
    event_len: usize,
    /// Bytes of the current line so far (of them, kept in `head`), and its last byte.
    line_len: usize,
    line_kept: usize,
    line_last: u8,
}

impl Default for EventScanner {
    fn default() -> Self {
        Self {
            head: [0; EVENT_HEAD],
            head_len: 0,
            event_len: 0,
            line_len: 0,
            line_kept: 0,
            line_last: 0,
        }
    }
}

impl EventScanner {
    /// Scans `input`; for every event it completes, calls `event(head, truncated)` with the
    /// event's first bytes (its lines with their line ends) and whether there was more.
    /// Events with nothing in them (extra blank lines) are not reported.
    pub fn feed(&mut self, mut input: &[u8], mut event: impl FnMut(&[u8], bool)) {
        while !input.is_empty() {
            let Some(pos) = memchr::memchr(b'\n', input) else {
                self.line_kept += self.keep(input);
                self.line_len += input.len();
                self.line_last = input[input.len() - 1];
                return;
            };
            let len = self.line_len + pos;
            let last = if pos > 0 {
                input[pos - 1]
            } else {
                self.line_last
            };
            if len == 0 || (len == 1 && last == b'\r') {
                // A blank line (its `\r` may have been kept already): the event ends.
                self.head_len -= self.line_kept;
                self.event_len -= self.line_len;
                if self.event_len > 0 {
                    event(&self.head[..self.head_len], self.event_len > self.head_len);
                }
                self.head_len = 0;
                self.event_len = 0;
            } else {
                self.keep(&input[..=pos]);
            }
            self.line_len = 0;
            self.line_kept = 0;
            input = &input[pos + 1..];
        }
    }

    /// Counts `bytes` in the event and keeps what fits of them; returns how many were kept.
    fn keep(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(EVENT_HEAD - self.head_len);
        self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
        self.head_len += n;
        self.event_len += bytes.len();
        n
    }
}

/// The fields of an event's head (as given by [`EventScanner`]): `event` (`message` when
/// absent), the last `id`, and the start of the first `data` line (cut where the head was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHead<'a> {
    pub event: &'a [u8],
    pub id: Option<&'a [u8]>,
    pub data: &'a [u8],
}

/// Splits an event head into its fields, up to the first `data` line (the fields after it are
/// not looked at); lines may end in `\r\n`; a cut last line counts as it is.
pub fn event_fields(head: &[u8]) -> EventHead<'_> {
    let mut out = EventHead {
        event: b"message",
        id: None,
        data: b"",
    };
    let mut rest = head;
    while !rest.is_empty() {
        let (raw, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => out.event = value,
            b"id" => out.id = Some(value),
            b"data" => {
                out.data = value;
                break;
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Error counts by kind, with the first message of each kind.
#[derive(Default)]
pub struct ErrorLog {
    pub total: u64,
    pub kinds: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, String>,
}

impl ErrorLog {
    pub fn add(&mut self, kind: &str, n: u64, sample: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.total += n;
        *self.kinds.entry(kind.to_owned()).or_default() += n;
        self.samples.entry(kind.to_owned()).or_insert_with(sample);
    }

    /// `errors: N`, then one line per kind.
    pub fn print(&self) {
        println!("errors: {}", self.total);
        for (kind, n) in &self.kinds {
            println!("  {kind:<28} {n}");
        }
    }

    /// Adds every kind of `other`.
    pub fn merge(&mut self, other: Self) {
        for (kind, n) in other.kinds {
            let sample = other.samples.get(&kind).cloned().unwrap_or_default();
            self.add(&kind, n, || sample);
        }
    }
}

/// Locks, ignoring poisoning (the data are counters).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Nearest-rank quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Soft `RLIMIT_NOFILE` of this process (Linux), if it can be read.
pub fn nofile_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    fn ev(event: &str, id: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.to_owned(),
            id: id.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    const STREAM: &str = "event: snapshot\nid: abc\ndata: {\"watch_id\":1,\"seq\":1,\"rows\":[[0]]}\n\n\
                          : keep-alive comment\n\n\
                          event: heartbeat\ndata: {\"watch_id\":1,\"seq\":1}\n\n\
                          event: update\r\nid: def\r\ndata: {\"rows\":[[7]],\r\ndata: \"x\":\"é\"}\r\n\r\n";

    #[test]
    fn sse_events_are_parsed() {
        let want = vec![
            ev(
                "snapshot",
                Some("abc"),
                r#"{"watch_id":1,"seq":1,"rows":[[0]]}"#,
            ),
            ev("heartbeat", Some("abc"), r#"{"watch_id":1,"seq":1}"#),
            ev("update", Some("def"), "{\"rows\":[[7]],\n\"x\":\"é\"}"),
        ];
        assert_eq!(parse_chunks(&[STREAM.as_bytes()]), want);
        // Split at every possible byte boundary, including inside `é` and `\r\n`.
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_chunks(&[&bytes[..cut], &bytes[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        // Three pieces: a line may span several chunks.
        for cut in (0..bytes.len()).step_by(7) {
            for cut2 in (cut..bytes.len()).step_by(5) {
                assert_eq!(
                    parse_chunks(&[&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]]),
                    want,
                    "cuts at {cut}, {cut2}"
                );
            }
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_chunks(&singles), want);
    }

    #[test]
    fn sse_edge_cases() {
        // No trailing blank line yet: nothing is dispatched.
        assert!(parse_chunks(&[b"event: update\ndata: 1\n"]).is_empty());
        // No event field: `message`; no space after the colon; unknown fields ignored.
        assert_eq!(
            parse_chunks(&[b"data:x\nretry: 5\nfoo\n\n"]),
            vec![ev("message", None, "x")]
        );
        // Only one space is stripped; later colons belong to the value.
        assert_eq!(
            parse_chunks(&[b"data:  a:b\n\n"]),
            vec![ev("message", None, " a:b")]
        );
        // An event with no data is not dispatched (per the SSE spec).
        assert!(parse_chunks(&[b"event: heartbeat\n\n"]).is_empty());
        // Invalid UTF-8 is replaced, not fatal.
        assert_eq!(
            parse_chunks(&[b"data: \xff\n\n"]),
            vec![ev("message", None, "\u{fffd}")]
        );
        // The buffer does not grow without bound, whether in one chunk or many.
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_SSE_LINE + 1];
        assert!(p.feed(&big, &mut out).is_err());
        let mut p = SseParser::default();
        p.feed(b"data: ", &mut out).unwrap();
        assert!(p.feed(&big, &mut out).is_err());
    }

    #[test]
    fn newlines_are_found_at_every_offset() {
        for len in 0..100 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                // Bytes that differ from `\n` (0x0a) by one bit must not be mistaken for it.
                for (i, b) in s.iter_mut().enumerate() {
                    *b = [b'a', 0x0b, 0x8a, 0x09, 0x0e, 0x2a][i % 6];
                }
                let want = if at < len {
                    s[at] = b'\n';
                    if at + 1 < len {
                        s[at + 1] = b'\n';
                    }
                    Some(at)
                } else {
                    None
                };
                assert_eq!(find_newline(&s), want, "len {len}, newline at {at}");
            }
        }
    }

    /// The events the scanner finds in `chunks`, with their heads.
    fn scan(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut scanner = EventScanner::default();
        let mut out = Vec::new();
        for c in chunks {
            scanner.feed(c, |head, cut| out.push((head.to_vec(), cut)));
        }
        out
    }

    #[test]
    fn the_scanner_finds_every_event_wherever_the_input_splits() {
        let bytes = STREAM.as_bytes();
        let want = scan(&[bytes]);
        // As many events as the full parser finds, plus the comment-only one it drops.
        assert_eq!(want.len(), 4);
        assert_eq!(want[1].0, b": keep-alive comment\n");
        let fields: Vec<EventHead<'_>> = want.iter().map(|(h, _)| event_fields(h)).collect();
        assert_eq!(fields[0].event, b"snapshot");
        assert_eq!(fields[0].id, Some(&b"abc"[..]));
        assert_eq!(fields[0].data, br#"{"watch_id":1,"seq":1,"rows":[[0]]}"#);
        assert_eq!(fields[2].event, b"heartbeat");
        assert_eq!(fields[2].id, None);
        assert_eq!(fields[3].event, b"update");
        assert_eq!(fields[3].id, Some(&b"def"[..]));
        assert_eq!(fields[3].data, br#"{"rows":[[7]],"#);
        assert!(want.iter().all(|(_, cut)| !cut));
        for cut in 0..bytes.len() {
            assert_eq!(scan(&[&bytes[..cut], &bytes[cut..]]), want, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan(&singles), want);
        // A long event: only its head is kept, and it says so.
        let mut long = b"data: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 3 * EVENT_HEAD));
        long.extend_from_slice(b"\r\n\r\n\n\nevent: b\ndata: y\n\n");
        for step in [1, 7, 100, long.len()] {
            let parts: Vec<&[u8]> = long.chunks(step).collect();
            let got = scan(&parts);
            assert_eq!(got.len(), 2, "step {step}");
            assert_eq!(got[0].0.len(), EVENT_HEAD);
            assert!(got[0].1);
            assert_eq!(got[1], (b"event: b\ndata: y\n".to_vec(), false));
        }
        // Blank lines alone are no events, whether `\r\n` is split or not.
        assert!(scan(&[b"\r", b"\n\r\n\n"]).is_empty());
    }

    #[test]
    fn chunked_bodies_are_decoded_wherever_the_input_splits() {
        let wire = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let want = b"helloabcdefghijklmnopqrstuvwxyz".to_vec();
        for step in 1..=wire.len() {
            let mut d = Dechunker::default();
            let mut got = Vec::new();
            let mut done = false;
            for part in wire.chunks(step) {
                done = d.feed(part, |b| got.extend_from_slice(b)).unwrap();
            }
            assert!(done, "step {step}");
            assert_eq!(got, want, "step {step}");
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"2\r\nabX",
            b"2\r\nab\rX",
            b"1234567890abcdef0\r\n",
        ] {
            let mut d = Dechunker::default();
            assert!(d.feed(bad, |_| {}).is_err(), "{bad:?}");
        }
        // Not done before the last chunk.
        let mut d = Dechunker::default();
        assert!(!d.feed(b"1\r\na\r\n", |_| {}).unwrap());
    }

    #[test]
    fn response_heads_are_parsed() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     Transfer-Encoding: chunked\r\ncache-control: no-cache";
        assert_eq!(
            parse_response_head(head),
            Ok(ResponseHead {
                status: 200,
                content_type: Some("text/event-stream".to_owned()),
                chunked: true,
                content_length: None,
            })
        );
        let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12";
        let h = parse_response_head(head).unwrap();
        assert_eq!(
            (h.status, h.chunked, h.content_length),
            (503, false, Some(12))
        );
        assert!(parse_response_head(b"HTTP/2 200").is_err());
        assert!(parse_response_head(b"HTTP/1.1 abc").is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nno colon").is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: x").is_err());
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(25.0));
        assert_eq!(quantile(&v, 0.99), Some(50.0));
        assert_eq!(quantile(&v, 1.0), Some(50.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn error_logs_merge() {
        let mut a = ErrorLog::default();
        a.add("x", 2, || "first x".to_owned());
        a.add("none", 0, || "ignored".to_owned());
        let mut b = ErrorLog::default();
        b.add("x", 1, || "second x".to_owned());
        b.add("y", 3, || "y".to_owned());
        a.merge(b);
        assert_eq!(a.total, 6);
        assert_eq!(a.kinds.get("x"), Some(&3));
        assert_eq!(a.kinds.get("y"), Some(&3));
        assert!(!a.kinds.contains_key("none"));
        assert_eq!(a.samples.get("x").map(String::as_str), Some("first x"));
    }
}

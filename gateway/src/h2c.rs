//! HTTP/2 over cleartext TCP by upgrade (RFC 7540 §3.2): an HTTP/1.1
//! request carrying `Upgrade: h2c` and `HTTP2-Settings` is answered `101
//! Switching Protocols`, and the connection goes on as HTTP/2 with that
//! request as stream 1, as `curl --http2` and Knative's ingresses expect.
//!
//! hyper's HTTP/2 server has no way to adopt a request it did not read,
//! so the request is handed to it as the client would have sent it over
//! HTTP/2: after the client's connection preface and first SETTINGS frame
//! (read here), the server sees a HEADERS frame for stream 1 encoded from
//! the request, then the rest of the client's bytes. A request that does
//! not qualify (a body, more than one `HTTP2-Settings`, a header block
//! over one frame) is served as HTTP/1.1, as the RFC allows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload a peer must accept before SETTINGS say more.
const MAX_FRAME: usize = 16_384;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A request that asked for the upgrade and qualifies for it.
pub struct Upgrade {
    /// Stream 1's HEADERS frame, whole.
    headers_frame: Vec<u8>,
    on: hyper::upgrade::OnUpgrade,
}

fn tokens<'a>(
    req: &'a Request<Incoming>,
    name: hyper::header::HeaderName,
) -> impl Iterator<Item = String> + 'a {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
}

/// The upgrade `req` asks for, if it asks for h2c and qualifies; takes the
/// connection's upgrade handle from it.
pub fn take(req: &mut Request<Incoming>) -> Option<Upgrade> {
    if req.version() != Version::HTTP_11 || !tokens(req, UPGRADE).any(|t| t == "h2c") {
        return None;
    }
    let connection: Vec<String> = tokens(req, CONNECTION).collect();
    if !connection.iter().any(|t| t == "upgrade")
        || !connection.iter().any(|t| t == "http2-settings")
    {
        return None;
    }
    // Exactly one HTTP2-Settings, a base64url SETTINGS payload.
    let mut settings = req.headers().get_all("http2-settings").iter();
    let (Some(s), None) = (settings.next(), settings.next()) else {
        return None;
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    if !matches!(engine.decode(s.as_bytes()), Ok(p) if p.len().is_multiple_of(6)) {
        return None;
    }
    // The whole request must be read before the switch: only bodiless
    // requests are upgraded.
    let bodiless = req.headers().get(TRANSFER_ENCODING).is_none()
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if !bodiless || req.method() == hyper::Method::CONNECT {
        return None;
    }
    let block = header_block(req, &connection);
    if block.len() > MAX_FRAME {
        return None;
    }
    let mut headers_frame =
        frame_header(block.len(), FRAME_HEADERS, END_STREAM | END_HEADERS, 1).to_vec();
    headers_frame.extend_from_slice(&block);
    Some(Upgrade {
        headers_frame,
        on: hyper::upgrade::on(req),
    })
}

/// The `101 Switching Protocols` that answers an upgrade.
pub fn switching<B: Default>() -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("h2c"));
    r
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// One "literal header field without indexing, new name" (RFC 7541
/// §6.2.2), strings as raw octets: nothing enters the dynamic table.
fn hpack_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The request's header block as HTTP/2 carries it (RFC 9113 §8.3):
/// pseudo-headers first, `Host` as `:authority`, and none of the
/// connection-specific fields (`hop`: the ones its `Connection` names).
fn header_block(req: &Request<Incoming>, hop: &[String]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_field(&mut b, b":method", req.method().as_str().as_bytes());
    hpack_field(&mut b, b":scheme", b"http");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    hpack_field(&mut b, b":path", path.as_bytes());
    if let Some(host) = req.headers().get(hyper::header::HOST) {
        hpack_field(&mut b, b":authority", host.as_bytes());
    }
    for (name, value) in req.headers() {
        let n = name.as_str();
        let connection_specific = matches!(
            n,
            "host"
                | "connection"
                | "upgrade"
                | "http2-settings"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
        ) || (n == "te" && value.as_bytes() != b"trailers")
            || hop.iter().any(|h| h == n);
        if !connection_specific {
            hpack_field(&mut b, n.as_bytes(), value.as_bytes());
        }
    }
    b
}

/// Bytes to hand out before the inner stream's.
struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// After the 101: reads the client's preface and first SETTINGS frame
/// (within `wait`), then returns the connection as an HTTP/2 server
/// should read it, stream 1 included. `None` if the client does not
/// speak HTTP/2 (the connection is then dropped).
pub async fn connection(
    up: Upgrade,
    wait: Duration,
) -> Option<TokioIo<impl AsyncRead + AsyncWrite + Unpin + Send + 'static>> {
    let mut io = TokioIo::new(up.on.await.ok()?);
    let start = async {
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.ok()?;
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if &preface != PREFACE
            || head[3] != FRAME_SETTINGS
            || stream != 0
            || len > MAX_FRAME
            || !len.is_multiple_of(6)
        {
            return None;
        }
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.ok()?;
        let mut prefix = Vec::with_capacity(24 + 9 + len + up.headers_frame.len());
        prefix.extend_from_slice(PREFACE);
        prefix.extend_from_slice(&head);
        prefix.extend_from_slice(&payload);
        prefix.extend_from_slice(&up.headers_frame);
        Some(prefix)
    };
    let prefix = tokio::time::timeout(wait, start).await.ok()??;
    Some(TokioIo::new(Prefixed {
        prefix,
        at: 0,
        inner: io,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_are_encoded_as_rfc_7541_shows() {
        // RFC 7541 C.1.1-C.1.3: 10 and 1337 with a 5-bit prefix, 42 with 8.
        let mut v = Vec::new();
        hpack_int(&mut v, 0, 5, 10);
        assert_eq!(v, [0x0a]);
        v.clear();
        hpack_int(&mut v, 0, 5, 1337);
        assert_eq!(v, [0x1f, 0x9a, 0x0a]);
        v.clear();
        hpack_int(&mut v, 0, 8, 42);
        assert_eq!(v, [0x2a]);
        // A literal without indexing, new name: 0x00, then each string's
        // length and octets (RFC 7541 §6.2.2).
        v.clear();
        hpack_field(&mut v, b"custom-key", b"custom-header");
        assert_eq!(&v[..2], [0x00, 0x0a]);
        assert_eq!(v[12], 0x0d);
        assert_eq!(v.len(), 1 + 1 + 10 + 1 + 13);
    }

    #[test]
    fn frame_headers_carry_length_type_flags_and_stream() {
        assert_eq!(
            frame_header(0x012345, 1, 5, 1),
            [0x01, 0x23, 0x45, 1, 5, 0, 0, 0, 1]
        );
    }
}

//! `greet`: an HTTP function (CGI contract, see docs/function-contract.md).
//! `GET /greet?name=ada` answers `hello, ada`; other paths answer 404; a
//! POST body is echoed back after the greeting; `sleep_ms=N` waits first;
//! `chunks=N&gap_ms=M` then writes N more lines, M ms apart, each flushed
//! (a response that streams); `/count` answers how many requests this
//! instance has served.
use std::io::Read;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts requests this instance has served: `/count` shows that every
/// request gets a fresh instance (it always answers 1).
static SERVED: AtomicU64 = AtomicU64::new(0);

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    if path == "/count" {
        print!("Content-Type: text/plain\r\n\r\ncount {served}\n");
        return;
    }
    if path != "/" && path != "/greet" {
        print!("Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such path: {path}\n");
        return;
    }
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .filter(|n| !n.is_empty())
        .unwrap_or("world");
    if let Some(ms) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let mut body = String::new();
    std::io::stdin()
        .read_to_string(&mut body)
        .expect("reading the body");
    let revision = std::env::var("K_REVISION").unwrap_or_default();
    print!("Content-Type: text/plain\r\nX-Revision: {revision}\r\n\r\nhello, {name}\n{body}");
    let param = |k: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (chunks, gap) = (param("chunks="), param("gap_ms="));
    let mut out = std::io::stdout();
    let _ = std::io::Write::flush(&mut out);
    for i in 0..chunks {
        std::thread::sleep(std::time::Duration::from_millis(gap));
        let _ = std::io::Write::write_all(&mut out, format!("chunk {i}\n").as_bytes());
        let _ = std::io::Write::flush(&mut out);
    }
}

//! `flood STREAM`: writes to stdout or stderr in a loop, forever (a
//! hostile function for the gateway's output limits).
use std::io::Write;

fn main() {
    let stream = std::env::args().nth(1).unwrap_or_default();
    let chunk = vec![b'x'; 64 * 1024];
    if stream == "stdout" {
        print!("Content-Type: text/plain\r\n\r\n");
    }
    loop {
        let r = if stream == "stdout" {
            std::io::stdout().write_all(&chunk)
        } else {
            std::io::stderr().write_all(&chunk)
        };
        if r.is_err() {
            std::process::exit(1);
        }
    }
}

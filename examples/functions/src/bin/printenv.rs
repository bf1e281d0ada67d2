//! `printenv`: an HTTP function that answers with its environment, one
//! sorted `K=V` line each (what the CGI contract gave it), and its stdin
//! after a blank line.
use std::io::{Read, Write};

fn main() {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("reading stdin");
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    let mut out = String::from("Content-Type: text/plain\r\n\r\n");
    for (k, v) in env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push('\n');
    let mut stdout = std::io::stdout();
    stdout.write_all(out.as_bytes()).expect("writing stdout");
    stdout.write_all(&body).expect("writing stdout");
}

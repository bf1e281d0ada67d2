//! `echo`: copies stdin to stdout, then lists its environment on stderr as
//! `K=V` lines, sorted.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("reading stdin");
    std::io::stdout().write_all(&input).expect("writing stdout");
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        eprintln!("{k}={v}");
    }
}

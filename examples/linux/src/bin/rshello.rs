//! `rshello`: a static Rust (musl) program: its args, an environment
//! variable, stdin to stdout, and an exit status from its first argument
//! (`exit=N`), or a panic (`panic`).
use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("hello, {}", args.join(" "));
    if let Ok(v) = std::env::var("GREETING") {
        println!("GREETING={v}");
    }
    if args.iter().any(|a| a == "stdin") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).unwrap();
        print!("stdin: {s}");
    }
    std::io::stdout().flush().unwrap();
    if args.iter().any(|a| a == "panic") {
        panic!("asked to panic");
    }
    if let Some(code) = args.iter().find_map(|a| a.strip_prefix("exit=")) {
        std::process::exit(code.parse().unwrap());
    }
}

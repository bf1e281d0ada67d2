//! `fib [N]`: computes the N-th Fibonacci number the slow, recursive way
//! (CPU work). With `MODE=json` it reads `{"n": N}` from stdin and writes
//! `{"n": N, "fib": F}`.
use std::io::Read;

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn main() {
    if std::env::var("MODE").as_deref() == Ok("json") {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .expect("reading stdin");
        let v: serde_json::Value = match serde_json::from_str(&input) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fib: invalid JSON input: {e}");
                std::process::exit(2);
            }
        };
        let Some(n) = v.get("n").and_then(|n| n.as_u64()).filter(|n| *n <= 90) else {
            eprintln!("fib: input needs \"n\", an integer from 0 to 90");
            std::process::exit(2);
        };
        println!("{}", serde_json::json!({ "n": n, "fib": fib(n) }));
        return;
    }
    let n: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 25,
        Some(Ok(n)) if n <= 90 => n,
        Some(_) => {
            eprintln!("fib: N must be an integer from 0 to 90");
            std::process::exit(2);
        }
    };
    println!("fib({n}) = {}", fib(n));
}

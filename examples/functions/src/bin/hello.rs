//! `hello [NAME...]`: prints "hello, NAME" (default "world").
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = if args.is_empty() {
        "world".to_string()
    } else {
        args.join(" ")
    };
    println!("hello, {name}");
}

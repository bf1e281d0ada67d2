//! `alloc MIB`: allocates MIB mebibytes, touches every page, and reports.
fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    let sum: u64 = blocks.iter().map(|b| b[b.len() - 1] as u64).sum();
    println!("allocated {mib} MiB (checksum {sum})");
}

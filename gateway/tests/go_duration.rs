//! Knative reads its duration annotations (`window`, `scale-down-delay`,
//! `scale-to-zero-pod-retention-period`) with Go's `time.ParseDuration`.
//! Flint's parser is compared with Go's own, run from a program built with
//! Debian's golang-go (scripts/deps installs it), input by input.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use flint_gateway::manifest::parse_duration;

/// How Go reads each input: `Some(nanoseconds)` or `None` for an error.
fn go_reads(inputs: &[&str]) -> Vec<Option<i128>> {
    let bin = common::go_build("duration");
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in inputs {
        writeln!(stdin, "{i}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Vec<Option<i128>> = text
        .lines()
        .map(|l| l.strip_prefix("ok ").map(|n| n.parse().unwrap()))
        .collect();
    assert_eq!(got.len(), inputs.len(), "{text}");
    got
}

#[test]
fn durations_read_as_go_reads_them() {
    let inputs = [
        "0",
        "1s",
        "60s",
        "1m30s",
        "1h",
        "1.5h",
        "300ms",
        "10us",
        "10\u{b5}s",
        "10\u{3bc}s",
        "1ns",
        "0.1s",
        "1h2m3.5s",
        ".5s",
        "5.s",
        "1.000000001s",
        "0.0000000001s",
        "1.9999999999s",
        "2562047h",
        "2562048h",
        "9999999999h",
        "1e3s",
        "",
        "s",
        "1",
        "1 s",
        " 1s",
        "+1s",
        "-1s",
        "-0",
        "1d",
        "1S",
        "1hm",
        "3m3m",
        "0.s",
        ".s",
        "1..5s",
        "00001s",
        "9223372036854775807ns",
        "9223372036854775808ns",
        "-9223372036854775808ns",
        "2562047h47m16.854775807s",
        "2562047h47m16.854775808s",
        "1.0000000000000000000000001s",
        "0.333333333333h",
        "7.77777777777777m",
        "123456789.123456789ms",
        "1.50000000000000000001h",
    ];
    let go = go_reads(&inputs);
    for (input, go) in inputs.iter().zip(go) {
        let ours = parse_duration(input).map(|d| d.as_nanos() as i128);
        // Negative durations Go reads are out of every range Knative
        // allows: Flint refuses them at once.
        let want = go.filter(|n| *n >= 0);
        assert_eq!(ours, want, "{input:?}: Flint {ours:?}, Go {go:?}");
    }
}

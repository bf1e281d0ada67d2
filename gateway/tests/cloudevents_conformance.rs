//! The CloudEvents conformance cases (cloudevents/conformance, vendored
//! in `tests/cloudevents-conformance/` with their source and licence),
//! sent to the gateway over HTTP: every event of `v1_minimum.yaml` reaches
//! the function with its attributes and its data byte for byte, in binary
//! and in structured mode; every event of the JSON format's
//! `valid-events.json` is accepted and every one of `invalid-events.json`
//! refused with 400, as the spec requires of a receiver.

mod common;

use std::path::PathBuf;

use common::*;
use serde::Deserialize;

fn case_file(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cloudevents-conformance")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// printenv's answer: its environment, then its stdin.
fn seen(body: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let split = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("an environment, then stdin");
    let env = String::from_utf8_lossy(&body[..split])
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    (env, body[split + 2..].to_vec())
}

fn var<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_events_reach_the_function_whole_in_both_modes() {
    let gw = start(&[manifest("events", "printenv", "")], 1 << 20).await;
    let host = "events.default.example.com";
    let yaml = case_file("v1_minimum.yaml");
    let mut cases = 0;
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        let a = &v["ContextAttributes"];
        let text = |k: &str| match &a[k] {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => format!("{:.1}", n.as_f64().unwrap()),
            other => panic!("{k}: {other:?}"),
        };
        let (id, ty, source, ct) = (
            text("id"),
            text("type"),
            text("source"),
            text("datacontenttype"),
        );
        assert_eq!(text("specversion"), "1.0");
        let data = v["Data"].as_str().unwrap().to_string();

        // Binary mode: attributes in ce- headers, the data as the body.
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", id.as_str()),
            ("ce-type", ty.as_str()),
            ("ce-source", source.as_str()),
            ("content-type", ct.as_str()),
        ];
        let (code, head, body) = http_with(gw.addr, host, &headers, data.as_bytes()).await;
        assert_eq!(code, 200, "{id} binary: {head}");
        let (env, stdin) = seen(&body);
        assert_eq!(var(&env, "CE_ID"), Some(id.as_str()), "{id}");
        assert_eq!(var(&env, "CE_TYPE"), Some(ty.as_str()), "{id}");
        assert_eq!(var(&env, "CE_SOURCE"), Some(source.as_str()), "{id}");
        assert_eq!(var(&env, "CE_SPECVERSION"), Some("1.0"), "{id}");
        assert_eq!(
            stdin,
            data.as_bytes(),
            "{id}: binary-mode data byte for byte"
        );

        // Structured mode: the whole event as JSON, JSON data as a value.
        let json_data = ct.starts_with("application/json");
        let mut event = serde_json::json!({
            "specversion": "1.0", "id": id, "type": ty, "source": source,
            "datacontenttype": ct,
        });
        event["data"] = if json_data {
            serde_json::from_str(&data).unwrap()
        } else {
            serde_json::Value::String(data.clone())
        };
        let headers = [(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )];
        let (code, head, body) =
            http_with(gw.addr, host, &headers, event.to_string().as_bytes()).await;
        assert_eq!(code, 200, "{id} structured: {head}");
        let (env, stdin) = seen(&body);
        assert_eq!(var(&env, "CE_ID"), Some(id.as_str()), "{id}");
        if json_data {
            let got: serde_json::Value = serde_json::from_slice(&stdin).unwrap();
            assert_eq!(got, event["data"], "{id}: structured-mode JSON data");
        } else {
            assert_eq!(stdin, data.as_bytes(), "{id}: structured-mode text data");
        }
        cases += 1;
    }
    assert_eq!(cases, 6, "every case of the file ran");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_json_formats_valid_events_are_accepted_and_invalid_ones_refused() {
    let gw = start(&[manifest("events", "printenv", "")], 1 << 20).await;
    let host = "events.default.example.com";
    let headers = [("content-type", "application/cloudevents+json")];
    for (file, valid) in [("valid-events.json", true), ("invalid-events.json", false)] {
        let doc: serde_json::Value = serde_json::from_str(&case_file(file)).unwrap();
        let tests = doc["tests"].as_array().unwrap();
        assert!(tests.len() > 5, "{file}");
        for t in tests {
            let name = t["id"].as_str().unwrap();
            let (code, _, body) =
                http_with(gw.addr, host, &headers, t["event"].to_string().as_bytes()).await;
            if valid {
                assert_eq!(code, 200, "{name}: {}", String::from_utf8_lossy(&body));
            } else {
                assert_eq!(
                    code,
                    400,
                    "{name} was not refused: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
    gw.stop().await;
}

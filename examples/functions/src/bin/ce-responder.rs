//! `ce-responder`: a CloudEvents function. For an event of type T it replies
//! with an event of type `T.reply` whose data wraps the event's data; for a
//! type ending in `.noreply` it accepts the event without a reply (202);
//! for one ending in `.plain` it answers with plain text, no event.
use std::io::Read;

fn main() {
    let ty = std::env::var("CE_TYPE").unwrap_or_default();
    let id = std::env::var("CE_ID").unwrap_or_default();
    let mut data = String::new();
    std::io::stdin()
        .read_to_string(&mut data)
        .expect("reading the event data");
    if ty.ends_with(".noreply") {
        print!("Status: 202 Accepted\r\n\r\n");
        return;
    }
    if ty.ends_with(".plain") {
        print!("Content-Type: text/plain\r\n\r\nnot an event: {data}");
        return;
    }
    let got: serde_json::Value =
        serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    let reply = serde_json::json!({ "got": got, "subject": std::env::var("CE_SUBJECT").ok() });
    print!(
        "Ce-Id: reply-{id}\r\nCe-Source: /flint/ce-responder\r\nCe-Type: {ty}.reply\r\nContent-Type: application/json\r\n\r\n{reply}"
    );
}

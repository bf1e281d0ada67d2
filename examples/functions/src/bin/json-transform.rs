//! `json-transform`: an HTTP function that takes a JSON object and returns
//! it with its keys sorted, string values upper-cased and a `count` of keys.
use std::io::Read;

fn main() {
    let mut body = String::new();
    std::io::stdin()
        .read_to_string(&mut body)
        .expect("reading the body");
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            print!(
                "Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\ninvalid JSON: {e}\n"
            );
            return;
        }
    };
    let Some(obj) = v.as_object() else {
        print!("Status: 422 Unprocessable Entity\r\nContent-Type: text/plain\r\n\r\nexpected a JSON object\n");
        return;
    };
    let mut out = serde_json::Map::new();
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    for k in keys {
        let v = match &obj[k] {
            serde_json::Value::String(s) => serde_json::Value::String(s.to_uppercase()),
            other => other.clone(),
        };
        out.insert(k.clone(), v);
    }
    out.insert("count".into(), obj.len().into());
    print!(
        "Content-Type: application/json\r\n\r\n{}",
        serde_json::Value::Object(out)
    );
}

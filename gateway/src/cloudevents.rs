//! The CloudEvents 1.0 HTTP binding, in and out, on the cloudevents-sdk
//! event model.
//!
//! In: binary mode (`ce-*` headers, the body is the data), structured mode
//! (`application/cloudevents+json`) and batched mode
//! (`application/cloudevents-batch+json`, one invocation per event). The SDK
//! reads `ce-*` values as plain ASCII; the binding requires them to be
//! percent-encoded (and allows RFC 7230 quoted strings), so binary-mode
//! attributes are decoded here and the event is built and validated with
//! the SDK's builder. Out: a reply event goes back in the mode the request
//! came in, with `ce-*` values percent-encoded.
//!
//! To the function, an event is an invocation whose `CE_*` environment
//! variables hold the attributes and whose stdin holds the data. Its reply
//! is an event if its CGI headers include `ce-id`, `ce-source` and
//! `ce-type` (plus any other `ce-*`), with the CGI body as data.

use cloudevents::event::{AttributeValue, ExtensionValue};
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CeError {
    #[error("invalid CloudEvent: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> CeError {
    CeError::Invalid(why.into())
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether (and how) a request carries CloudEvents.
pub fn detect(headers: &HeaderMap) -> Option<Mode> {
    let ct = content_type(headers);
    if ct.starts_with(BATCH) {
        Some(Mode::Batch)
    } else if ct.starts_with(STRUCTURED) {
        Some(Mode::Structured)
    } else if headers.contains_key("ce-specversion") {
        Some(Mode::Binary)
    } else {
        None
    }
}

/// What the binding percent-encodes in a header value: space, `"`, `%`,
/// and everything outside printable ASCII (`percent-encoding` always
/// encodes non-ASCII bytes; `CONTROLS` adds 0x00-0x1F and 0x7F).
const HEADER_ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Undoes an RFC 7230 quoted-string, then one round of percent-decoding;
/// a malformed `%` escape, or escapes that decode to bytes invalid in
/// UTF-8 (the binding's overlong `%C0%A0`), are refused, as the binding
/// says they MUST be. Raw non-ASCII bytes, which the binding never sends
/// but HTTP clients that do not percent-encode do (the Python SDK's
/// through urllib), are read as UTF-8 if they are, else as ISO-8859-1,
/// HTTP's historical reading of such octets.
pub fn decode_header(raw: &[u8]) -> Result<String, CeError> {
    let mut bytes = raw.to_vec();
    if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' {
        let inner = &bytes[1..bytes.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            if inner[i] == b'\\' && i + 1 < inner.len() {
                i += 1;
            }
            out.push(inner[i]);
            i += 1;
        }
        bytes = out;
    }
    // `percent_decode` leaves a bad escape as it is; the binding has no
    // such thing.
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(invalid("a header has a malformed percent-encoding"));
    }
    let raw = String::from_utf8(bytes)
        .unwrap_or_else(|e| e.into_bytes().iter().map(|&b| b as char).collect());
    percent_decode(raw.as_bytes())
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid("a header value is not UTF-8 once percent-decoded"))
}

/// Percent-encodes what the binding requires ([`HEADER_ENCODE`]), with
/// upper-case hex digits as it recommends.
pub fn encode_header(s: &str) -> String {
    utf8_percent_encode(s, HEADER_ENCODE).to_string()
}

/// Builds an event from decoded `ce-*` attributes and the body.
fn from_attributes(
    attrs: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
) -> Result<Event, CeError> {
    let mut b = EventBuilderV10::new();
    let mut dataschema = None;
    let mut specversion = None;
    for (name, value) in attrs {
        match name.as_str() {
            "specversion" => specversion = Some(value),
            "id" => b = b.id(value),
            "source" => b = b.source(value),
            "type" => b = b.ty(value),
            "subject" => b = b.subject(value),
            "time" => b = b.time(value),
            "dataschema" => dataschema = Some(value),
            "datacontenttype" => {}
            ext => {
                check_extension_name(ext)?;
                b = b.extension(ext, value);
            }
        }
    }
    match specversion.as_deref() {
        Some("1.0") => {}
        Some(v) => {
            return Err(invalid(format!(
                "specversion {v:?} is not supported (use 1.0)"
            )))
        }
        None => return Err(invalid("missing required attribute specversion")),
    }
    if let Some(ct) = &content_type {
        check_media_type(ct)?;
    }
    if !body.is_empty() || content_type.is_some() {
        let ct = content_type.unwrap_or_else(|| "application/octet-stream".into());
        let data = typed_data(&ct, body);
        b = match dataschema {
            Some(s) => b.data_with_schema(ct, s, data),
            None => b.data(ct, data),
        };
    } else if let Some(s) = dataschema {
        b = b.data_with_schema("application/octet-stream", s, Vec::<u8>::new());
    }
    b.build().map_err(|e| invalid(e.to_string()))
}

/// JSON data as JSON (so structured mode carries `data`, not
/// `data_base64`), text as a string, anything else as bytes.
fn typed_data(content_type: &str, body: Vec<u8>) -> Data {
    let ct = content_type.to_ascii_lowercase();
    let json = ct.starts_with("application/json")
        || ct.starts_with("text/json")
        || ct
            .split(';')
            .next()
            .is_some_and(|m| m.trim().ends_with("+json"));
    if json {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            return Data::Json(v);
        }
    }
    if ct.starts_with("text/") {
        if let Ok(s) = String::from_utf8(body.clone()) {
            return Data::String(s);
        }
    }
    Data::Binary(body)
}

/// The events a request carries.
pub fn parse(mode: Mode, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, CeError> {
    match mode {
        Mode::Binary => {
            let mut attrs = Vec::new();
            for (name, value) in headers {
                if let Some(attr) = name.as_str().strip_prefix("ce-") {
                    attrs.push((attr.to_string(), decode_header(value.as_bytes())?));
                }
            }
            let ct = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut event = from_attributes(attrs, ct.clone(), body.to_vec())?;
            // The body is the event's data byte for byte: never parsed
            // and serialised again on its way to the function.
            if let Some(ct) = ct {
                event.set_data(ct, body.to_vec());
            }
            Ok(vec![event])
        }
        Mode::Structured => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
            Ok(vec![structured(v)?])
        }
        Mode::Batch => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
            let list = v
                .as_array()
                .ok_or_else(|| invalid("a batch must be a JSON array of events"))?;
            list.iter().cloned().map(structured).collect()
        }
    }
}

fn structured(v: serde_json::Value) -> Result<Event, CeError> {
    if !v.is_object() {
        return Err(invalid("a structured event must be a JSON object"));
    }
    match v.get("specversion").and_then(|s| s.as_str()) {
        Some("1.0") => {}
        Some(other) => {
            return Err(invalid(format!(
                "specversion {other:?} is not supported (use 1.0)"
            )))
        }
        None => return Err(invalid("missing required attribute specversion")),
    }
    for required in ["id", "source", "type"] {
        match v.get(required) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(invalid(format!(
                    "attribute {required} must be a non-empty string"
                )))
            }
            None => return Err(invalid(format!("missing required attribute {required}"))),
        }
    }
    let obj = v.as_object().expect("checked");
    for optional in ["subject", "dataschema", "datacontenttype", "time"] {
        match obj.get(optional) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(invalid(format!(
                    "attribute {optional} must be a non-empty string when present"
                )))
            }
        }
    }
    if let Some(serde_json::Value::String(ct)) = obj.get("datacontenttype") {
        check_media_type(ct)?;
    }
    if obj.contains_key("data") && obj.contains_key("data_base64") {
        return Err(invalid("an event has data or data_base64, not both"));
    }
    const CONTEXT: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "dataschema",
        "datacontenttype",
        "time",
        "data",
        "data_base64",
    ];
    for (name, value) in obj.iter().filter(|(k, _)| !CONTEXT.contains(&k.as_str())) {
        check_extension_name(name)?;
        match value {
            serde_json::Value::String(_) | serde_json::Value::Bool(_) | serde_json::Value::Null => {
            }
            serde_json::Value::Number(n)
                if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {}
            _ => {
                return Err(invalid(format!(
                    "extension {name:?} must be a string, a boolean or a 32-bit integer"
                )))
            }
        }
    }
    serde_json::from_value(v).map_err(|e| invalid(e.to_string()))
}

/// An extension attribute's name: lowercase letters and digits (the spec
/// only advises at most 20 of them, so longer ones are accepted).
fn check_extension_name(name: &str) -> Result<(), CeError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(invalid(format!(
            "extension attribute name {name:?} must be lowercase letters or digits"
        )));
    }
    Ok(())
}

/// `datacontenttype` is an RFC 2046 media type: `type/subtype`, tokens,
/// then parameters.
fn check_media_type(ct: &str) -> Result<(), CeError> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence.split_once('/') {
        Some((ty, sub)) if token(ty) && token(sub) => Ok(()),
        _ => Err(invalid(format!(
            "datacontenttype {ct:?} is not a media type (type/subtype)"
        ))),
    }
}

fn attr_string(v: &AttributeValue<'_>) -> String {
    v.to_string()
}

/// The event's attributes as `CE_*` variables.
pub fn environment(event: &Event) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = event
        .iter_attributes()
        .map(|(k, v)| (format!("CE_{}", k.to_ascii_uppercase()), attr_string(&v)))
        .collect();
    for (k, v) in event.iter_extensions() {
        env.push((format!("CE_{}", k.to_ascii_uppercase()), ext_string(v)));
    }
    env
}

fn ext_string(v: &ExtensionValue) -> String {
    match v {
        ExtensionValue::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The event's data as the bytes the function reads from stdin.
pub fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        None => Vec::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// The reply event in a function's response (`ce-*` headers, binary
/// mode), if it has one, with `body` as its data.
pub fn reply(headers: &HeaderMap, body: Vec<u8>) -> Result<Option<Event>, CeError> {
    let mut attrs = Vec::new();
    let mut ct = None;
    for (k, v) in headers {
        if let Some(a) = k.as_str().strip_prefix("ce-") {
            attrs.push((a.to_string(), decode_header(v.as_bytes())?));
        } else if k == CONTENT_TYPE {
            ct = Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
    }
    if attrs.is_empty() {
        return Ok(None);
    }
    if !attrs.iter().any(|(k, _)| k == "specversion") {
        attrs.push(("specversion".into(), "1.0".into()));
    }
    from_attributes(attrs, ct, body).map(Some)
}

/// Binary mode: `ce-*` headers (percent-encoded) and the data as body.
pub fn encode_binary(event: &Event) -> (Vec<(HeaderName, HeaderValue)>, Vec<u8>) {
    let mut headers = Vec::new();
    for (k, v) in event.iter_attributes() {
        if k == "datacontenttype" {
            continue;
        }
        push_header(
            &mut headers,
            &format!("ce-{k}"),
            &encode_header(&attr_string(&v)),
        );
    }
    for (k, v) in event.iter_extensions() {
        push_header(
            &mut headers,
            &format!("ce-{k}"),
            &encode_header(&ext_string(v)),
        );
    }
    if let Some(ct) = event.datacontenttype() {
        push_header(&mut headers, "content-type", ct);
    }
    (headers, data_bytes(event))
}

fn push_header(headers: &mut Vec<(HeaderName, HeaderValue)>, k: &str, v: &str) {
    if let (Ok(k), Ok(v)) = (
        HeaderName::from_bytes(k.as_bytes()),
        HeaderValue::from_str(v),
    ) {
        headers.push((k, v));
    }
}

/// Structured mode: the event as JSON.
pub fn encode_structured(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        for s in [
            "plain",
            "with space",
            "quote\"and%percent",
            "ünïcödé €",
            "tab\tend",
        ] {
            let e = encode_header(s);
            assert!(e.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{e}");
            assert_eq!(decode_header(e.as_bytes()).unwrap(), s);
        }
        assert_eq!(
            decode_header(b"\"quoted \\\"x\\\" %41\"").unwrap(),
            "quoted \"x\" A"
        );
        assert!(decode_header(b"bad%zz").is_err());
        assert!(decode_header(b"cut%4").is_err());
        assert_eq!(decode_header(b"%e2%82%ac").unwrap(), "€", "lower-case hex");
        assert_eq!(
            decode_header(b"%41bc").unwrap(),
            "Abc",
            "needlessly encoded"
        );
        // Escapes that decode to invalid UTF-8 are refused: the spec's
        // overlong space, a lone continuation byte, a cut sequence.
        for bad in [&b"%C0%A0"[..], b"%80", b"%E2%82"] {
            assert!(decode_header(bad).is_err(), "{bad:?}");
        }
        // Raw non-ASCII as sent by clients that do not percent-encode.
        assert_eq!(decode_header(b"na\xefve").unwrap(), "naïve", "ISO-8859-1");
        assert_eq!(
            decode_header("naïve".as_bytes()).unwrap(),
            "naïve",
            "raw UTF-8"
        );
        assert_eq!(
            encode_header("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80",
            "the binding's own example"
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn binary_mode_in_and_out() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/test"),
            ("ce-type", "com.example.ping"),
            ("ce-subject", "caf%C3%A9"),
            ("ce-myext", "x%20y"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(detect(&h), Some(Mode::Binary));
        let ev = parse(Mode::Binary, &h, b"{\"x\":1}").unwrap().remove(0);
        assert_eq!(ev.subject(), Some("café"));
        let env = environment(&ev);
        assert!(env.contains(&("CE_TYPE".into(), "com.example.ping".into())));
        assert!(env.contains(&("CE_MYEXT".into(), "x y".into())));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&data_bytes(&ev)).unwrap(),
            serde_json::json!({"x": 1})
        );
        let (out, _) = encode_binary(&ev);
        let subject = out.iter().find(|(k, _)| k == "ce-subject").unwrap();
        assert_eq!(subject.1, "caf%C3%A9");
    }

    #[test]
    fn missing_required_attributes_are_named() {
        let h = headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")]);
        let e = parse(Mode::Binary, &h, b"").unwrap_err().to_string();
        assert!(e.contains("source"), "{e}");
        let e = parse(
            Mode::Structured,
            &HeaderMap::new(),
            br#"{"specversion":"1.0","id":"1","source":"/s"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing required attribute type"), "{e}");
        let e = parse(
            Mode::Structured,
            &HeaderMap::new(),
            br#"{"specversion":"0.1","id":"1","source":"/s","type":"t"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("specversion"), "{e}");
        let e = parse(Mode::Batch, &HeaderMap::new(), br#"{"not":"an array"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a batch must be a JSON array"), "{e}");
    }

    #[test]
    fn structured_and_batch() {
        let ev = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{"a":1}}"#;
        let one = parse(Mode::Structured, &HeaderMap::new(), ev.as_bytes()).unwrap();
        assert_eq!(data_bytes(&one[0]), br#"{"a":1}"#);
        let batch = format!("[{ev},{ev}]");
        assert_eq!(
            parse(Mode::Batch, &HeaderMap::new(), batch.as_bytes())
                .unwrap()
                .len(),
            2
        );
        let back: serde_json::Value = serde_json::from_slice(&encode_structured(&one[0])).unwrap();
        assert_eq!(back["type"], "t");
    }
}

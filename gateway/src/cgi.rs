//! The function contract: a request reaches the function as in CGI/WAGI
//! (method, path, query and headers as environment variables, the body on
//! stdin) and the function answers in CGI on stdout (`Status:` and other
//! headers, a blank line, the body). See docs/function-contract.md.

/// What the environment is built from.
#[derive(Debug)]
pub struct Request<'a> {
    /// `SERVER_PROTOCOL`: the request's, as `HTTP/1.1` or `HTTP/2.0`
    /// (RFC 3875 4.1.16; what Apache and nginx give for HTTP/2).
    pub protocol: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body_len: usize,
    pub remote_addr: &'a str,
    pub server_name: &'a str,
    pub server_port: u16,
    pub service: &'a str,
    pub revision: &'a str,
}

/// The CGI environment for `req`, then Knative's `K_*` variables.
pub fn environment(req: &Request<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_PROTOCOL".into(), req.protocol.into()),
        ("SERVER_SOFTWARE".into(), "flint".into()),
        ("REQUEST_METHOD".into(), req.method.into()),
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), req.path.into()),
        ("QUERY_STRING".into(), req.query.into()),
        ("REMOTE_ADDR".into(), req.remote_addr.into()),
        ("SERVER_NAME".into(), req.server_name.into()),
        ("SERVER_PORT".into(), req.server_port.to_string()),
    ];
    let mut has_type = false;
    // Header names with `_` are dropped, as Apache and nginx drop them: a
    // client's `X_Forwarded_For` would otherwise become the same variable
    // as the gateway's `X-Forwarded-For`. Repeated headers are joined with
    // `, ` (RFC 9110 5.3; RFC 3875 4.1.18), in the order they came.
    let mut http: Vec<(String, String)> = Vec::new();
    for (name, value) in &req.headers {
        if name.contains('_') || name.is_empty() {
            continue;
        }
        let upper: String = name
            .chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
        match upper.as_str() {
            "CONTENT_TYPE" if !has_type => {
                has_type = true;
                env.push(("CONTENT_TYPE".into(), value.to_string()));
            }
            "CONTENT_TYPE" | "CONTENT_LENGTH" => {}
            // Never let a client set the proxy variable (httpoxy).
            "PROXY" => {}
            _ => {
                let var = format!("HTTP_{upper}");
                match http.iter_mut().find(|(n, _)| *n == var) {
                    Some((_, v)) => {
                        v.push_str(", ");
                        v.push_str(value);
                    }
                    None => http.push((var, value.to_string())),
                }
            }
        }
    }
    env.extend(http);
    if !has_type && req.body_len > 0 {
        env.push(("CONTENT_TYPE".into(), String::new()));
    }
    env.push(("CONTENT_LENGTH".into(), req.body_len.to_string()));
    env.push(("K_SERVICE".into(), req.service.into()));
    env.push(("K_CONFIGURATION".into(), req.service.into()));
    env.push(("K_REVISION".into(), req.revision.into()));
    env
}

/// A response read back from the function's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    #[error("the function's output has no header block (a CGI response starts with headers such as `Content-Type:` and a blank line)")]
    NoHeaders,
    #[error("the function's output has a malformed header line {0:?}")]
    BadHeader(String),
    #[error("the function's output has an invalid Status {0:?}")]
    BadStatus(String),
}

/// Largest CGI header block read.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Headers that describe the connection or the message framing, not the
/// response (RFC 9110 7.6.1, 8.6; RFC 9112 6.1): the gateway frames every
/// response itself, so a function's values are never passed on. A function
/// that could set them could end its response early and have the rest of
/// its output read as the answer to the next request on the connection.
const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True when `name` is a framing or hop-by-hop header, or one that the
/// response's own `Connection` header names as hop-by-hop.
fn is_framing(name: &str, connection_names: &[String]) -> bool {
    FRAMING_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection_names
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// Most header lines a function's response may have.
const MAX_HEADERS: usize = 256;

/// Parses CGI output: header lines (`\n` or `\r\n`), a blank line, the
/// body. The header block is read by `httparse` (hyper's own header
/// parser: RFC 9110 field names, values without control characters).
pub fn parse_response(out: &[u8]) -> Result<Response, CgiError> {
    let (_, body_start) =
        find_blank_line(&out[..out.len().min(MAX_HEADER_BLOCK)]).ok_or(CgiError::NoHeaders)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(&out[..body_start], &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        // A blank line ends the block, so a complete parse is expected.
        Ok(httparse::Status::Partial) => return Err(CgiError::NoHeaders),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(CgiError::BadHeader(format!(
                "more than {MAX_HEADERS} header lines"
            )))
        }
        Err(e) => {
            return Err(CgiError::BadHeader(format!(
                "{e}: {:?}",
                bad_line(&out[..body_start])
            )))
        }
    };
    let mut status = None;
    let mut headers = Vec::new();
    let mut location = false;
    for h in parsed.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| CgiError::BadHeader(format!("{}: <not UTF-8>", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code: u16 = code
                .parse()
                .ok()
                // 1xx responses are the gateway's to send (100 Continue,
                // 101 Switching Protocols): a function's final response is
                // 2xx to 5xx.
                .filter(|c| (200..=599).contains(c))
                .ok_or_else(|| CgiError::BadStatus(value.into()))?;
            status = Some(code);
        } else {
            location |= h.name.eq_ignore_ascii_case("location");
            headers.push((h.name.to_string(), value.to_string()));
        }
    }
    if headers.is_empty() && status.is_none() {
        return Err(CgiError::NoHeaders);
    }
    let connection_names: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()))
        .collect();
    headers.retain(|(n, _)| !is_framing(n, &connection_names));
    let status = status.unwrap_or(if location { 302 } else { 200 });
    Ok(Response {
        status,
        headers,
        body: out[body_start..].to_vec(),
    })
}

/// The first line of a header block that does not parse on its own, for
/// an error message.
fn bad_line(head: &[u8]) -> String {
    let line = head
        .split(|&b| b == b'\n')
        .find(|l| {
            let mut probe = l.to_vec();
            probe.extend_from_slice(b"\n\n");
            let mut one = [httparse::EMPTY_HEADER; 1];
            httparse::parse_headers(&probe, &mut one).is_err()
        })
        .unwrap_or_default();
    String::from_utf8_lossy(&line[..line.len().min(200)])
        .trim_end_matches('\r')
        .to_string()
}

fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let r = parse_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope\n")
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(
            r.headers,
            vec![("Content-Type".into(), "text/plain".into())]
        );
        assert_eq!(r.body, b"nope\n");
        let r = parse_response(b"Content-Type: text/html\n\n<p>hi</p>").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>hi</p>"[..]));
        let r = parse_response(b"Location: /elsewhere\n\n").unwrap();
        assert_eq!(r.status, 302);
    }

    #[test]
    fn refuses_what_is_not_cgi() {
        assert_eq!(parse_response(b"hello, world\n"), Err(CgiError::NoHeaders));
        assert_eq!(parse_response(b""), Err(CgiError::NoHeaders));
        assert!(matches!(
            parse_response(b"no colon here\n\nbody"),
            Err(CgiError::BadHeader(_))
        ));
        assert_eq!(
            parse_response(b"Status: 99\n\n"),
            Err(CgiError::BadStatus("99".into()))
        );
        assert!(matches!(
            parse_response(b"Status: abc\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse_response(b"Bad Name: x\n\n"),
            Err(CgiError::BadHeader(_))
        ));
    }

    #[test]
    fn header_names_and_values_are_read_as_rfc_9110_has_them() {
        // Any token character in a name; the bad line is named.
        let r = parse_response(b"X-A.b~c: 1\nX-Empty:\n\n").unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("X-A.b~c".into(), "1".into()),
                ("X-Empty".into(), "".into())
            ]
        );
        assert_eq!(
            parse_response(b"X-Ok: 1\r\nBad Name: x\r\n\r\n"),
            Err(CgiError::BadHeader(
                "invalid header name: \"Bad Name: x\"".into()
            ))
        );
        // No control characters in a value, no invalid UTF-8.
        assert!(matches!(
            parse_response(b"X-Bad: a\x01b\n\n"),
            Err(CgiError::BadHeader(_))
        ));
        assert!(matches!(
            parse_response(b"X-Bad: \xff\xfe\n\n"),
            Err(CgiError::BadHeader(_))
        ));
        let many = "X-H: 1\n".repeat(MAX_HEADERS + 1) + "\n";
        assert_eq!(
            parse_response(many.as_bytes()),
            Err(CgiError::BadHeader(format!(
                "more than {MAX_HEADERS} header lines"
            )))
        );
    }

    #[test]
    fn framing_headers_from_the_function_are_dropped() {
        let r = parse_response(
            b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nUpgrade: h2c\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.headers, vec![("X-Kept".into(), "yes".into())]);
        assert_eq!(r.body, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn informational_statuses_are_refused() {
        for s in ["100", "101 Switching Protocols", "103", "199"] {
            let out = format!("Status: {s}\r\nUpgrade: websocket\r\n\r\n");
            assert_eq!(
                parse_response(out.as_bytes()),
                Err(CgiError::BadStatus(s.into())),
                "{s}"
            );
        }
        assert_eq!(parse_response(b"Status: 204\n\n").unwrap().status, 204);
    }

    #[test]
    fn underscored_headers_are_dropped_and_repeats_joined() {
        let env = environment(&Request {
            protocol: "HTTP/1.1",
            method: "GET",
            path: "/",
            query: "",
            headers: vec![
                ("X_Forwarded_For", "6.6.6.6"),
                ("Accept", "text/plain"),
                ("accept", "text/html"),
                ("x-forwarded-for", "127.0.0.1"),
            ],
            body_len: 0,
            remote_addr: "127.0.0.1",
            server_name: "h",
            server_port: 80,
            service: "s",
            revision: "s-00001",
        });
        let all = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("HTTP_X_FORWARDED_FOR"), vec!["127.0.0.1"]);
        assert_eq!(all("HTTP_ACCEPT"), vec!["text/plain, text/html"]);
    }

    #[test]
    fn environment_follows_cgi_and_knative() {
        let env = environment(&Request {
            protocol: "HTTP/1.1",
            method: "POST",
            path: "/greet",
            query: "name=ada",
            headers: vec![
                ("Content-Type", "application/json"),
                ("X-Thing", "1"),
                ("Proxy", "evil"),
                ("Content-Length", "9"),
            ],
            body_len: 2,
            remote_addr: "127.0.0.1",
            server_name: "hello.default.example.com",
            server_port: 8080,
            service: "hello",
            revision: "hello-00001",
        });
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REQUEST_METHOD"), Some("POST"));
        assert_eq!(get("PATH_INFO"), Some("/greet"));
        assert_eq!(get("QUERY_STRING"), Some("name=ada"));
        assert_eq!(get("CONTENT_TYPE"), Some("application/json"));
        assert_eq!(get("CONTENT_LENGTH"), Some("2"));
        assert_eq!(get("HTTP_X_THING"), Some("1"));
        assert_eq!(get("HTTP_PROXY"), None);
        assert_eq!(get("K_REVISION"), Some("hello-00001"));
    }
}

//! Reading one request head out of the connection buffer, and refusing what we do not serve.
//!
//! The surface is deliberately small: GET and HEAD without bodies. A request that announces a
//! body is refused and the connection closed, because skipping a body we do not want is how
//! request smuggling starts.

/// Limits a request head must stay within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub max_headers: usize,
}

/// The methods ingest tells apart; everything else is answered 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Only for CORS preflights.
    Options,
    Other,
}

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct Head<'a> {
    pub method: Method,
    /// The origin-form target (`/path?query`); an absolute-form target arrives here with
    /// its scheme and authority removed.
    pub target: &'a str,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// The `Origin` header, for CORS.
    pub origin: Option<&'a str>,
    /// The `Authorization` header's value, for write keys (the first, if there are several).
    /// Never logged: it may hold a key.
    pub authorization: Option<&'a [u8]>,
}

/// Why a head cannot be served; each maps to a status and the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: not HTTP/1.x as we read it.
    Malformed,
    /// 400: Content-Length > 0 or Transfer-Encoding.
    Body,
    /// 414: the request line alone is over the head limit.
    UriTooLong,
    /// 431: the head is over the limit, or has too many headers.
    HeadTooLarge,
}

/// Parses the head at the start of `buf`: `Ok(None)` if it is not complete yet, else the
/// head and its length in bytes.
pub fn parse<'a>(buf: &'a [u8], limits: Limits) -> Result<Option<(Head<'a>, usize)>, Reject> {
    // Uninitialised: httparse writes the headers it finds, and zeroing 64 of them (2 KiB)
    // for every request would cost more than the usual handful of headers takes to parse.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; 64];
    let headers = &mut headers[..limits.max_headers.min(64)];
    let mut request = httparse::Request::new(&mut []);
    let status = match request.parse_with_uninit_headers(buf, headers) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::Malformed),
    };
    let len = match status {
        httparse::Status::Complete(len) if len <= limits.max_head => len,
        httparse::Status::Complete(_) => return Err(too_large(buf, limits)),
        httparse::Status::Partial if buf.len() >= limits.max_head => {
            return Err(too_large(buf, limits));
        }
        httparse::Status::Partial => return Ok(None),
    };
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let http10 = request.version == Some(0);
    let mut keep_alive = !http10;
    let mut origin = None;
    let mut authorization = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 8.6: Content-Length = 1*DIGIT; "+0" or "0x0" is not a length.
            match content_length(header.value) {
                Some(0) => {}
                Some(_) => return Err(Reject::Body),
                None => return Err(Reject::Malformed),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject::Body);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if header.name.eq_ignore_ascii_case("origin") {
            origin = std::str::from_utf8(header.value).ok();
        } else if header.name.eq_ignore_ascii_case("authorization") && authorization.is_none() {
            authorization = Some(header.value);
        }
    }
    let target = origin_form(request.path.ok_or(Reject::Malformed)?)?;
    Ok(Some((
        Head {
            method,
            target,
            keep_alive,
            origin,
            authorization,
        },
        len,
    )))
}

fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The target as `/path?query`. RFC 9112 3.2.2: a server must accept the absolute-form
/// (`http://host/5?data=a`), whose path is the same request. A request-target has no
/// fragment (clients strip `#...` before sending); one that has is malformed, not data.
fn origin_form(target: &str) -> Result<&str, Reject> {
    // memchr's vectorised search: the plain slice search was the largest single cost left
    // in parsing a request (callgrind, `benches/icount`).
    if memchr::memchr(b'#', target.as_bytes()).is_some() {
        return Err(Reject::Malformed);
    }
    // The origin-form every client but a proxy sends: no substring search per request.
    if target.starts_with('/') {
        return Ok(target);
    }
    let Some(scheme_end) = target.find("://") else {
        return Ok(target);
    };
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(Reject::Malformed);
    }
    let rest = &target[scheme_end + 3..];
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_start == 0 {
        return Err(Reject::Malformed); // no authority
    }
    Ok(&rest[path_start..])
}

fn too_large(buf: &[u8], limits: Limits) -> Reject {
    let line_end = buf.iter().take(limits.max_head).position(|&b| b == b'\n');
    if line_end.is_none() {
        Reject::UriTooLong
    } else {
        Reject::HeadTooLarge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 256,
        max_headers: 4,
    };

    fn head(raw: &str) -> Result<Option<(Method, String, bool, usize)>, Reject> {
        parse(raw.as_bytes(), LIMITS)
            .map(|h| h.map(|(h, n)| (h.method, h.target.to_owned(), h.keep_alive, n)))
    }

    #[test]
    fn reads_method_target_and_length() {
        let raw = "GET /5?data=x HTTP/1.1\r\nHost: a\r\n\r\nGET /6";
        let (method, target, keep_alive, len) = head(raw).unwrap().unwrap();
        assert_eq!(
            (method, target.as_str(), keep_alive),
            (Method::Get, "/5?data=x", true)
        );
        assert_eq!(&raw[len..], "GET /6");
        assert_eq!(
            head("HEAD / HTTP/1.1\r\n\r\n").unwrap().unwrap().0,
            Method::Head
        );
        assert_eq!(
            head("DELETE / HTTP/1.1\r\n\r\n").unwrap().unwrap().0,
            Method::Other
        );
    }

    #[test]
    fn waits_for_a_whole_head() {
        assert_eq!(head("GET /5 HTTP/1.1\r\nHost:"), Ok(None));
        assert_eq!(head(""), Ok(None));
    }

    #[test]
    fn connection_semantics() {
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .2
        );
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n")
                .unwrap()
                .unwrap()
                .2
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().2);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .2
        );
    }

    #[test]
    fn bodies_are_refused() {
        assert_eq!(
            head("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Err(Reject::Body)
        );
        for bad in ["x", "+0", "-0", "0x0", "", "1 2"] {
            assert_eq!(
                head(&format!("GET / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n")),
                Err(Reject::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            head("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Reject::Body)
        );
        assert!(
            head("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn limits_give_the_right_rejection() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert_eq!(head(&long_uri), Err(Reject::UriTooLong));
        let long_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(head(&long_head), Err(Reject::HeadTooLarge));
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300));
        assert_eq!(head(&unfinished), Err(Reject::HeadTooLarge));
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        assert_eq!(head(many), Err(Reject::HeadTooLarge));
        assert_eq!(head("\u{1}garbage\r\n\r\n"), Err(Reject::Malformed));
    }

    #[test]
    fn absolute_form_is_the_same_request() {
        let target = |raw: &str| head(raw).map(|h| h.map(|(_, t, _, _)| t));
        assert_eq!(
            target("GET http://ingest:8080/5?data=a HTTP/1.1\r\n\r\n"),
            Ok(Some("/5?data=a".into()))
        );
        assert_eq!(
            target("GET HTTPS://ingest/healthz HTTP/1.1\r\n\r\n"),
            Ok(Some("/healthz".into()))
        );
        assert_eq!(
            target("GET http://ingest HTTP/1.1\r\n\r\n"),
            Ok(Some(String::new()))
        );
        assert_eq!(
            target("GET ftp://ingest/5 HTTP/1.1\r\n\r\n"),
            Err(Reject::Malformed)
        );
        assert_eq!(
            target("GET http:///5 HTTP/1.1\r\n\r\n"),
            Err(Reject::Malformed)
        );
    }

    #[test]
    fn a_fragment_is_malformed_not_data() {
        assert_eq!(
            head("GET /5?data=a#b HTTP/1.1\r\n\r\n"),
            Err(Reject::Malformed)
        );
    }

    #[test]
    fn the_origin_header_is_kept_for_cors() {
        let raw = "OPTIONS /5 HTTP/1.1\r\nOrigin: https://app.example\r\n\r\n";
        let (head, _) = parse(raw.as_bytes(), LIMITS).unwrap().unwrap();
        assert_eq!(head.method, Method::Options);
        assert_eq!(head.origin, Some("https://app.example"));
    }
}

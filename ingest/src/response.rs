//! Responses, written straight into the connection's output buffer.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

/// A response; bodies are small JSON documents or the metrics text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// `Allow` (for 405) or `Retry-After` (for 503), when set.
    pub extra: Option<(&'static str, &'static str)>,
    /// Close the connection after this response.
    pub close: bool,
    /// CORS headers, for a request from an allowed origin.
    pub cors: Option<Cors>,
}

/// What a response tells a browser about a cross-origin request it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// `Access-Control-Allow-Origin`: the request's origin, or `*`.
    pub origin: Box<str>,
    /// An answer to a preflight: also the methods and headers allowed.
    pub preflight: bool,
}

#[derive(Debug)]
pub enum Body {
    Static(&'static str),
    Owned(String),
}

impl Body {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(s) => s.as_bytes(),
            Body::Owned(s) => s.as_bytes(),
        }
    }
}

impl Response {
    pub fn json(status: u16, body: &'static str) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: Body::Static(body),
            extra: None,
            close: false,
            cors: None,
        }
    }

    pub fn json_owned(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: Body::Owned(body),
            extra: None,
            close: false,
            cors: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.extra = Some((name, value));
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Appends the response; for HEAD the headers are the same and the body is left out.
    /// `date` is the `Date` header value, from [`with_date`].
    pub fn write(&self, out: &mut BytesMut, head_only: bool, date: &str) {
        let body = self.body.as_bytes();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date.as_bytes());
        // An event GET must never be answered from a cache, and nothing here is worth
        // caching: every response says so.
        out.extend_from_slice(b"\r\nCache-Control: no-store");
        if self.status != 204 {
            out.extend_from_slice(b"\r\nContent-Type: ");
            out.extend_from_slice(self.content_type.as_bytes());
            // RFC 9110 8.6: no Content-Length on a 204.
            out.extend_from_slice(b"\r\nContent-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        }
        if let Some(cors) = &self.cors {
            cors.write(out);
        }
        if let Some((name, value)) = self.extra {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        if self.close {
            out.extend_from_slice(b"\r\nConnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head_only && self.status != 204 {
            out.extend_from_slice(body);
        }
    }
}

impl Cors {
    fn write(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Origin: ");
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(b"\r\nVary: Origin");
        if self.preflight {
            // Authorization: write keys travel in it, and it is what makes browsers preflight.
            out.extend_from_slice(
                b"\r\nAccess-Control-Allow-Methods: GET, HEAD\r\n\
                  Access-Control-Allow-Headers: Authorization\r\nAccess-Control-Max-Age: 600",
            );
        }
    }
}

impl Response {
    /// [`Response::write`] for a one-off response, reading the clock for its Date.
    pub fn write_now(&self, out: &mut BytesMut) {
        with_date(SystemTime::now(), |date| self.write(out, false, date));
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Calls `f` with the `Date` header value for `now`, formatted once a second per thread
/// rather than per response.
pub fn with_date<T>(now: SystemTime, f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        f(&cache.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_status_headers_and_body() {
        let mut out = BytesMut::new();
        Response::json(405, r#"{"error":"method_not_allowed"}"#)
            .with_header("Allow", "GET, HEAD")
            .write(&mut out, false, "Sun, 22 Nov 2026 10:00:00 GMT");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.contains("\r\nContent-Length: 30\r\n"));
        assert!(text.contains("\r\nDate: "));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"method_not_allowed\"}"));
    }

    /// Every client parses every byte of the most frequent answer there is: it carries what
    /// the client needs and nothing else (no `Server`).
    #[test]
    fn an_accepted_answer_is_exactly_this() {
        let mut out = BytesMut::new();
        Response::json(202, r#"{"status":"accepted"}"#).write(
            &mut out,
            false,
            "Sun, 22 Nov 2026 10:00:00 GMT",
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 202 Accepted\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\n\
             Cache-Control: no-store\r\nContent-Type: application/json\r\n\
             Content-Length: 21\r\n\r\n{\"status\":\"accepted\"}"
        );
    }

    #[test]
    fn head_keeps_the_length_but_not_the_body() {
        let mut out = BytesMut::new();
        Response::json(202, r#"{"status":"accepted"}"#)
            .closing()
            .write(&mut out, true, "Sun, 22 Nov 2026 10:00:00 GMT");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("Content-Length: 21\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_response_forbids_caching() {
        let mut out = BytesMut::new();
        Response::json(404, r#"{"error":"unknown_account"}"#).write(&mut out, false, "d");
        assert!(
            String::from_utf8(out.to_vec())
                .unwrap()
                .contains("\r\nCache-Control: no-store\r\n")
        );
    }

    #[test]
    fn a_preflight_answer_has_no_body_and_names_what_is_allowed() {
        let mut out = BytesMut::new();
        let mut response = Response::json(204, "");
        response.cors = Some(Cors {
            origin: "https://app.example".into(),
            preflight: true,
        });
        response.write(&mut out, false, "d");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(
            text.contains(
                "\r\nAccess-Control-Allow-Origin: https://app.example\r\nVary: Origin\r\n"
            )
        );
        assert!(text.contains("\r\nAccess-Control-Allow-Headers: Authorization\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}

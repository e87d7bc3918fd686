//! What each request gets: the event endpoint, health, readiness and metrics.

use std::borrow::Cow;
use std::sync::Arc;

use data::{Accounts, Status};
use percent_encoding::percent_decode;

use crate::metrics::{Metrics, Outcome};
use crate::request::{Head, Method};
use crate::response::{Body, Cors, Response};
use client::outbox::Outbox;
use client::publisher::Link;

/// What request handling needs, shared by every connection.
pub struct App {
    pub accounts: Arc<Accounts>,
    pub outbox: Arc<Outbox>,
    /// The publisher's link to busd: readiness, and whether busd refuses us.
    pub link: Arc<Link>,
    pub metrics: Arc<Metrics>,
    pub origin: String,
    pub max_data: usize,
    /// Origins whose pages may call ingest (`--cors-origin`); empty: none.
    pub cors_origins: Vec<String>,
    /// `--durable`: how long a 202 may wait for the bus to acknowledge its event before it
    /// becomes a 503 (`--ack-timeout`); `None` answers as soon as the event is in the outbox.
    pub ack_timeout: Option<std::time::Duration>,
}

/// Answers one request; `now_us` is the acceptance time given to an accepted event. The
/// third value is the id of the event it gave the outbox, which a durable answer waits for.
pub fn handle(head: &Head<'_>, app: &App, now_us: u64) -> (Response, Outcome, Option<u64>) {
    let allowed = allowed_origin(app, head.origin);
    match head.method {
        Method::Options if allowed.is_some() => {
            let mut response = Response::json(204, "");
            response.cors = allowed.map(|origin| Cors {
                origin,
                preflight: true,
            });
            return (response, Outcome::Preflight, None);
        }
        Method::Options | Method::Other => {
            let response = Response::json(405, r#"{"error":"method_not_allowed"}"#)
                .with_header("Allow", "GET, HEAD");
            return (response, Outcome::MethodNotAllowed, None);
        }
        Method::Get | Method::Head => {}
    }
    // The path is a few bytes: a plain loop finds its end sooner than a searcher is set up.
    let (path, query) = match head.target.bytes().position(|b| b == b'?') {
        Some(at) => (&head.target[..at], &head.target[at + 1..]),
        None => (head.target, ""),
    };
    let (mut response, outcome, event) = match path {
        "/healthz" => (
            Response::json(200, r#"{"status":"ok"}"#),
            Outcome::Health,
            None,
        ),
        "/readyz" => (ready(app), Outcome::Health, None),
        "/metrics" => (metrics(app), Outcome::Health, None),
        _ => event(head, path, query, app, now_us),
    };
    response.cors = allowed.map(|origin| Cors {
        origin,
        preflight: false,
    });
    (response, outcome, event)
}

/// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
fn allowed_origin(app: &App, origin: Option<&str>) -> Option<Box<str>> {
    if app.cors_origins.is_empty() {
        return None;
    }
    let origin = origin?;
    if app.cors_origins.iter().any(|o| o == "*") {
        return Some("*".into());
    }
    app.cors_origins
        .iter()
        .any(|o| o == origin)
        .then(|| origin.into())
}

fn ready(app: &App) -> Response {
    let loaded = app.accounts.is_loaded();
    let bus = app.link.is_up();
    let body = format!(r#"{{"accounts_loaded":{loaded},"bus_connected":{bus}}}"#);
    Response::json_owned(if loaded && bus { 200 } else { 503 }, body)
}

fn metrics(app: &App) -> Response {
    app.metrics.buffer_depth.set(app.outbox.depth() as i64);
    app.metrics
        .buffer_bytes
        .set(i64::try_from(app.outbox.depth_bytes()).unwrap_or(i64::MAX));
    app.metrics.bus_up.set(i64::from(app.link.is_up()));
    let counted = app.metrics.bus_reconnects.get();
    app.metrics
        .bus_reconnects
        .inc_by(app.link.reconnects().saturating_sub(counted));
    app.metrics.accounts.set(app.accounts.len() as i64);
    let following = i64::from(app.accounts.file_ok());
    app.metrics.accounts_file_ok.set(following);
    app.metrics.accounts_store_up.set(following);
    Response {
        cors: None,
        status: 200,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body: Body::Owned(app.metrics.render()),
        extra: None,
        close: false,
    }
}

/// An event request's answer, and the id of the event it gave the outbox.
fn event(
    head: &Head<'_>,
    path: &str,
    query: &str,
    app: &App,
    now_us: u64,
) -> (Response, Outcome, Option<u64>) {
    let probe = head.method == Method::Head;
    let Some(account_id) = account_id(path) else {
        return (
            Response::json(400, r#"{"error":"bad_account_id"}"#),
            Outcome::BadAccountId,
            None,
        );
    };
    let data = match data_param(query, app.max_data) {
        Ok(data) => data,
        Err(reason) => {
            let body = format!(r#"{{"error":"bad_data","reason":"{reason}"}}"#);
            return (Response::json_owned(400, body), Outcome::BadData, None);
        }
    };
    let key = head.authorization.and_then(bearer);
    let (response, outcome) = match app.accounts.check(account_id, key) {
        Status::Unknown => (
            Response::json(404, r#"{"error":"unknown_account"}"#),
            Outcome::UnknownAccount,
        ),
        Status::KeyMissing => unauthorized(
            r#"{"error":"unauthorized","reason":"missing_key"}"#,
            r#"Bearer realm="tracker""#,
        ),
        Status::KeyWrong => unauthorized(
            r#"{"error":"unauthorized","reason":"wrong_key"}"#,
            r#"Bearer realm="tracker", error="invalid_token""#,
        ),
        Status::Inactive => (
            Response::json(403, r#"{"error":"inactive_account"}"#),
            Outcome::InactiveAccount,
        ),
        Status::Active if probe => (accepted(), Outcome::Probe),
        Status::Active if app.link.is_refused() => bus_unavailable(),
        Status::Active => match app.outbox.push(account_id, now_us, &data, &app.origin) {
            Ok(id) => return (accepted(), Outcome::Accepted, Some(id)),
            Err(_) => bus_unavailable(),
        },
    };
    (response, outcome, None)
}

/// 401 with the challenge RFC 6750 asks for; `error="invalid_token"` only when a key was
/// presented, since a request without one is merely unauthenticated.
fn unauthorized(body: &'static str, challenge: &'static str) -> (Response, Outcome) {
    let response = Response::json(401, body).with_header("WWW-Authenticate", challenge);
    (response, Outcome::Unauthorized)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, RFC 9110
/// 11.1); `None` for another scheme or an empty token, which count as no key.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn bus_unavailable() -> (Response, Outcome) {
    let response =
        Response::json(503, r#"{"error":"bus_unavailable"}"#).with_header("Retry-After", "1");
    (response, Outcome::BusUnavailable)
}

fn accepted() -> Response {
    Response::json(202, r#"{"status":"accepted"}"#)
}

/// `/<decimal u64>` in canonical form, nothing else: `/0005` is refused rather than taken
/// for account 5, so one account has one URL (in logs, caches and rate limits alike).
fn account_id(path: &str) -> Option<u64> {
    let digits = path.strip_prefix('/')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The first `data` parameter, `+` as space, percent-decoded, UTF-8, within `max` bytes.
fn data_param(query: &str, max: usize) -> Result<Cow<'_, str>, &'static str> {
    let (raw, escaped) = crate::query::raw_data(query).ok_or("missing")?;
    // Every decoded byte takes at least one encoded one, at most three.
    if raw.len() > max.saturating_mul(3) {
        return Err("too_long");
    }
    if !escaped {
        return if raw.len() > max {
            Err("too_long")
        } else {
            Ok(Cow::Borrowed(raw))
        };
    }
    let plus_as_space: Cow<'_, [u8]> = if raw.contains('+') {
        Cow::Owned(
            raw.bytes()
                .map(|b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw.as_bytes())
    };
    let decoded: Cow<'_, [u8]> = match plus_as_space {
        Cow::Borrowed(bytes) => percent_decode(bytes).into(),
        Cow::Owned(bytes) => Cow::Owned(percent_decode(&bytes).collect()),
    };
    if decoded.len() > max {
        return Err("too_long");
    }
    match decoded {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| "not_utf8"),
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|_| "not_utf8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_plain_decimal_u64() {
        assert_eq!(account_id("/5"), Some(5));
        assert_eq!(account_id("/0"), Some(0));
        assert_eq!(account_id("/18446744073709551615"), Some(u64::MAX));
        for bad in [
            "/",
            "/-1",
            "/+1",
            "/1.0",
            "/abc",
            "/18446744073709551616",
            "/1/2",
            "5",
            "/%31",
            "/007",
            "/00",
        ] {
            assert_eq!(account_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_value() {
        assert_eq!(bearer(b"Bearer trk_abc"), Some(&b"trk_abc"[..]));
        assert_eq!(bearer(b"bearer   trk_abc "), Some(&b"trk_abc"[..]));
        assert_eq!(bearer(b"BEARER trk_abc"), Some(&b"trk_abc"[..]));
        for none in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearertrk",
            b"",
        ] {
            assert_eq!(bearer(none), None, "{:?}", String::from_utf8_lossy(none));
        }
    }

    #[test]
    fn data_is_decoded_and_checked() {
        assert_eq!(data_param("data=a+b%20c", 100).unwrap(), "a b c");
        assert_eq!(data_param("x=1&data=%E2%82%AC%2B", 100).unwrap(), "€+");
        assert_eq!(data_param("data=", 100).unwrap(), "");
        assert_eq!(data_param("data", 100).unwrap(), "");
        assert_eq!(data_param("data=first&data=second", 100).unwrap(), "first");
        assert_eq!(data_param("", 100), Err("missing"));
        assert_eq!(data_param("dat=1", 100), Err("missing"));
        assert_eq!(data_param("data=%FF", 100), Err("not_utf8"));
        assert_eq!(data_param("data=%C3", 100), Err("not_utf8"));
        assert_eq!(
            data_param(&format!("data={}", "a".repeat(101)), 100),
            Err("too_long")
        );
        assert_eq!(
            data_param(&format!("data={}", "%41".repeat(100)), 100)
                .unwrap()
                .len(),
            100
        );
        assert_eq!(
            data_param(&format!("data={}", "%41".repeat(101)), 100),
            Err("too_long")
        );
    }
}

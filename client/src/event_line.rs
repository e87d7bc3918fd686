//! One event for `busctl publish` to read from stdin: `account<TAB>data`, or a JSON object
//! with `account_id` and `data` (so `busctl watch --format json` output can be sent again;
//! its other fields are ignored). A line that is neither is refused with the reason, and
//! the caller reports it with its line number and goes on.

use serde::Deserialize;

/// An event as a line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// The account it is for.
    pub account_id: u64,
    /// Its data.
    pub data: String,
}

/// Why a line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A text line without the tab between account and data.
    #[error("expected account<TAB>data or a JSON object")]
    NoTab,
    /// The account is not a decimal u64.
    #[error("{0:?} is not an account id")]
    BadAccount(String),
    /// An event larger than a batch may carry.
    #[error("data of {0} bytes is over the {1} bytes an event may carry")]
    TooLarge(usize, usize),
    /// A JSON object without the fields, or not JSON.
    #[error("not an event in JSON ({0}); expected {{\"account_id\":5,\"data\":\"...\"}}")]
    BadJson(String),
}

#[derive(Deserialize)]
struct JsonEvent {
    account_id: u64,
    data: String,
}

/// Reads one line (without its line ending; a trailing `\r` is dropped). `None` for a
/// blank line, which is skipped.
pub fn parse(line: &[u8]) -> Option<Result<EventLine, LineError>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return Some(Err(LineError::NotUtf8));
    };
    Some(if line.trim_start().starts_with('{') {
        serde_json::from_str::<JsonEvent>(line)
            .map(|e| EventLine {
                account_id: e.account_id,
                data: e.data,
            })
            .map_err(|e| LineError::BadJson(e.to_string()))
    } else {
        text(line)
    })
}

fn text(line: &str) -> Result<EventLine, LineError> {
    let (account, data) = line.split_once('\t').ok_or(LineError::NoTab)?;
    let account_id = account
        .trim()
        .parse()
        .map_err(|_| LineError::BadAccount(account.to_owned()))?;
    Ok(EventLine {
        account_id,
        data: data.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(account_id: u64, data: &str) -> Option<Result<EventLine, LineError>> {
        Some(Ok(EventLine {
            account_id,
            data: data.into(),
        }))
    }

    #[test]
    fn text_and_json_lines() {
        assert_eq!(parse(b"5\thello world"), event(5, "hello world"));
        assert_eq!(
            parse(b"5\ta\tb\r"),
            event(5, "a\tb"),
            "the first tab splits"
        );
        assert_eq!(parse(b"7\t"), event(7, ""));
        assert_eq!(
            parse(br#"{"account_id":5,"data":"x\ny","seq":3,"origin":"o"}"#),
            event(5, "x\ny")
        );
        assert_eq!(parse(b"   "), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse(b"5 hello"), Some(Err(LineError::NoTab)));
        assert_eq!(
            parse(b"five\thello"),
            Some(Err(LineError::BadAccount("five".into())))
        );
        assert_eq!(
            parse(b"-1\tx"),
            Some(Err(LineError::BadAccount("-1".into())))
        );
        assert_eq!(parse(b"5\t\xff"), Some(Err(LineError::NotUtf8)));
        assert!(matches!(
            parse(br#"{"account_id":"5","data":"x"}"#),
            Some(Err(LineError::BadJson(_)))
        ));
        assert!(matches!(parse(b"{oops"), Some(Err(LineError::BadJson(_)))));
    }
}

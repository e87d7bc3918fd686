//! Finding `data=` in a query string: one pass over the bytes, eight at a time.
//!
//! Every request's query is scanned for the end of each parameter (`&`) and, in the
//! `data` value, for the bytes that need decoding (`%`, `+`). Done with `split('&')` and a
//! second `any()` over the value it was two searches per byte and the largest user-space
//! cost of a request (callgrind, `benches/icount`); here both are found in the same pass,
//! a 64-bit word at a time (the "has zero byte" trick).

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `word` equal to `byte`. Exact for the lowest match; bytes
/// above a match may be flagged falsely (a borrow), so only the lowest set bit is used.
fn matches(word: u64, byte: u8) -> u64 {
    let x = word ^ (LO * u64::from(byte));
    x.wrapping_sub(LO) & !x & HI
}

/// Where the value starting at `bytes` ends (the first `&`, or the end), and whether a `%`
/// or `+` comes before that end.
fn scan(bytes: &[u8]) -> (usize, bool) {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let amp = matches(word, b'&');
        let escape = matches(word, b'%') | matches(word, b'+');
        if amp != 0 {
            let end = amp.trailing_zeros();
            let escaped = escape != 0 && escape.trailing_zeros() < end;
            return (offset + end as usize / 8, escaped);
        }
        if escape != 0 {
            // Escaped for sure; the end is still to be found.
            let (end, _) = scan(&bytes[offset + 8..]);
            return (offset + 8 + end, true);
        }
        offset += 8;
    }
    let mut escaped = false;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        match b {
            b'&' => return (offset + i, escaped),
            b'%' | b'+' => escaped = true,
            _ => {}
        }
    }
    (bytes.len(), escaped)
}

/// The first `data` parameter's raw value (`data` alone is an empty value) and whether it
/// holds `%` or `+`, so that a plain value is used as it is, undecoded and uncopied.
pub fn raw_data(query: &str) -> Option<(&str, bool)> {
    let mut rest = query;
    loop {
        let (value, named) = match rest.strip_prefix("data") {
            Some(after) if after.is_empty() || after.starts_with('&') => ("", true),
            Some(after) if after.starts_with('=') => (&after[1..], true),
            _ => (rest, false),
        };
        let (end, escaped) = scan(value.as_bytes());
        if named {
            // `end` is at a `&` or the end: a char boundary.
            return Some((&value[..end], escaped));
        }
        rest = value.get(end + 1..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `raw_data` must equal: the plain way, two searches.
    fn naive(query: &str) -> Option<(&str, bool)> {
        let raw = query.split('&').find_map(|pair| {
            pair.strip_prefix("data=")
                .or_else(|| (pair == "data").then_some(""))
        })?;
        Some((raw, raw.bytes().any(|b| b == b'%' || b == b'+')))
    }

    #[test]
    fn finds_the_first_data_parameter() {
        assert_eq!(raw_data("data=abc"), Some(("abc", false)));
        assert_eq!(raw_data("x=1&data=a%20b&data=c"), Some(("a%20b", true)));
        assert_eq!(raw_data("data"), Some(("", false)));
        assert_eq!(raw_data("dat=1&datax=2"), None);
        assert_eq!(raw_data("data=a+b"), Some(("a+b", true)));
        assert_eq!(raw_data("data=plain&x=%41"), Some(("plain", false)));
        assert_eq!(raw_data(""), None);
    }

    proptest! {
        #[test]
        fn agrees_with_the_plain_way(query in "(data|dat|x|=|&|%|\\+|a|é|[0-9]){0,40}") {
            prop_assert_eq!(raw_data(&query), naive(&query));
        }

        #[test]
        fn agrees_on_long_values(prefix in "[a-z&=]{0,12}", value in "[a-z%+&]{0,90}") {
            let query = format!("{prefix}data={value}");
            prop_assert_eq!(raw_data(&query), naive(&query));
        }
    }
}

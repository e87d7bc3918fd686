//! `watch --format template --template '{timestamp} {account_id} {data}'`: an event line
//! shaped by the user, as kcat's `-f` and `nats sub --translate` allow. The template is
//! parsed once, when the command line is read, so a mistake is a bad argument (exit 2)
//! rather than a surprise at the first event.

use protocol::Event;

use crate::render::timestamp;

/// The fields a template may name, in the order `--help` lists them.
pub const FIELDS: &[&str] = &[
    "seq",
    "epoch",
    "account_id",
    "timestamp",
    "timestamp_us",
    "data",
    "origin",
    "id",
];

/// A parsed template: literal text and the fields between it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Seq,
    Epoch,
    AccountId,
    Timestamp,
    TimestampUs,
    Data,
    Origin,
    Id,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` names no field.
    #[error("unknown field {{{0}}} (known: {known})", known = known_fields())]
    UnknownField(String),
    /// A `{` without its `}`.
    #[error("{{ at byte {0} is not closed (write {{{{ for a literal brace)")]
    Unclosed(usize),
    /// A `}` that closes nothing.
    #[error("}} at byte {0} closes nothing (write }}}} for a literal brace)")]
    Unopened(usize),
}

fn known_fields() -> String {
    FIELDS
        .iter()
        .map(|f| format!("{{{f}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Field {
    fn named(name: &str) -> Option<Field> {
        Some(match name {
            "seq" => Field::Seq,
            "epoch" => Field::Epoch,
            "account_id" => Field::AccountId,
            "timestamp" => Field::Timestamp,
            "timestamp_us" => Field::TimestampUs,
            "data" => Field::Data,
            "origin" => Field::Origin,
            "id" => Field::Id,
            _ => return None,
        })
    }
}

impl Template {
    /// Reads `{field}` placeholders and literal text; `{{` and `}}` are literal braces.
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = template.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, c)| c == '{').is_some() => text.push('{'),
                '}' if chars.next_if(|&(_, c)| c == '}').is_some() => text.push('}'),
                '}' => return Err(TemplateError::Unopened(at)),
                '{' => {
                    let rest = &template[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unclosed(at))?;
                    let name = &rest[..end];
                    let field = Field::named(name.trim())
                        .ok_or_else(|| TemplateError::UnknownField(name.to_owned()))?;
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(field));
                    while chars.next_if(|&(i, _)| i <= at + 1 + end).is_some() {}
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// One event as a line of this template. `{data}` and `{origin}` are printed unquoted,
    /// with control characters escaped (`\n`, `\t`, `\u{1b}`), so an event is one line.
    pub fn render(&self, epoch: u64, seq: u64, event: &Event) -> String {
        let mut line = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => line.push_str(text),
                Part::Field(field) => push_field(&mut line, *field, epoch, seq, event),
            }
        }
        line
    }
}

fn push_field(line: &mut String, field: Field, epoch: u64, seq: u64, event: &Event) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = match field {
        Field::Seq => write!(line, "{seq}"),
        Field::Epoch => write!(line, "{epoch}"),
        Field::AccountId => write!(line, "{}", event.account_id),
        Field::Timestamp => match timestamp(event.timestamp_us) {
            Some(ts) => write!(line, "{ts}"),
            None => write!(line, "timestamp_us={}", event.timestamp_us),
        },
        Field::TimestampUs => write!(line, "{}", event.timestamp_us),
        Field::Data => write!(line, "{}", Unbroken(&event.data)),
        Field::Origin => write!(line, "{}", Unbroken(&event.origin)),
        Field::Id => write!(line, "{}", event.id),
    };
}

/// A string as it is, but for control characters, escaped as Rust escapes them.
struct Unbroken<'a>(&'a str);

impl std::fmt::Display for Unbroken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() {
                for escaped in c.escape_debug() {
                    f.write_char(escaped)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        Event {
            account_id: 5,
            timestamp_us: 1_795_341_600_123_456,
            data: data.into(),
            origin: "ingest-1".into(),
            id: 7,
        }
    }

    fn render(template: &str, data: &str) -> String {
        Template::parse(template)
            .unwrap()
            .render(9, 123, &event(data))
    }

    #[test]
    fn every_field_is_filled_in() {
        let all = FIELDS
            .iter()
            .map(|f| format!("{{{f}}}"))
            .collect::<Vec<_>>()
            .join("|");
        assert_eq!(
            render(&all, "hi"),
            "123|9|5|2026-11-22T10:00:00.123456Z|1795341600123456|hi|ingest-1|7"
        );
        assert_eq!(
            render("{timestamp} {account_id} {data}", "a b"),
            "2026-11-22T10:00:00.123456Z 5 a b"
        );
    }

    #[test]
    fn braces_double_and_data_stays_on_one_line() {
        assert_eq!(render("{{{ data }}}", "x"), "{x}");
        assert_eq!(render("é{data}", "a\nb\t\u{1b}é"), "éa\\nb\\t\\u{1b}é");
        assert_eq!(render("", "x"), "");
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(
            Template::parse("{acount}"),
            Err(TemplateError::UnknownField("acount".into()))
        );
        assert!(
            TemplateError::UnknownField("x".into())
                .to_string()
                .contains("{account_id}")
        );
        assert_eq!(Template::parse("a {data"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("a } b"), Err(TemplateError::Unopened(2)));
        assert_eq!(
            Template::parse("{}"),
            Err(TemplateError::UnknownField("".into()))
        );
    }
}

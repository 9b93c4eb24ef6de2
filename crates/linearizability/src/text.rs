//! A line-oriented text format for histories (fixtures, post-mortems).
//!
//! ```text
//! raftkv-history v1
//! # comments and blank lines are ignored; so is anything after a '#'
//! client=1 key=0x6b31 shard=0 call=100 ret=250 put value=0x6331 -> ok version=5 prev_version=0
//! client=2 key=0x6b31 shard=0 call=120 ret=300 get -> ok found=true value=0x6331 version=5 applied_index=5
//! client=3 key=0x6b31 shard=none call=130 ret=900 delete -> ambiguous
//! client=4 key=0x6b31 shard=0 call=140 ret=150 cas expected=absent value=0x6332 -> ok succeeded=false version=5
//! client=4 key=0x6b31 shard=0 call=160 ret=170 cas expected=5 value=none -> failed
//! ```
//!
//! The first line that is not blank or a comment must be the header
//! `raftkv-history v1`. Each operation is one line of space-separated fields
//! in the order shown. Bytes are `0x` followed by lowercase (on input, either
//! case) hex digits; `value=none` is a CAS delete. The output's kind is told
//! by its first field: `found` (get), `version` (put), `existed` (delete),
//! `succeeded` (cas). [`to_text`] appends a comment with the key and values
//! as text when they are printable, for the human reader.
//!
//! Parsing never panics: any malformed line is a [`ParseError`] with its line
//! number.

use std::fmt::{self, Write as _};

use crate::{Bytes, Expected, Input, Operation, Outcome, Output};

/// The header line.
pub const HEADER: &str = "raftkv-history v1";

/// A malformed history text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Writes a history, one operation per line, after the header.
pub fn to_text(history: &[Operation]) -> String {
    let mut s = String::new();
    s.push_str(HEADER);
    s.push('\n');
    for op in history {
        write_op(&mut s, op);
        s.push('\n');
    }
    s
}

fn write_op(s: &mut String, op: &Operation) {
    let _ = write!(s, "client={} key={} shard=", op.client, Hex(&op.key));
    match op.shard {
        Some(shard) => {
            let _ = write!(s, "{shard}");
        }
        None => s.push_str("none"),
    }
    let _ = write!(s, " call={} ret={} ", op.call, op.ret);
    match &op.input {
        Input::Get => s.push_str("get"),
        Input::Put { value } => {
            let _ = write!(s, "put value={}", Hex(value));
        }
        Input::Delete => s.push_str("delete"),
        Input::Cas { expected, value } => {
            s.push_str("cas expected=");
            match expected {
                Expected::Absent => s.push_str("absent"),
                Expected::Version(v) => {
                    let _ = write!(s, "{v}");
                }
            }
            match value {
                Some(value) => {
                    let _ = write!(s, " value={}", Hex(value));
                }
                None => s.push_str(" value=none"),
            }
        }
    }
    s.push_str(" -> ");
    match &op.outcome {
        Outcome::Failed => s.push_str("failed"),
        Outcome::Ambiguous => s.push_str("ambiguous"),
        Outcome::Ok(out) => {
            s.push_str("ok ");
            let _ = match out {
                Output::Get {
                    found,
                    value,
                    version,
                    applied_index,
                } => write!(
                    s,
                    "found={found} value={} version={version} applied_index={applied_index}",
                    Hex(value)
                ),
                Output::Put { version, prev_version } => write!(s, "version={version} prev_version={prev_version}"),
                Output::Delete { existed, prev_version } => {
                    write!(s, "existed={existed} prev_version={prev_version}")
                }
                Output::Cas { succeeded, version } => write!(s, "succeeded={succeeded} version={version}"),
            };
        }
    }
    // A readable echo, when everything is printable.
    let mut texts = vec![op.key.as_slice()];
    match &op.input {
        Input::Put { value } | Input::Cas { value: Some(value), .. } => texts.push(value),
        _ => {}
    }
    if let Outcome::Ok(Output::Get { found: true, value, .. }) = &op.outcome {
        texts.push(value);
    }
    if texts
        .iter()
        .all(|t| t.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'))
    {
        let shown: Vec<String> = texts.iter().map(|t| Bytes(t).to_string()).collect();
        let _ = write!(s, "  # {}", shown.join(" "));
    }
}

/// Reads a history written by [`to_text`] (or by hand).
pub fn from_text(text: &str) -> Result<Vec<Operation>, ParseError> {
    let mut ops = Vec::new();
    let mut header = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        if !header {
            if content != HEADER {
                return Err(ParseError {
                    line,
                    message: format!("expected the header {HEADER:?}"),
                });
            }
            header = true;
            continue;
        }
        ops.push(parse_op(content).map_err(|message| ParseError { line, message })?);
    }
    if !header {
        let line = text.lines().count().max(1);
        return Err(ParseError {
            line,
            message: format!("missing the header {HEADER:?}"),
        });
    }
    Ok(ops)
}

/// The tokens of one line.
struct Tokens<'a> {
    it: std::str::SplitWhitespace<'a>,
}

impl<'a> Tokens<'a> {
    fn next(&mut self, what: &str) -> Result<&'a str, String> {
        self.it
            .next()
            .ok_or_else(|| format!("line ends where {what} was expected"))
    }

    /// The value of a `name=value` token.
    fn field(&mut self, name: &str) -> Result<&'a str, String> {
        let t = self.next(&format!("{name}=..."))?;
        match t.split_once('=') {
            Some((n, v)) if n == name => Ok(v),
            _ => Err(format!("expected {name}=..., found {t:?}")),
        }
    }

    fn word(&mut self, word: &str) -> Result<(), String> {
        let t = self.next(&format!("{word:?}"))?;
        if t == word {
            Ok(())
        } else {
            Err(format!("expected {word:?}, found {t:?}"))
        }
    }

    fn u64(&mut self, name: &str) -> Result<u64, String> {
        number(name, self.field(name)?)
    }

    fn bool(&mut self, name: &str) -> Result<bool, String> {
        match self.field(name)? {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(format!("{name}: expected true or false, found {v:?}")),
        }
    }

    fn bytes(&mut self, name: &str) -> Result<Vec<u8>, String> {
        hex(name, self.field(name)?)
    }

    fn end(&mut self) -> Result<(), String> {
        match self.it.next() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {t:?} at the end of the line")),
        }
    }
}

fn parse_op(content: &str) -> Result<Operation, String> {
    let mut t = Tokens {
        it: content.split_whitespace(),
    };
    let client = t.u64("client")?;
    let key = t.bytes("key")?;
    let shard = match t.field("shard")? {
        "none" => None,
        v => Some(
            v.parse::<u32>()
                .map_err(|_| format!("shard: expected a number or none, found {v:?}"))?,
        ),
    };
    let call = t.u64("call")?;
    let ret = t.u64("ret")?;
    let input = match t.next("an operation (get, put, delete, cas)")? {
        "get" => Input::Get,
        "put" => Input::Put {
            value: t.bytes("value")?,
        },
        "delete" => Input::Delete,
        "cas" => {
            let expected = match t.field("expected")? {
                "absent" => Expected::Absent,
                v => Expected::Version(number("expected", v)?),
            };
            let value = match t.field("value")? {
                "none" => None,
                v => Some(hex("value", v)?),
            };
            Input::Cas { expected, value }
        }
        other => return Err(format!("unknown operation {other:?}")),
    };
    t.word("->")?;
    let outcome = match t.next("an outcome (ok, failed, ambiguous)")? {
        "failed" => Outcome::Failed,
        "ambiguous" => Outcome::Ambiguous,
        "ok" => {
            let first = t.it.clone().next().and_then(|f| f.split_once('=')).map(|(n, _)| n);
            Outcome::Ok(match first {
                Some("found") => Output::Get {
                    found: t.bool("found")?,
                    value: t.bytes("value")?,
                    version: t.u64("version")?,
                    applied_index: t.u64("applied_index")?,
                },
                Some("version") => Output::Put {
                    version: t.u64("version")?,
                    prev_version: t.u64("prev_version")?,
                },
                Some("existed") => Output::Delete {
                    existed: t.bool("existed")?,
                    prev_version: t.u64("prev_version")?,
                },
                Some("succeeded") => Output::Cas {
                    succeeded: t.bool("succeeded")?,
                    version: t.u64("version")?,
                },
                _ => return Err("ok: expected found=, version=, existed= or succeeded=".into()),
            })
        }
        other => return Err(format!("unknown outcome {other:?}")),
    };
    t.end()?;
    Ok(Operation {
        client,
        key,
        shard,
        input,
        call,
        ret,
        outcome,
    })
}

fn number(name: &str, v: &str) -> Result<u64, String> {
    // `u64::from_str` accepts a leading '+'; the format does not.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name}: expected a number, found {v:?}"));
    }
    v.parse::<u64>()
        .map_err(|_| format!("{name}: number out of range: {v:?}"))
}

fn hex(name: &str, v: &str) -> Result<Vec<u8>, String> {
    let digits = v
        .strip_prefix("0x")
        .ok_or_else(|| format!("{name}: expected 0x followed by hex, found {v:?}"))?;
    if digits.len() % 2 != 0 {
        return Err(format!("{name}: odd number of hex digits in {v:?}"));
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(format!("{name}: not a hex digit in {v:?}")),
    };
    digits
        .as_bytes()
        .chunks_exact(2)
        .map(|p| Ok((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

/// Bytes as `0x` + lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Operation> {
        let op = |client, key: &[u8], shard, input, call, ret, outcome| Operation {
            client,
            key: key.to_vec(),
            shard,
            input,
            call,
            ret,
            outcome,
        };
        vec![
            op(
                1,
                b"k1",
                Some(0),
                Input::Put {
                    value: b"c1-1".to_vec(),
                },
                100,
                250,
                Outcome::Ok(Output::Put {
                    version: 5,
                    prev_version: 0,
                }),
            ),
            op(
                2,
                b"k1",
                Some(0),
                Input::Get,
                120,
                300,
                Outcome::Ok(Output::Get {
                    found: true,
                    value: b"c1-1".to_vec(),
                    version: 5,
                    applied_index: 9,
                }),
            ),
            op(
                3,
                b"",
                None,
                Input::Get,
                0,
                0,
                Outcome::Ok(Output::Get {
                    found: false,
                    value: vec![],
                    version: 0,
                    applied_index: 0,
                }),
            ),
            op(
                4,
                &[0, 0xff, b'#', b'\n'],
                Some(u32::MAX),
                Input::Delete,
                7,
                6,
                Outcome::Ambiguous,
            ),
            op(
                u64::MAX,
                b"k2",
                Some(3),
                Input::Cas {
                    expected: Expected::Absent,
                    value: Some(vec![]),
                },
                1,
                u64::MAX,
                Outcome::Failed,
            ),
            op(
                5,
                b"k2",
                Some(3),
                Input::Cas {
                    expected: Expected::Version(u64::MAX),
                    value: None,
                },
                1,
                2,
                Outcome::Ok(Output::Cas {
                    succeeded: true,
                    version: 0,
                }),
            ),
            op(
                6,
                b"k\"2",
                Some(3),
                Input::Delete,
                1,
                2,
                Outcome::Ok(Output::Delete {
                    existed: true,
                    prev_version: 4,
                }),
            ),
            // An output of the wrong kind still round-trips.
            op(
                7,
                b"k2",
                Some(3),
                Input::Get,
                1,
                2,
                Outcome::Ok(Output::Cas {
                    succeeded: false,
                    version: 4,
                }),
            ),
        ]
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let text = to_text(&h);
        assert!(text.starts_with("raftkv-history v1\n"), "{text}");
        assert!(
            text.contains("put value=0x63312d31 -> ok version=5 prev_version=0"),
            "{text}"
        );
        assert!(text.contains("# \"k1\" \"c1-1\""), "{text}");
        assert_eq!(from_text(&text), Ok(h.clone()));
        assert_eq!(from_text(&to_text(&[])), Ok(vec![]));
        // Comments, blank lines, upper-case hex and extra spaces are fine.
        let hand = format!(
            "# a fixture\n\n  {HEADER}  \n\n# nothing\n{}\n",
            to_text(&h[..1]).lines().nth(1).unwrap_or("")
        );
        assert_eq!(from_text(&hand), Ok(h[..1].to_vec()));
        let upper = "raftkv-history v1\nclient=1 key=0x6B31 shard=0 call=1 ret=2   get   -> failed # x\n";
        assert_eq!(from_text(upper).map(|o| o[0].key.clone()), Ok(b"k1".to_vec()));
    }

    #[test]
    fn malformed_input_is_an_error_with_its_line() {
        let good = "client=1 key=0x6b shard=0 call=1 ret=2 put value=0x61 -> ok version=5 prev_version=0";
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "missing the header"),
            ("# only comments\n\n", 2, "missing the header"),
            ("raftkv-history v2\n", 1, "expected the header"),
            (good, 1, "expected the header"),
            ("raftkv-history v1\n\nnonsense\n", 3, "expected client="),
            (
                "raftkv-history v1\nclient=1 key=0x6 shard=0 call=1 ret=2 get -> failed",
                2,
                "odd number",
            ),
            (
                "raftkv-history v1\nclient=1 key=6b shard=0 call=1 ret=2 get -> failed",
                2,
                "expected 0x",
            ),
            (
                "raftkv-history v1\nclient=1 key=0xzz shard=0 call=1 ret=2 get -> failed",
                2,
                "not a hex digit",
            ),
            (
                "raftkv-history v1\nclient=-1 key=0x shard=0 call=1 ret=2 get -> failed",
                2,
                "expected a number",
            ),
            (
                "raftkv-history v1\nclient=+1 key=0x shard=0 call=1 ret=2 get -> failed",
                2,
                "expected a number",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=99999999999999999999 ret=2 get -> failed",
                2,
                "out of range",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=x call=1 ret=2 get -> failed",
                2,
                "shard",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 scan -> failed",
                2,
                "unknown operation",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get -> maybe",
                2,
                "unknown outcome",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get -> failed extra",
                2,
                "unexpected",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get failed",
                2,
                "expected \"->\"",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get ->",
                2,
                "line ends",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get -> ok",
                2,
                "ok: expected",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get -> ok found=yes",
                2,
                "true or false",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 get -> ok found=true value=0x version=1",
                2,
                "line ends",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 cas expected=x value=none -> failed",
                2,
                "expected",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x call=1 shard=0 ret=2 get -> failed",
                2,
                "expected shard=",
            ),
            (
                "raftkv-history v1\nclient=1 key=0x shard=0 call=1 ret=2 put -> failed",
                2,
                "expected value=",
            ),
            (
                "raftkv-history v1\nclient==1 key=0x shard=0 call=1 ret=2 get -> failed",
                2,
                "expected a number",
            ),
        ];
        for (text, line, needle) in cases {
            match from_text(text) {
                Err(e) => {
                    assert_eq!(e.line, *line, "{text:?}: {e}");
                    assert!(e.message.contains(needle), "{text:?}: {e}");
                }
                Ok(ops) => panic!("{text:?} parsed: {ops:?}"),
            }
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let base = to_text(&sample());
        let mut rng = StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "0123456789abcdefx=->#\n okfailedambiguousnone\u{e9}\u{1F600}"
            .chars()
            .collect();
        for _ in 0..2000 {
            let mut chars: Vec<char> = base.chars().collect();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..chars.len());
                match rng.random_range(0..3) {
                    0 => {
                        chars.remove(at);
                    }
                    1 => chars.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => chars.truncate(at),
                }
                if chars.is_empty() {
                    break;
                }
            }
            let text: String = chars.into_iter().collect();
            // Either outcome is fine; a panic fails the test.
            if let Ok(ops) = from_text(&text) {
                assert_eq!(from_text(&to_text(&ops)), Ok(ops));
            }
        }
        // Plain garbage after a valid header.
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..rng.random_range(0..200)).map(|_| rng.random()).collect();
            let text = format!("{HEADER}\n{}", String::from_utf8_lossy(&bytes));
            if let Ok(ops) = from_text(&text) {
                assert_eq!(from_text(&to_text(&ops)), Ok(ops));
            }
        }
    }
}

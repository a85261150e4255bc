//! A number or boolean key's value as the Python version read it: PyYAML (`yaml.safe_load`,
//! YAML 1.1) made the scalar a Python value, then pydantic (v2, lax mode) made that value the
//! field's type. Pure: no I/O, no YAML library.
//!
//! The two steps matter apart. To YAML 1.1 a plain `010` is the octal 8, `0x10` 16, `0b1010`
//! 10, `1_000` 1000 and `1:30` (base 60) 90, while `0o10`, `1e3` and anything quoted is text;
//! pydantic then reads text its own way (`'010'` is 10, `'1e3'` a float but no int, `'0x10'`
//! neither) and takes 1 and 0 (not `'1.0'`) for a boolean.

/// How a value is written, as far as PyYAML's reading of it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Form {
    /// A YAML core tag written on the value (`!!int 5`); `None` for none.
    pub(crate) tag: Option<Tag>,
    /// Written plain (no quotes, no `|` or `>` block): only then does YAML 1.1 read it as a
    /// number, boolean or null.
    pub(crate) plain: bool,
}

impl Form {
    /// A plain value with no tag: `timeout_secs: 5`.
    pub(crate) const PLAIN: Form = Form {
        tag: None,
        plain: true,
    };
}

/// The core tags a number or boolean key's value may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    Int,
    Float,
    Bool,
    Str,
}

impl Tag {
    /// `int`, `float`, `bool` or `str`: the suffix of `tag:yaml.org,2002:`.
    pub(crate) fn from_suffix(suffix: &str) -> Option<Tag> {
        match suffix {
            "int" => Some(Tag::Int),
            "float" => Some(Tag::Float),
            "bool" => Some(Tag::Bool),
            "str" => Some(Tag::Str),
            _ => None,
        }
    }
}

/// A Python value PyYAML made of a scalar.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(Int),
    Float(f64),
    Str(String),
}

/// A Python int, which has no bound: its sign, its magnitude when it fits 128 bits, and the
/// nearest float (infinite past every float).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Int {
    pub(crate) negative: bool,
    pub(crate) magnitude: Option<u128>,
    pub(crate) float: f64,
}

/// `text` as PyYAML read it written in `form`; `None` where PyYAML refused it (a tag its
/// constructor cannot read: `!!int 5.5`, `!!bool 1`).
pub(crate) fn yaml_value(text: &str, form: Form) -> Option<Value> {
    match form.tag {
        Some(Tag::Int) => construct_int(text).map(Value::Int),
        Some(Tag::Float) => construct_float(text).map(Value::Float),
        Some(Tag::Bool) => construct_bool(text).map(Value::Bool),
        Some(Tag::Str) => Some(Value::Str(text.to_owned())),
        None if form.plain => Some(resolve_plain(text)),
        None => Some(Value::Str(text.to_owned())),
    }
}

/// A plain scalar, by PyYAML's implicit resolvers (YAML 1.1).
fn resolve_plain(text: &str) -> Value {
    const BOOLS: [(&str, bool); 18] = [
        ("yes", true),
        ("Yes", true),
        ("YES", true),
        ("no", false),
        ("No", false),
        ("NO", false),
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("false", false),
        ("False", false),
        ("FALSE", false),
        ("on", true),
        ("On", true),
        ("ON", true),
        ("off", false),
        ("Off", false),
        ("OFF", false),
    ];
    if let Some((_, value)) = BOOLS.iter().find(|(word, _)| *word == text) {
        return Value::Bool(*value);
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if is_yaml11_int(text) {
        if let Some(int) = construct_int(text) {
            return Value::Int(int);
        }
    } else if is_yaml11_float(text) {
        if let Some(float) = construct_float(text) {
            return Value::Float(float);
        }
    }
    Value::Str(text.to_owned())
}

/// `s` without a leading `+` or `-`, and whether it was `-`.
fn sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

/// `s` is one or more of the bytes `allowed` accepts.
fn all(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.bytes().all(allowed)
}

/// `[0-9][0-9_]*`.
fn digits_from_digit(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'_')
}

/// `(?::[0-5]?[0-9])+`, the base-60 parts after the first.
fn sexagesimal_tail(parts: &[&str]) -> bool {
    !parts.is_empty()
        && parts.iter().all(|part| match part.as_bytes() {
            [d] => d.is_ascii_digit(),
            [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
            _ => false,
        })
}

/// PyYAML's int resolver: `[-+]?0b[0-1_]+ | [-+]?0[0-7_]+ | [-+]?(0|[1-9][0-9_]*) |
/// [-+]?0x[0-9a-fA-F_]+ | [-+]?[1-9][0-9_]*(:[0-5]?[0-9])+`.
fn is_yaml11_int(text: &str) -> bool {
    let (_, rest) = sign(text);
    if let Some(bits) = rest.strip_prefix("0b") {
        return all(bits, |b| matches!(b, b'0' | b'1' | b'_'));
    }
    if let Some(hex) = rest.strip_prefix("0x") {
        return all(hex, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if rest == "0" {
        return true;
    }
    if let Some(octal) = rest.strip_prefix('0') {
        return all(octal, |b| matches!(b, b'0'..=b'7' | b'_'));
    }
    let mut parts = rest.split(':');
    let first = parts.next().unwrap_or_default();
    let tail: Vec<&str> = parts.collect();
    let decimal = first
        .as_bytes()
        .first()
        .is_some_and(|b| (b'1'..=b'9').contains(b))
        && first.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    decimal && (tail.is_empty() || sexagesimal_tail(&tail))
}

/// PyYAML's float resolver: `[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)? |
/// \.[0-9][0-9_]*([eE][-+][0-9]+)? | [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]* |
/// [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)`. (`1e3` is none: text.)
fn is_yaml11_float(text: &str) -> bool {
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (signed, rest) = sign(text);
    if matches!(rest, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    // `[0-9_]*([eE][-+][0-9]+)?` after the dot.
    let fraction_and_exponent = |s: &str| {
        let (fraction, exponent) = match s.find(['e', 'E']) {
            Some(at) => (&s[..at], Some(&s[at + 1..])),
            None => (s, None),
        };
        fraction.bytes().all(|b| b.is_ascii_digit() || b == b'_')
            && exponent.is_none_or(|e| {
                let (_, digits) = sign(e);
                matches!(e.as_bytes().first(), Some(b'-' | b'+'))
                    && all(digits, |b| b.is_ascii_digit())
            })
    };
    let Some((whole, after)) = rest.split_once('.') else {
        return false;
    };
    if whole.is_empty() {
        // `\.[0-9][0-9_]*(...)`: no sign allowed.
        return !signed
            && text.starts_with('.')
            && after.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && fraction_and_exponent(after);
    }
    if digits_from_digit(whole) {
        return fraction_and_exponent(after);
    }
    let mut parts = whole.split(':');
    let first = parts.next().unwrap_or_default();
    let tail: Vec<&str> = parts.collect();
    digits_from_digit(first)
        && sexagesimal_tail(&tail)
        && after.bytes().all(|b| b.is_ascii_digit() || b == b'_')
}

/// PyYAML's `construct_yaml_int`: `_` dropped, a sign, then `0b` binary, `0x` hex, a leading
/// `0` octal (Python's `int(s, 8)`, which takes a `0o` too), `:` base 60, else decimal.
fn construct_int(text: &str) -> Option<Int> {
    let value: String = text.chars().filter(|&c| c != '_').collect();
    let (negative, value) = sign(&value);
    let (radix, digits) = if value == "0" {
        (10, "0")
    } else if let Some(bits) = value.strip_prefix("0b") {
        (2, bits)
    } else if let Some(hex) = value.strip_prefix("0x") {
        (16, hex)
    } else if value.starts_with('0') {
        let octal = value.trim_matches(PY_SPACE);
        (8, octal.strip_prefix("0o").unwrap_or(octal))
    } else if value.contains(':') {
        let mut total = Int {
            negative,
            magnitude: Some(0),
            float: 0.0,
        };
        for part in value.split(':') {
            let part = python_int(part, 10)?;
            total.magnitude = total
                .magnitude
                .and_then(|m| m.checked_mul(60)?.checked_add(part.magnitude?));
            total.float = total.float * 60.0 + part.float;
        }
        total.float = total.magnitude.map_or(total.float, |m| m as f64);
        return Some(total);
    } else {
        (10, value)
    };
    let mut int = python_int(digits, radix)?;
    int.negative = negative && int.float != 0.0;
    Some(int)
}

/// White space Python's `int()` and `float()` strip around a number.
const PY_SPACE: [char; 6] = [' ', '\t', '\n', '\r', '\x0b', '\x0c'];

/// Python's `int(s, radix)` (no sign; PyYAML took it off): digits of the radix, white space
/// around them.
fn python_int(s: &str, radix: u32) -> Option<Int> {
    let s = s.trim_matches(PY_SPACE);
    if s.is_empty() {
        return None;
    }
    let mut magnitude = Some(0u128);
    let mut float = 0.0f64;
    for c in s.chars() {
        let digit = c.to_digit(radix)?;
        magnitude = magnitude.and_then(|m| {
            m.checked_mul(u128::from(radix))?
                .checked_add(u128::from(digit))
        });
        float = float * f64::from(radix) + f64::from(digit);
    }
    Some(Int {
        negative: false,
        magnitude,
        // Rounded once, as Python's `float(int)` is, where it fits.
        float: magnitude.map_or(float, |m| m as f64),
    })
}

/// PyYAML's `construct_yaml_float`: `_` dropped, lower case, a sign, `.inf`, `.nan`, `:` base
/// 60, else Python's `float()`.
fn construct_float(text: &str) -> Option<f64> {
    let value: String = text
        .chars()
        .filter(|&c| c != '_')
        .collect::<String>()
        .to_lowercase();
    let (negative, value) = sign(&value);
    let magnitude = match value {
        ".inf" => f64::INFINITY,
        ".nan" => return Some(f64::NAN),
        _ if value.contains(':') => {
            let mut total = 0.0;
            for part in value.split(':') {
                total = total * 60.0 + python_float(part)?;
            }
            total
        }
        _ => python_float(value)?,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// PyYAML's `construct_yaml_bool`: one of its six words, in any case.
fn construct_bool(text: &str) -> Option<bool> {
    match text.to_lowercase().as_str() {
        "yes" | "true" | "on" => Some(true),
        "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Python's `float(s)`: white space around, a sign, digits with a `.` and an exponent, or
/// `inf`, `infinity` or `nan` in any case; `1e400` is infinite.
fn python_float(s: &str) -> Option<f64> {
    let s = s.trim_matches(PY_SPACE);
    let (_, unsigned) = sign(s);
    let word = unsigned.to_ascii_lowercase();
    let spelled = matches!(word.as_str(), "inf" | "infinity" | "nan")
        || (unsigned.bytes().any(|b| b.is_ascii_digit())
            && unsigned
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')));
    if !spelled {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Digits with single `_` between them, as Python's number syntax (and pydantic's) allows:
/// the text without them, or `None` when an `_` is elsewhere.
fn without_underscores(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let between = i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !between {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

/// pydantic's float: a bool as 1 or 0 is refused here on purpose (`timeout_secs: yes` as one
/// second is no setting anyone means), an int as the nearest float (one past every float
/// refused, as pydantic did), text as Python's `float()` reads it (`'1e3'`, `' 5 '`, `'inf'`,
/// `'1_000'`).
pub(crate) fn to_float(value: &Value) -> Option<f64> {
    match value {
        Value::Float(f) => Some(*f),
        Value::Int(int) if int.float.is_finite() => {
            Some(if int.negative { -int.float } else { int.float })
        }
        Value::Str(s) => python_float(&without_underscores(s.trim_matches(PY_SPACE))?),
        Value::Int(_) | Value::Bool(_) | Value::Null => None,
    }
}

/// A whole number as pydantic's int takes one, unbounded: its sign and magnitude (`None`
/// past 128 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Whole {
    pub(crate) negative: bool,
    pub(crate) magnitude: Option<u128>,
}

/// pydantic's int: an int, a float with no fraction, text of digits (a sign, `_` between
/// digits, white space around, a fraction of zeros: `'5.0'`; not `'0x10'`, `'1e3'`, `'5.'`).
/// A bool is refused on purpose, as [`to_float`] says.
pub(crate) fn to_whole(value: &Value) -> Option<Whole> {
    match value {
        Value::Int(int) => Some(Whole {
            negative: int.negative,
            magnitude: int.magnitude,
        }),
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => Some(Whole {
            negative: *f < 0.0,
            // A float this large is a whole number past 128 bits only above 3.4e38.
            magnitude: (f.abs() < 3.4e38).then_some(f.abs() as u128),
        }),
        Value::Str(s) => {
            let s = s.trim_matches(PY_SPACE);
            let (negative, unsigned) = sign(s);
            let (whole, fraction) = match unsigned.split_once('.') {
                Some((whole, fraction)) => (whole, Some(fraction)),
                None => (unsigned, None),
            };
            if fraction.is_some_and(|f| f.is_empty() || f.bytes().any(|b| b != b'0')) {
                return None;
            }
            if !whole.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let int = python_int(&without_underscores(whole)?, 10)?;
            Some(Whole {
                negative: negative && int.float != 0.0,
                magnitude: int.magnitude,
            })
        }
        Value::Float(_) | Value::Bool(_) | Value::Null => None,
    }
}

/// pydantic's bool: a bool, the int or float 1 or 0, or text that is one of `true`, `false`,
/// `yes`, `no`, `on`, `off`, `t`, `f`, `y`, `n`, `1`, `0` in any case (no white space
/// around: `'1.0'` and `' true'` are refused).
pub(crate) fn to_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Int(int) => match int.magnitude {
            Some(0) => Some(false),
            Some(1) if !int.negative => Some(true),
            _ => None,
        },
        Value::Float(f) if *f == 0.0 => Some(false),
        Value::Float(f) if *f == 1.0 => Some(true),
        Value::Str(s) => match s.to_lowercase().as_str() {
            "true" | "yes" | "on" | "t" | "y" | "1" => Some(true),
            "false" | "no" | "off" | "f" | "n" | "0" => Some(false),
            _ => None,
        },
        Value::Float(_) | Value::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted() -> Form {
        Form {
            tag: None,
            plain: false,
        }
    }

    fn tagged(tag: Tag) -> Form {
        Form {
            tag: Some(tag),
            plain: true,
        }
    }

    fn float(text: &str, form: Form) -> Option<f64> {
        to_float(&yaml_value(text, form)?)
    }

    fn whole(text: &str, form: Form) -> Option<u128> {
        let whole = to_whole(&yaml_value(text, form)?)?;
        assert!(!whole.negative, "{text}");
        whole.magnitude
    }

    fn boolean(text: &str, form: Form) -> Option<bool> {
        to_bool(&yaml_value(text, form)?)
    }

    /// Each case as PyYAML 6.0 (`safe_load`) then pydantic 2 read it, checked against them:
    /// `timeout_secs` as a float field, `max_body_bytes` as an int one.
    #[test]
    fn numbers_are_read_as_pyyaml_then_pydantic_read_them() {
        let plain = Form::PLAIN;
        for (text, form, expected) in [
            ("0x10", plain, Some(16.0)),
            ("0o10", plain, None),
            ("010", plain, Some(8.0)),
            ("0b1010", plain, Some(10.0)),
            ("1_000", plain, Some(1000.0)),
            ("1__0", plain, Some(10.0)),
            ("0x_1F", plain, Some(31.0)),
            ("1:30", plain, Some(90.0)),
            ("019", plain, Some(19.0)),
            ("+12", plain, Some(12.0)),
            ("1e3", plain, Some(1000.0)),
            ("5.5", plain, Some(5.5)),
            (".5", plain, Some(0.5)),
            ("0.", plain, Some(0.0)),
            ("_1", plain, None),
            ("0xG", plain, None),
            ("0x", plain, None),
            ("0x10", quoted(), None),
            ("010", quoted(), Some(10.0)),
            ("1_000", quoted(), Some(1000.0)),
            ("5.5", quoted(), Some(5.5)),
            ("16", tagged(Tag::Int), Some(16.0)),
            ("010", tagged(Tag::Int), Some(8.0)),
            ("0o10", tagged(Tag::Int), Some(8.0)),
            ("0x10", tagged(Tag::Int), Some(16.0)),
            ("5.5", tagged(Tag::Int), None),
            ("1e3", tagged(Tag::Int), None),
            ("5", tagged(Tag::Float), Some(5.0)),
            ("0x10", tagged(Tag::Float), None),
            ("0x10", tagged(Tag::Str), None),
            ("yes", plain, None),
        ] {
            assert_eq!(float(text, form), expected, "{text} {form:?}");
        }
        assert!(float("1e400", plain).is_some_and(|f| f.is_infinite()));
        assert!(float(".inf", plain).is_some_and(|f| f.is_infinite()));
        assert!(float("nan", plain).is_some_and(f64::is_nan));
        assert_eq!(
            float("99999999999999999999999", plain),
            Some(99999999999999999999999.0)
        );

        for (text, form, expected) in [
            ("0x10", plain, Some(16)),
            ("010", plain, Some(8)),
            ("0b1010", plain, Some(10)),
            ("1_000", plain, Some(1000)),
            ("1:30", plain, Some(90)),
            ("+12", plain, Some(12)),
            ("0o10", plain, None),
            ("1e3", plain, None),
            ("5.5", plain, None),
            ("1e400", plain, None),
            ("0.", plain, Some(0)),
            ("'5'", plain, None),
            ("010", quoted(), Some(10)),
            ("5.0", quoted(), Some(5)),
            ("5.00", quoted(), Some(5)),
            (" 5 ", quoted(), Some(5)),
            ("1_000.0", quoted(), Some(1000)),
            ("5.", quoted(), None),
            ("5.0_0", quoted(), None),
            ("1__0", quoted(), None),
            ("0x10", quoted(), None),
            ("9", tagged(Tag::Float), Some(9)),
            ("5.5", tagged(Tag::Float), None),
            ("0o10", tagged(Tag::Int), Some(8)),
            (
                "99999999999999999999999",
                plain,
                Some(99999999999999999999999),
            ),
        ] {
            assert_eq!(whole(text, form), expected, "{text} {form:?}");
        }
        // Past 128 bits: a whole number all the same, as Python's int is unbounded.
        let huge = "9".repeat(60);
        for form in [plain, quoted()] {
            let value = yaml_value(&huge, form).and_then(|v| to_whole(&v));
            assert_eq!(
                value,
                Some(Whole {
                    negative: false,
                    magnitude: None
                })
            );
        }
        let negative = yaml_value("-5", plain).and_then(|v| to_whole(&v));
        assert_eq!(
            negative,
            Some(Whole {
                negative: true,
                magnitude: Some(5)
            })
        );
    }

    /// `stream_usage`, a bool field, as PyYAML then pydantic read each case.
    #[test]
    fn booleans_are_read_as_pyyaml_then_pydantic_read_them() {
        let plain = Form::PLAIN;
        for (text, form, expected) in [
            ("true", plain, Some(true)),
            ("off", plain, Some(false)),
            ("tRuE", plain, Some(true)),
            ("y", plain, Some(true)),
            ("1", plain, Some(true)),
            ("0", plain, Some(false)),
            ("1.0", plain, Some(true)),
            ("0x1", plain, Some(true)),
            ("0b1", plain, Some(true)),
            ("01", plain, Some(true)),
            ("2", plain, None),
            ("1:0", plain, None),
            ("1e0", plain, None),
            ("0o1", plain, None),
            (".inf", plain, None),
            ("maybe", plain, None),
            ("1.0", quoted(), None),
            ("01", quoted(), None),
            ("1", quoted(), Some(true)),
            ("yes", quoted(), Some(true)),
            ("t", quoted(), Some(true)),
            (" true", quoted(), None),
            ("", quoted(), None),
            ("1", tagged(Tag::Int), Some(true)),
            ("0o1", tagged(Tag::Int), Some(true)),
            ("0", tagged(Tag::Float), Some(false)),
            ("yes", tagged(Tag::Bool), Some(true)),
            ("1", tagged(Tag::Bool), None),
            ("true", tagged(Tag::Str), Some(true)),
            ("1", tagged(Tag::Str), Some(true)),
        ] {
            assert_eq!(boolean(text, form), expected, "{text} {form:?}");
        }
    }
}

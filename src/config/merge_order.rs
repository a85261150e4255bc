//! `<<` merge keys written more than once in one mapping, put in the order PyYAML applies them.
//!
//! PyYAML (which read the Python version's config.yaml) lets the last of several separate
//! `<<` keys win, and within one `<<: [*a, *b]` list the first listed (up to 6.0.3, as the YAML
//! merge spec says; 6.0.4's last-listed is a reported regression); keys written in the mapping
//! itself win over every merge. The YAML library lets the first separate `<<` win. So
//! before the library reads the text, the values of a mapping's separate `<<` keys trade
//! places, last first (`<<: *a` then `<<: *o` is read as `<<: *o` then `<<: *a`): each moved
//! value is one line (an alias or a `[...]`/`{...}`), so every line keeps its number. A value
//! that cannot move so (an indented block, several lines, an anchor or a tag on it) is refused,
//! never read in the other order. Nothing else in the text changes.
//!
//! The same walk notes how each number or boolean key's value is written ([`Forms`]: its core
//! tag, whether it is plain), wherever it is, in a mapping merged in by `<<` too: PyYAML read
//! a plain `010` as the octal 8 and a quoted `'010'` as text, and [`super::typed`] reads each
//! as the Python version did ([`super::python`]). A `!!int`, `!!float` or `!!bool` tag there
//! is taken off, before or after its anchor, written over with spaces so every line and
//! column stays: the YAML library, asked for the value's text, refused it as "a tagged value
//! where text is expected".
//!
//! The same walk refuses a key whose text is written twice in one mapping, with both lines:
//! the YAML library compares keys as YAML values, so `123:` and `'123':` (a number, a text)
//! passed it, and `!!binary YQ==:` beside `a:`, while the router reads every name as its
//! text ([`scalar_text`]). It refuses two spellings of one integer (`0x1F:` and `31:`) too,
//! which the library refuses with no line for the first ([`integer_key`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, StrInput, StructureStyle};

use super::python::{Form, Tag};

/// `text`, with the values of each mapping's separate `<<` keys in reverse order; `text` itself
/// when no mapping has two. Text the YAML parser refuses is given back as it is: the YAML
/// library says why, with the line. The error is `(key path, reason)`, as the config's.
#[cfg(test)]
pub(super) fn in_pyyaml_order(text: &str) -> Result<Cow<'_, str>, (String, String)> {
    read(text).map(|read| read.text)
}

/// Each key written with a tag (`!!str X-Foo:`), by its key path (`servers.a.headers.X-Foo`,
/// the name as the YAML library gives it): how it is spelled, tag and all (`!!str X-Foo`),
/// for a message that names two spellings of one name ([`super::validate`]'s header names
/// that differ only in case) to say it as written, as [`Walk::written_once`] does.
pub(super) type TaggedKeys = HashMap<String, String>;

/// How each number or boolean key's value is written ([`Form`]), by the byte offset where its
/// text starts in the text the YAML library reads ([`Read::text`]), which is where the
/// library locates it.
pub(super) type Forms = HashMap<usize, Form>;

/// What [`read`] gives.
pub(super) struct Read<'a> {
    /// [`in_pyyaml_order`]'s text, the tags [`Forms`] notes taken off.
    pub(super) text: Cow<'a, str>,
    pub(super) tagged: TaggedKeys,
    pub(super) forms: Forms,
}

/// [`in_pyyaml_order`]'s text, with the keys written with a tag ([`TaggedKeys`]) and the
/// forms of the number and boolean keys' values ([`Forms`]).
pub(super) fn read(text: &str) -> Result<Read<'_>, (String, String)> {
    let mut walk = Walk {
        text,
        events: Parser::new_from_str(text),
        path: Vec::new(),
        moves: Vec::new(),
        tagged: HashMap::new(),
        untagged: Vec::new(),
        forms: Vec::new(),
    };
    match walk.stream() {
        Ok(()) => {}
        Err(Stop::Unreadable) => {
            return Ok(Read {
                text: Cow::Borrowed(text),
                tagged: TaggedKeys::new(),
                forms: Forms::new(),
            });
        }
        Err(Stop::Refused(path, reason)) => return Err((path, reason)),
    }
    let tagged = std::mem::take(&mut walk.tagged);
    if walk.moves.is_empty() && walk.untagged.is_empty() {
        return Ok(Read {
            text: Cow::Borrowed(text),
            tagged,
            forms: walk.forms.into_iter().collect(),
        });
    }
    // Each tag taken off is written over with as many spaces: the moves' offsets still hold.
    let mut blanked = text.to_owned();
    for tag in &walk.untagged {
        if let Some(written) = blanked.get(tag.clone()) {
            let spaces = " ".repeat(written.len());
            blanked.replace_range(tag.clone(), &spaces);
        }
    }
    walk.moves.sort_by_key(|m| m.to.start);
    let mut out = String::with_capacity(text.len());
    let mut pieces = Vec::new();
    render(&blanked, &walk.moves, 0..text.len(), &mut out, &mut pieces);
    // A value inside a moved `<<` value is where its piece of text went.
    let forms = walk
        .forms
        .into_iter()
        .filter_map(|(at, form)| {
            let piece = pieces.iter().find(|piece| piece.from.contains(&at))?;
            Some((piece.to + (at - piece.from.start), form))
        })
        .collect();
    Ok(Read {
        text: Cow::Owned(out),
        tagged,
        forms,
    })
}

/// A piece of the text copied by [`render`]: the bytes `from` of the text went to `to` on.
struct Piece {
    from: Range<usize>,
    to: usize,
}

/// The text of `from` (with the moves inside it) goes where `to` was. Byte ranges of `text`.
struct Move {
    to: Range<usize>,
    from: Range<usize>,
}

enum Child<'a> {
    Node(Event<'a>, Span),
    /// The end of the collection, `]` or `}` in flow style (empty in block style).
    End(Span),
}

/// A collection's end: its byte offset and line, and whether it defines an anchor.
fn end(span: Span, anchored: bool) -> Result<(usize, usize, bool), Stop> {
    Ok((offset(span.end.byte_offset())?, span.end.line(), anchored))
}

enum Stop {
    /// The parser refused the text, or gave no byte offsets.
    Unreadable,
    /// A `<<` value that cannot trade places: `(key path, reason)`.
    Refused(String, String),
}

/// One node of the document, as far as a `<<` value needs it.
struct Node {
    range: Range<usize>,
    /// Why this value cannot trade places with another `<<` value; `None` when it can.
    stuck: Option<&'static str>,
    /// A scalar (`<<: ~`): it merges nothing (or is refused by the YAML library), so its place
    /// does not matter.
    scalar: bool,
    /// An anchor is defined in it: moved, it could land after an alias of that anchor.
    anchored: bool,
}

/// A mapping's key as written: where its text is, and its tag as written (`!!str`).
struct Key {
    span: Span,
    tag: Option<String>,
}

struct Walk<'a> {
    text: &'a str,
    events: Parser<'a, StrInput<'a>>,
    /// The keys (and list positions) above the current node, for a refusal's key path.
    path: Vec<String>,
    moves: Vec<Move>,
    tagged: TaggedKeys,
    /// The byte ranges of the tags taken off number keys' values ([`Walk::note_form`]).
    untagged: Vec<Range<usize>>,
    /// The form of each number or boolean key's value, by its byte offset in `text`.
    forms: Vec<(usize, Form)>,
}

impl<'a> Walk<'a> {
    fn stream(&mut self) -> Result<(), Stop> {
        while let Some((event, span)) = self.next()? {
            if is_node_start(&event) {
                self.node(event, span)?;
            }
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, Stop> {
        self.events.next().transpose().map_err(|_| Stop::Unreadable)
    }

    /// The next node's first event, or the end of the collection the walk is in. Comments
    /// and other events that are no node are passed over.
    fn child(&mut self) -> Result<Child<'a>, Stop> {
        loop {
            let Some((event, span)) = self.next()? else {
                return Err(Stop::Unreadable);
            };
            if is_node_start(&event) {
                return Ok(Child::Node(event, span));
            }
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                return Ok(Child::End(span));
            }
        }
    }

    /// Reads the node that `event` starts, to its end.
    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, Stop> {
        let start = offset(span.start.byte_offset())?;
        let line = span.start.line();
        let (anchor, tagged, flow) = match &event {
            Event::Scalar(_, _, anchor, _) => {
                return Ok(Node {
                    range: start..offset(span.end.byte_offset())?,
                    stuck: None,
                    scalar: true,
                    anchored: *anchor != 0,
                });
            }
            Event::Alias(_) => {
                return Ok(Node {
                    range: start..offset(span.end.byte_offset())?,
                    stuck: None,
                    scalar: false,
                    anchored: false,
                });
            }
            Event::SequenceStart(style, anchor, tag) | Event::MappingStart(style, anchor, tag) => {
                (*anchor != 0, tag.is_some(), *style == StructureStyle::Flow)
            }
            _ => return Err(Stop::Unreadable),
        };
        let (end, end_line, anchored) = match event {
            Event::MappingStart(..) => self.mapping()?,
            _ => self.sequence()?,
        };
        let stuck = if !flow {
            Some("is an indented block")
        } else if end_line != line {
            Some("spans several lines")
        } else if anchor || anchored {
            Some("defines an anchor (&name)")
        } else if tagged {
            Some("has a tag")
        } else {
            None
        };
        Ok(Node {
            range: start..end,
            stuck,
            scalar: false,
            anchored: anchor || anchored,
        })
    }

    /// Reads a sequence's items: where it ends (byte offset, line), whether it defines an
    /// anchor.
    fn sequence(&mut self) -> Result<(usize, usize, bool), Stop> {
        let mut anchored = false;
        let mut index = 0;
        loop {
            let (event, span) = match self.child()? {
                Child::Node(event, span) => (event, span),
                Child::End(span) => return end(span, anchored),
            };
            self.path.push(format!("[{index}]"));
            anchored |= self.node(event, span)?.anchored;
            self.path.pop();
            index += 1;
        }
    }

    /// Reads a mapping's entries, and puts the values of its separate `<<` keys last first.
    fn mapping(&mut self) -> Result<(usize, usize, bool), Stop> {
        let mut anchored = false;
        let mut merges = Vec::new();
        let mut written = HashMap::new();
        let mut numbers = HashMap::new();
        loop {
            let (key_event, key_span) = match self.child()? {
                Child::Node(event, span) => (event, span),
                Child::End(span) => {
                    if merges.len() > 1 {
                        self.reverse(&merges)?;
                    }
                    return end(span, anchored);
                }
            };
            let is_merge = is_merge_key(&key_event);
            let key_line = key_span.start.line();
            let name = match &key_event {
                Event::Scalar(..) => scalar_text(&key_event).unwrap_or_default(),
                _ => "?".to_owned(),
            };
            if let (false, Event::Scalar(_, _, _, tag)) = (is_merge, &key_event) {
                let tag = tag.as_ref().map(|tag| tag.original());
                let key = Key {
                    span: key_span,
                    tag,
                };
                if key.tag.is_some() {
                    let spelled = self.spelled(&key, &name)?;
                    if !spelled.contains('\n') {
                        let path = format!("{}.{name}", self.key_path());
                        self.tagged.entry(path).or_insert(spelled);
                    }
                }
                if let Some(number) = integer_key(&key_event) {
                    let again = Key {
                        span: key.span,
                        tag: key.tag.clone(),
                    };
                    self.one_number_once(&mut numbers, number, &name, again)?;
                }
                self.written_once(&mut written, &name, key)?;
            }
            anchored |= self.node(key_event, key_span)?.anchored;
            let Child::Node(event, span) = self.child()? else {
                return Err(Stop::Unreadable);
            };
            self.note_form(&name, &event, span);
            self.path.push(name);
            let value = self.node(event, span)?;
            self.path.pop();
            anchored |= value.anchored;
            if is_merge && !value.scalar {
                merges.push((key_line, value));
            }
        }
    }

    /// The `<<` values of one mapping (each with its key's line) trade places, last first.
    fn reverse(&mut self, merges: &[(usize, Node)]) -> Result<(), Stop> {
        let stuck = merges
            .iter()
            .find_map(|(line, m)| m.stuck.map(|why| (line, why)));
        if let Some((line, why)) = stuck {
            let lines: Vec<String> = merges.iter().map(|(line, _)| line.to_string()).collect();
            return Err(Stop::Refused(
                self.key_path(),
                format!(
                    "`<<` is written {} times in this mapping (lines {}) and the value of the one at line {line} {why}: \
                     separate `<<` keys are applied as PyYAML applies them (the last one wins) only \
                     when each value is an alias (`<<: *name`) or a one-line `[...]` or `{{...}}`; \
                     write it so, or merge with one `<<: [*first, *second]` list (the first listed wins)",
                    merges.len(),
                    lines.join(", "),
                ),
            ));
        }
        for ((_, to), (_, from)) in merges.iter().zip(merges.iter().rev()) {
            if to.range != from.range {
                self.moves.push(Move {
                    to: to.range.clone(),
                    from: from.range.clone(),
                });
            }
        }
        Ok(())
    }

    /// Refuses a key whose text was written before in this mapping (`written`: each key's text
    /// with where it is, as the mapping's keys are read), naming both lines. The YAML library
    /// refuses two that are the same YAML value, but `123:` and `'123':` are a number and a
    /// text to it (and `!!str 7:` and `7:`), while every mapping of names here (aliases, header
    /// names) reads both as the text `123`: both loaded, and one server was dropped in silence.
    fn written_once(
        &self,
        written: &mut HashMap<String, Key>,
        name: &str,
        key: Key,
    ) -> Result<(), Stop> {
        let Some(first) = written.get(name) else {
            written.insert(name.to_owned(), key);
            return Ok(());
        };
        Err(self.twice((first, name), (&key, name))?)
    }

    /// Refuses a key that is the same integer as one before it in this mapping, spelled
    /// otherwise (`0x1F:` and `31:`, `1_000:` and `1000:`), naming both spellings and lines as
    /// [`Self::written_once`] does. The YAML library refuses those itself, as one value twice,
    /// but its message names only the second and has no line for the first (which a search
    /// of the text for the second's spelling cannot find). `numbers`: each integer key with
    /// its text and where it is.
    fn one_number_once(
        &self,
        numbers: &mut HashMap<(bool, u128), (String, Key)>,
        number: (bool, u128),
        name: &str,
        key: Key,
    ) -> Result<(), Stop> {
        let Some((first_name, first)) = numbers.get(&number) else {
            numbers.insert(number, (name.to_owned(), key));
            return Ok(());
        };
        if first_name == name {
            // The same text: `written_once` says so.
            return Ok(());
        }
        Err(self.twice((first, first_name), (&key, name))?)
    }

    /// The refusal of `second` as a key written twice, `first` being the earlier one (each
    /// with its text): both spellings, when each is on one line, and both lines.
    fn twice(&self, first: (&Key, &str), second: (&Key, &str)) -> Result<Stop, Stop> {
        let (one, two) = (
            self.spelled(first.0, first.1)?,
            self.spelled(second.0, second.1)?,
        );
        let spellings = (!one.contains('\n') && !two.contains('\n')).then_some((&*one, &*two));
        Ok(Stop::Refused(
            self.key_path(),
            super::written_twice(
                second.1,
                spellings,
                Some(first.0.span.start.line()),
                second.0.span.start.line(),
                self.column(second.0) + 1,
            ),
        ))
    }

    /// `key` (whose text is `name`) as written, with its tag: the scalar's span leaves its tag
    /// out, and `!!str 7` and `7` were both "7".
    fn spelled(&self, key: &Key, name: &str) -> Result<String, Stop> {
        let span = key.span;
        let range = offset(span.start.byte_offset())?..offset(span.end.byte_offset())?;
        let text = self.text.get(range).unwrap_or(name);
        Ok(match &key.tag {
            Some(tag) if !text.starts_with('!') => format!("{tag} {text}"),
            _ => text.to_owned(),
        })
    }

    /// The 0-based column where `key` starts: its tag's when the tag is written just before
    /// its text on its line (`!!str 7`), else its text's.
    fn column(&self, key: &Key) -> usize {
        let column = key.span.start.col();
        let (Some(tag), Some(start)) = (&key.tag, key.span.start.byte_offset()) else {
            return column;
        };
        let Some(before) = self.text.get(..start) else {
            return column;
        };
        let trimmed = before.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(tag.as_str()) {
            Some(rest) => column.saturating_sub(before[rest.len()..].chars().count()),
            None => column,
        }
    }

    /// Notes how the value of the key `name` is written when it is a number or boolean key's
    /// (see [`Forms`]), and takes its tag off when it is `!!int`, `!!float` or `!!bool`: the
    /// value is then read from its text as PyYAML read it with that tag ([`super::typed`]).
    /// Wherever the key is: under `servers.<alias>` or `settings`, or in a mapping merged into
    /// one by `<<` (`<<: {timeout_secs: !!float 5}`), whose tag stayed and was refused; never
    /// under `headers`, whose values are text. The tag may be written before or after an
    /// anchor (`!!float &a 5`, `&a !!float 5`), or on the line above the value, as YAML
    /// allows.
    fn note_form(&mut self, name: &str, event: &Event<'_>, span: Span) {
        let Event::Scalar(_, style, anchor, tag) = event else {
            return;
        };
        let typed = super::TYPED_KEYS.contains(&name)
            && !self.path.is_empty()
            && !self.path.iter().any(|key| key == "headers");
        let Some(start) = span.start.byte_offset().filter(|_| typed) else {
            return;
        };
        let tag = match tag {
            None => None,
            Some(tag) => {
                // `!!float` and `!<tag:yaml.org,2002:float>` alike.
                let full = format!("{}{}", tag.handle(), tag.suffix());
                let core = full
                    .strip_prefix("tag:yaml.org,2002:")
                    .and_then(Tag::from_suffix);
                // Another tag is the YAML library's to refuse, saying what the key takes.
                let Some(core) = core else { return };
                Some(core)
            }
        };
        if matches!(tag, Some(Tag::Int | Tag::Float | Tag::Bool)) {
            if let Some(written) = tag_before(self.text, start, *anchor != 0) {
                self.untagged.push(written);
            }
        }
        let plain = *style == ScalarStyle::Plain;
        self.forms.push((start, Form { tag, plain }));
    }

    fn key_path(&self) -> String {
        if self.path.is_empty() {
            return "(top level)".to_owned();
        }
        let mut path = String::new();
        for key in &self.path {
            if !path.is_empty() && !key.starts_with('[') {
                path.push('.');
            }
            path.push_str(key);
        }
        path
    }
}

/// Where the tag of the scalar whose text starts at byte `start` of `text` is written (`!!float`,
/// `!<tag:yaml.org,2002:float>`): the word before the text, or, when the scalar has an anchor
/// (`anchored`), the word before that may be the anchor and the tag the one before it (YAML
/// writes a node's tag and anchor in either order). Words are apart by spaces, tabs or line
/// breaks. `None` when neither is a tag.
fn tag_before(text: &str, start: usize, anchored: bool) -> Option<Range<usize>> {
    let mut end = start;
    for _ in 0..if anchored { 2 } else { 1 } {
        let before = text.get(..end)?;
        let trimmed = before.trim_end_matches([' ', '\t', '\r', '\n']);
        let word = trimmed
            .rfind([' ', '\t', '\r', '\n'])
            .map_or(0, |at| at + 1);
        let written = &trimmed[word..];
        if written.starts_with('!') {
            return Some(word..trimmed.len());
        }
        if !(anchored && written.starts_with('&')) {
            return None;
        }
        end = word;
    }
    None
}

fn is_node_start(event: &Event<'_>) -> bool {
    matches!(
        event,
        Event::Scalar(..) | Event::Alias(_) | Event::SequenceStart(..) | Event::MappingStart(..)
    )
}

/// A scalar's text as the YAML library gives it where text is read (a key, a name): as
/// written, but for one tagged `!!binary`, which it gives decoded (`!!binary YQ==` is `a`).
///
/// Two keys of one mapping whose texts are the same are refused as written twice
/// ([`Walk::written_once`]), so `!!binary YQ==:` beside `a:` is: the YAML library gave both
/// as `a` and kept one server in silence. PyYAML keeps them apart (`b'a'` and `'a'`), but the
/// Python version read its config through pydantic (`Dict[str, ServerConfig]`), which
/// decodes a bytes key as UTF-8: there too `!!binary YQ==` was the server `a`, and beside a
/// plain `a:` the later one replaced the other in silence. A `!!binary` name alone is
/// therefore read as its text, as both read it; two of one text are refused, naming both
/// spellings and lines, as every key written twice is. `None` for an event that is no
/// scalar.
pub(super) fn scalar_text(event: &Event<'_>) -> Option<String> {
    let Event::Scalar(value, _, _, tag) = event else {
        return None;
    };
    let binary = tag
        .as_ref()
        .is_some_and(|tag| tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "binary");
    if binary {
        use base64::Engine as _;
        // YAML allows white space inside base64 text, as the YAML library reads it.
        let packed: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD.decode(packed);
        // Text that is no base64 of UTF-8 is the YAML library's to refuse, with its line.
        if let Some(text) = decoded.ok().and_then(|bytes| String::from_utf8(bytes).ok()) {
            return Some(text);
        }
    }
    Some(value.to_string())
}

/// The integer a mapping key is to the YAML library, as `(negative, magnitude)`, which it
/// compares keys by (`0x1F`, `0o37`, `0b11111`, `+31` and `3_1` are all 31): a plain scalar
/// or one tagged `!!int`, with an optional sign, a `0x`, `0o` or `0b` prefix (either case)
/// or none, and digits with single `_` between them. A decimal with a leading zero (`031`)
/// is no integer to it (YAML 1.2: a text). `None` for anything else.
fn integer_key(event: &Event<'_>) -> Option<(bool, u128)> {
    let Event::Scalar(value, style, _, tag) = event else {
        return None;
    };
    let int_tag = tag
        .as_ref()
        .is_some_and(|tag| tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "int");
    let plain = tag.is_none() && *style == ScalarStyle::Plain;
    if !(int_tag || plain) {
        return None;
    }
    let text = value.trim_matches([' ', '\t']);
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = match rest.get(..2) {
        Some("0x" | "0X") => (16, &rest[2..]),
        Some("0o" | "0O") => (8, &rest[2..]),
        Some("0b" | "0B") => (2, &rest[2..]),
        _ if rest.len() > 1 && rest.starts_with('0') => return None,
        _ => (10, rest),
    };
    let bytes = digits.as_bytes();
    let mut magnitude: u128 = 0;
    let mut any = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let between =
                i > 0 && bytes[i - 1] != b'_' && bytes.get(i + 1).is_some_and(|&n| n != b'_');
            if !between {
                return None;
            }
            continue;
        }
        let digit = char::from(b).to_digit(radix)?;
        magnitude = magnitude
            .checked_mul(u128::from(radix))?
            .checked_add(u128::from(digit))?;
        any = true;
    }
    any.then_some((negative && magnitude != 0, magnitude))
}

/// A merge key as the YAML library takes one: a plain `<<`, or one tagged `!!merge`.
pub(super) fn is_merge_key(event: &Event<'_>) -> bool {
    let Event::Scalar(value, style, _, tag) = event else {
        return false;
    };
    value == "<<"
        && match tag {
            None => *style == ScalarStyle::Plain,
            Some(tag) => tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "merge",
        }
}

fn offset(byte_offset: Option<usize>) -> Result<usize, Stop> {
    byte_offset.ok_or(Stop::Unreadable)
}

/// Writes `range` of `text` to `out`, each move inside it replaced by the text it takes (with
/// the moves inside that, in turn).
/// Each piece copied is noted in `pieces`.
fn render(
    text: &str,
    moves: &[Move],
    range: Range<usize>,
    out: &mut String,
    pieces: &mut Vec<Piece>,
) {
    fn copy(text: &str, from: Range<usize>, out: &mut String, pieces: &mut Vec<Piece>) {
        pieces.push(Piece {
            from: from.clone(),
            to: out.len(),
        });
        out.push_str(&text[from]);
    }
    let mut cursor = range.start;
    for m in moves {
        let inside = m.to.start >= cursor && m.to.end <= range.end && m.to != range;
        if inside {
            copy(text, cursor..m.to.start, out, pieces);
            render(text, moves, m.from.clone(), out, pieces);
            cursor = m.to.end;
        }
    }
    copy(text, cursor..range.end, out, pieces);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anchors for the texts below (an alias of none is a parse error, left to the library).
    const ANCHORS: &str = "x: [&a {}, &b {}, &c {}, &d {}]\n";

    fn reordered(text: &str) -> String {
        let text = format!("{ANCHORS}{text}");
        match in_pyyaml_order(&text) {
            Ok(out) => out[ANCHORS.len()..].to_owned(),
            Err(e) => panic!("{text}: {e:?}"),
        }
    }

    /// Only the values of separate `<<` keys move, each line keeps its number, and a text with
    /// one `<<` per mapping (or none) is the same text.
    #[test]
    fn the_values_of_separate_merge_keys_trade_places() {
        assert_eq!(
            reordered("m:\n  <<: *a # one\n  x: 1\n  <<: [*c, *d]\n"),
            "m:\n  <<: [*c, *d] # one\n  x: 1\n  <<: *a\n"
        );
        assert_eq!(
            reordered("m: {<<: *a, <<: *b, <<: *c}\n"),
            "m: {<<: *c, <<: *b, <<: *a}\n"
        );
        // Inside a moved value, its own `<<` keys trade places too.
        assert_eq!(
            reordered("m: {<<: {<<: *a, <<: *b}, <<: *c}\n"),
            "m: {<<: *c, <<: {<<: *b, <<: *a}}\n"
        );
        // A `<<: ~` merges nothing and stays where it is; a quoted "<<" is an ordinary key.
        assert_eq!(
            reordered("m:\n  <<: ~\n  \"<<\": *a\n  <<: *b\n"),
            "m:\n  <<: ~\n  \"<<\": *a\n  <<: *b\n"
        );
        for same in [
            "m:\n  <<: *a\n  <<:\n",
            "m:\n  <<: [*a, *b]\n  x: 1\n",
            "m: [{<<: *a}, {<<: *a}]\n",
            "m: {<<: *a, <<: *b\n",
        ] {
            let text = format!("{ANCHORS}{same}");
            assert!(
                matches!(in_pyyaml_order(&text), Ok(Cow::Borrowed(_))),
                "{same}"
            );
        }
    }

    /// A `<<` value that cannot trade places keeping every line (an indented block, several
    /// lines, an anchor or a tag on it) is refused with its line, never read in the other order.
    #[test]
    fn a_merge_value_that_cannot_move_is_refused_with_its_line() {
        let cases = [
            (
                "s:\n  m:\n    <<:\n      x: 1\n    <<: *a\n",
                "s.m",
                "line 4 is an indented block",
            ),
            (
                "m:\n  <<: *a\n  <<: [*c,\n    *d]\n",
                "m",
                "line 4 spans several lines",
            ),
            (
                "m:\n  <<: *a\n  <<: &q {x: 1}\n",
                "m",
                "line 4 defines an anchor",
            ),
            (
                "m:\n  <<: [{x: &q 1}]\n  <<: *a\n",
                "m",
                "line 3 defines an anchor",
            ),
            (
                "m:\n  - {<<: *a, <<: !!map {x: 1}}\n",
                "m[0]",
                "line 3 has a tag",
            ),
        ];
        for (text, expected_path, why) in cases {
            let text = format!("{ANCHORS}{text}");
            let Err((path, reason)) = in_pyyaml_order(&text) else {
                panic!("expected a refusal: {text}");
            };
            assert_eq!(path, expected_path, "{text}");
            assert!(
                reason.contains(&format!("the value of the one at {why}")),
                "{text}: {reason}"
            );
        }
    }
}

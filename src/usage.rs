//! Pure parsers: token usage, responded model, output text, reasoning and tool calls, from a
//! whole JSON response body or from stream events one at a time.
//!
//! No I/O and no allocation beyond what the result holds. Upstreams disagree on shapes
//! (OpenAI, DeepSeek, Anthropic-style cache fields, OpenRouter's cost, the Responses API);
//! everything is normalised into [`Usage`] here, so sinks see one shape.

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json_object::{from_object, from_objects, object_only, object_text, objects_only};
use crate::sinks::redact::CutGuard;

/// Token usage in one shape. `input` and `output` are totals as the upstream counted them;
/// `cached_input` and `reasoning` are the parts of those totals that are cache hits and
/// reasoning tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub cached_input: u64,
    pub cache_creation_input: u64,
    pub reasoning: u64,
    /// USD, when the upstream reports it (OpenRouter's `usage.cost`).
    pub cost: Option<f64>,
    /// Seconds of audio, for a transcription billed by duration (`whisper-1`'s
    /// `{"type": "duration", "seconds": N}`): it counts no tokens. Kept with its fraction
    /// (`9.7`): an upstream may bill by the millisecond.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_seconds"
    )]
    pub audio_seconds: Option<f64>,
}

/// Seconds as a JSON number: to the millisecond, and a whole number without a fraction (`9`,
/// not `9.0`), as lines written before fractions were kept had it.
pub fn seconds_number(seconds: f64) -> serde_json::Number {
    let rounded = (seconds * 1000.0).round() / 1000.0;
    if rounded.fract() == 0.0 && (0.0..=MAX_COUNT as f64).contains(&rounded) {
        return serde_json::Number::from(rounded as u64);
    }
    serde_json::Number::from_f64(rounded).unwrap_or_else(|| serde_json::Number::from(0))
}

fn serialize_seconds<S: serde::Serializer>(
    seconds: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match seconds {
        Some(seconds) => seconds_number(*seconds).serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// The largest count a usage field may hold (tokens of one request, or seconds of audio):
/// 10^12. Real counts are millions at most; one beyond this (`2^63 - 1`, `1e400`) is not a
/// count but a broken upstream, and kept it would make every sink wrong in its own way (JSON
/// readers round it, the ledger clamps it, and a sum over the ledger overflows SQLite's
/// integers). Under it, a ledger of millions of rows sums exactly.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// The most one request may cost, in USD, to be believed: far above any model's price for the
/// largest request, far below what a sum of the ledger's rows could overflow with. An upstream
/// that reports more (`1e300`) is broken; its cost is unknown (the tokens are kept), as a
/// negative or non-finite one is, rather than a 300-digit cell or an infinite total.
pub const MAX_COST: f64 = 1_000_000.0;

/// `cost` when it can be one request's cost (see [`MAX_COST`]).
fn plausible_cost(cost: f64) -> Option<f64> {
    (cost.is_finite() && (0.0..=MAX_COST).contains(&cost)).then_some(cost)
}

/// What [`count`] makes of a number that is not a count (negative, not finite, or beyond
/// [`MAX_COUNT`]): a value [`Usage::checked`] refuses, so the usage it is in is unknown.
const NOT_A_COUNT: u64 = u64::MAX;

impl Usage {
    /// Normalises a `usage` object given as raw JSON; `None` when it is not an object or holds
    /// no token count at all. Each field is read on its own: one of an unexpected type (a
    /// vendor's string, say) is skipped, not fatal. A number that is not a count (negative,
    /// beyond [`MAX_COUNT`]) makes the whole usage unknown: see [`Self::checked`].
    pub fn from_raw(usage: &RawValue) -> Option<Self> {
        let raw: UsageRaw<'_> = from_object(usage.get())?;
        let prompt_details = details(raw.prompt_tokens_details);
        let input_details = details(raw.input_tokens_details);
        let completion_details = details(raw.completion_tokens_details);
        let output_details = details(raw.output_tokens_details);
        let input = count(raw.prompt_tokens).or(count(raw.input_tokens));
        let output = count(raw.completion_tokens).or(count(raw.output_tokens));
        let total = count(raw.total_tokens);
        let audio_seconds = seconds(raw.seconds);
        if input.is_none() && output.is_none() && total.is_none() && audio_seconds.is_none() {
            return None;
        }
        let cache_read = count(prompt_details.cached_tokens)
            .or(count(input_details.cached_tokens))
            .or(count(raw.prompt_cache_hit_tokens))
            .or(count(raw.cache_read_input_tokens))
            .unwrap_or(0);
        let cache_creation = count(raw.cache_creation_input_tokens)
            .or(count(prompt_details.cache_write_tokens))
            .unwrap_or(0);
        let reasoning = count(completion_details.reasoning_tokens)
            .or(count(output_details.reasoning_tokens))
            .unwrap_or(0);
        let mut input = input.unwrap_or(0);
        // Anthropic-style counts leave cache reads and writes out of input_tokens; either may
        // come alone (a first request that writes the cache reads none) or as null.
        let anthropic_cache = count(raw.cache_read_input_tokens).is_some()
            || count(raw.cache_creation_input_tokens).is_some();
        if anthropic_cache && raw.prompt_tokens.is_none() {
            input = input
                .saturating_add(cache_read)
                .saturating_add(cache_creation);
        }
        let output = output.unwrap_or(0);
        let cost = raw
            .cost
            .and_then(|c| c.get().parse::<f64>().ok())
            .and_then(plausible_cost);
        Self {
            input,
            output,
            total: total.unwrap_or(0),
            cached_input: cache_read,
            cache_creation_input: cache_creation,
            reasoning,
            cost,
            audio_seconds,
        }
        .with_parts_in_wholes(total.is_some())
        .checked()
    }

    /// A part the whole leaves out is added to it, as Anthropic's input_tokens leave the
    /// cache out, so every sink reads a whole as holding its parts (Langfuse's keys subtract
    /// them: left out and subtracted, the output went to 0 and the keys missed the total).
    /// Left out it is when it is larger than the whole, or when the total sent is the sum
    /// with the part beside it: xAI's completion_tokens leave reasoning out (500 beside 200
    /// reasoning, total 710 with 10 in). The same total telling both parts apart is read as
    /// neither. A total the upstream did not send is the sum of input and output then.
    fn with_parts_in_wholes(mut self, total_sent: bool) -> Self {
        let cached = self.cached_input.saturating_add(self.cache_creation_input);
        let reasoning = self.reasoning;
        let sum = self.input.saturating_add(self.output);
        let beside = |part: u64| total_sent && part > 0 && self.total == sum.saturating_add(part);
        let both = reasoning > 0 && cached > 0 && beside(reasoning.saturating_add(cached));
        let ambiguous = beside(reasoning) && beside(cached);
        if reasoning > self.output || both || (beside(reasoning) && !ambiguous) {
            self.output = self.output.saturating_add(reasoning);
        }
        if cached > self.input || both || (beside(cached) && !ambiguous) {
            self.input = self.input.saturating_add(cached);
        }
        if !total_sent {
            self.total = self.input.saturating_add(self.output);
        }
        self
    }

    /// The usage, when every count in it is one (at most [`MAX_COUNT`]); else `None`: usage
    /// with a count that is not one is unknown, as a usage object with no count is, rather
    /// than kept in part (`prompt_tokens: -5` next to `total_tokens: 5` made an input of 0
    /// that disagreed with the total). The one rule for both readers of usage, so every sink
    /// agrees.
    fn checked(self) -> Option<Self> {
        let counts = [
            self.input,
            self.output,
            self.total,
            self.cached_input,
            self.cache_creation_input,
            self.reasoning,
        ];
        let seconds = self
            .audio_seconds
            .is_none_or(|s| (0.0..=MAX_COUNT as f64).contains(&s));
        (seconds && counts.iter().all(|n| *n <= MAX_COUNT)).then_some(self)
    }

    /// [`Self::from_raw`] for an already parsed value (the Responses API's rare paths).
    pub fn from_json(usage: &Value) -> Option<Self> {
        let text = serde_json::to_string(usage).ok()?;
        let raw: &RawValue = serde_json::from_str(&text).ok()?;
        Self::from_raw(raw)
    }
}

/// The names of [`UsageRaw`]'s fields: the only ones of a usage object [`Usage`] reads.
const USAGE_KEYS: &[&str] = &[
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens_details",
    "input_tokens_details",
    "completion_tokens_details",
    "output_tokens_details",
    "prompt_cache_hit_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cost",
    "seconds",
];

/// The fields of a usage object that upstreams are known to send, each left raw.
#[derive(Deserialize, Default)]
struct UsageRaw<'a> {
    #[serde(borrow, default)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    total_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt_tokens_details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_tokens_details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    completion_tokens_details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_tokens_details: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt_cache_hit_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_read_input_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_creation_input_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cost: Option<&'a RawValue>,
    /// A transcription billed by duration: `{"type": "duration", "seconds": 12}`.
    #[serde(borrow, default)]
    seconds: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct DetailsRaw<'a> {
    #[serde(borrow, default)]
    cached_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_write_tokens: Option<&'a RawValue>,
}

/// A usage's details object; none when it is not an object. serde's derived structs also
/// take a list, member by member in order: `"usage": [10, 5]` was read as 10 tokens in and
/// 5 out (bb51), so every struct here is read through [`crate::json_object`].
fn details(raw: Option<&RawValue>) -> DetailsRaw<'_> {
    raw.and_then(|d| from_object(d.get())).unwrap_or_default()
}

/// The top-level `usage` member as one: an object. `null`, a list (`[10, 5]`) or any other
/// value is no usage, read as an absent one is (then Groq's own may be, see [`groq_usage`]).
fn usage_object(usage: Option<&RawValue>) -> Option<&RawValue> {
    usage.filter(|raw| object_text(raw.get()).is_some())
}

/// Groq's `x_groq` metadata's `usage` (in its last stream chunk, or a whole answer): the
/// usage when Groq sends none at the top level (see [`usage_object`]).
fn groq_usage(x_groq: &RawValue) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Groq<'a> {
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
    }
    from_object::<Groq<'_>>(x_groq.get())?.usage
}

/// A token count: a non-negative integer, or a float some upstreams send (its whole part);
/// `None` when absent or not a number (a string, `null`). A number that cannot be a count
/// (negative, not finite, beyond [`MAX_COUNT`]) is [`NOT_A_COUNT`].
fn count(raw: Option<&RawValue>) -> Option<u64> {
    let text = raw?.get();
    if let Ok(n) = text.parse::<u64>() {
        return Some(if n <= MAX_COUNT { n } else { NOT_A_COUNT });
    }
    let f = text.parse::<f64>().ok()?;
    // `1e400` parses as infinity.
    let fits = f.is_finite() && (0.0..=MAX_COUNT as f64).contains(&f);
    Some(if fits { f as u64 } else { NOT_A_COUNT })
}

/// Seconds of audio as the upstream sent them, fraction and all; `None` when absent or not a
/// number. One that is not a count (negative; `1e400`, which parses as infinity) is kept as it
/// is, for [`Usage::checked`] to refuse.
fn seconds(raw: Option<&RawValue>) -> Option<f64> {
    raw?.get().parse::<f64>().ok()
}

/// One tool call, assembled from stream deltas or read whole.
///
/// Serialised in the shape of OpenAI's message (`{"id", "type", "function": {"name",
/// "arguments"}}`), whatever shape it came in: the request log's line for a stream and the
/// Langfuse output show the same call the same way, as a whole answer's body has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub arguments: String,
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        #[derive(Serialize)]
        struct Call<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            function: Function<'a>,
        }
        Call {
            id: &self.id,
            kind: &self.kind,
            function: Function {
                name: &self.name,
                arguments: &self.arguments,
            },
        }
        .serialize(serializer)
    }
}

/// Most finish reasons kept of choices beyond the first (OpenAI's `n` goes to 128): an
/// upstream sending any index it likes must not grow a record without end.
pub const MAX_MORE_FINISH_REASONS: usize = 128;

/// What the response said, as far as it was seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseSummary {
    pub id: Option<String>,
    /// The model the upstream says answered.
    pub model: Option<String>,
    /// The first choice's (with `n` above 1, choice 0's).
    pub finish_reason: Option<String>,
    /// With `n` above 1, the other choices' finish reasons, each with its index, in the
    /// order they came; at most [`MAX_MORE_FINISH_REASONS`]. Read from what is parsed
    /// anyway (a chunk's choices, a whole body's), so no work is added for them; empty, as
    /// it stays with one choice, it allocates nothing.
    pub more_finish_reasons: Vec<(usize, String)>,
    pub content: String,
    pub reasoning: String,
    /// The assistant declined: OpenAI's `message.refusal` / `delta.refusal` (the Responses
    /// API's `refusal` content part, `response.refusal.delta`). It is the answer then, with
    /// the content empty, so it is recorded as output (and its first piece as the first
    /// token).
    pub refusal: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Option<Usage>,
    /// The message of an error the upstream reported under a 2xx status: inside a stream (an
    /// event `data: {"error": {...}}`, as OpenRouter sends when a provider fails mid-stream;
    /// a Responses API `error` or `response.failed` event), or as a whole body's top-level
    /// `error`. The answer is relayed as it came; the record counts it as the upstream's
    /// error.
    pub error: Option<String>,
    /// The rest of that error inside a stream, where the upstream gave it: its `type` and
    /// `code` (a code that is not a string kept as its JSON value), beside `error`'s message,
    /// as `{"message", "type", "code"}` (the OpenAI error object's members). The records
    /// show it with the answer (the request log's `response`, the trace's output), as they
    /// show the router's own late error event; `None` when the upstream gave neither. A
    /// whole body's error needs none: the body, kept, has them.
    pub error_detail: Option<Value>,
    /// `content` is a note standing for the bulk of a whole JSON answer (embedding vectors,
    /// base64 images: `<3 embeddings, 1536 dimensions>`), so the record need not keep the
    /// body, whose bulk no sink should show.
    pub body_noted: bool,
    /// The answer is a text, which is its content even when empty: a transcription's or
    /// translation's `text` (`{"text": ""}` for silence), a transcription stream's
    /// `transcript.text.done`. Its output is then that text, `""` included, not absent.
    pub text_answer: bool,
    /// A stream's upstream announced its answer with an event of its own before any token:
    /// Anthropic's `message_start`, the Responses API's `response.created` (or
    /// `response.in_progress`). It had taken the request on (the input is counted from
    /// there), so an error event ending the stream after it cuts an answer under way, whose
    /// tokens are unknown, as one after a first token does (see
    /// `RequestRecord::usage_partial`).
    pub begun: bool,
}

impl ResponseSummary {
    /// Bounds a whole answer's texts (content, reasoning, refusal, then each tool call's name
    /// and arguments) to [`MAX_STREAM_TEXT`] together, as a stream's are bounded while they
    /// come: past it a text ends in the truncation marker, the texts after it are empty and
    /// the tool calls after it are not kept. The record keeps the answer's body, which the
    /// request log writes whole; these texts are a second copy of what it says, for the
    /// traces (which show 1 MiB by default), and a 50 MB answer's record held them all.
    /// The cut falls short of any of `guard`'s secrets (see [`TextBudget::append`]).
    pub fn bound_texts(&mut self, guard: CutGuard) {
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len())
            .sum();
        if self.content.len() + self.reasoning.len() + self.refusal.len() + calls <= MAX_STREAM_TEXT
        {
            return;
        }
        let mut budget = TextBudget {
            guard,
            ..TextBudget::default()
        };
        budget.keep(&mut self.content);
        budget.keep(&mut self.reasoning);
        budget.keep(&mut self.refusal);
        let mut kept = self.tool_calls.len();
        for (i, call) in self.tool_calls.iter_mut().enumerate() {
            if budget.cut {
                kept = i;
                break;
            }
            budget.keep(&mut call.name);
            budget.keep(&mut call.arguments);
        }
        self.tool_calls.truncate(kept);
    }

    /// The content as OpenAI's message has it: `None` (JSON `null`) in a tool-call answer
    /// without text (a stream that had no content delta, only tool calls); the text
    /// otherwise, `""` included (next to a refusal, or an answer with nothing in it). Every
    /// sink that writes the content as a message's says the same.
    pub fn message_content(&self) -> Option<&str> {
        if self.content.is_empty() && !self.tool_calls.is_empty() {
            return None;
        }
        Some(&self.content)
    }
}

// ---- whole bodies ------------------------------------------------------------------------

/// `text` (JSON) with each `\u` escape of a lone UTF-16 surrogate (`\ud800` not followed by
/// a low one, or a low one on its own) replaced by `\ufffd`; `None` when it holds none.
/// serde_json refuses to decode such an escape into a string, and one in an answer (an
/// upstream cutting an emoji's pair apart) would lose the whole answer or event for the
/// record: its text, tool calls and usage. Read so, it loses one character, as a byte that
/// is not UTF-8 does. Both escapes are six bytes, so the text keeps its length. Only the
/// record's copy is changed: the client gets the bytes as they came.
pub(crate) fn lone_surrogates_replaced(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    // Most answers and events hold no `\u` escape at all. (The searcher is built once: that
    // costs more than searching a typical event.)
    static ESCAPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    ESCAPE.find(bytes)?;
    let mut fixed: Option<Vec<u8>> = None;
    let mut at = 0;
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let escape = at + found;
        let end = escape + 6;
        // `\\` and the other two-byte escapes are stepped over whole, so the backslash of
        // `\\ud800` (a backslash, then text) never starts an escape.
        let Some(unit) = (bytes.get(escape + 1) == Some(&b'u'))
            .then(|| utf16_unit(bytes, escape + 2))
            .flatten()
        else {
            at = escape + 2;
            continue;
        };
        let lone = match unit {
            0xD800..=0xDBFF => {
                !(bytes.get(end..end + 2) == Some(b"\\u".as_slice())
                    && matches!(utf16_unit(bytes, end + 2), Some(0xDC00..=0xDFFF)))
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            fixed.get_or_insert_with(|| bytes.to_vec())[escape..end].copy_from_slice(b"\\ufffd");
            at = end;
        } else if (0xD800..=0xDBFF).contains(&unit) {
            at = end + 6;
        } else {
            at = end;
        }
    }
    // ASCII replaced by ASCII: still UTF-8.
    fixed.and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The four hex digits at `at` as a UTF-16 code unit.
fn utf16_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// `text` (JSON) with each raw control character inside a string (a tab or a `\x01` sent
/// unescaped, which strict JSON forbids and some local servers write) replaced by its
/// `\u00XX` escape; `None` when no string holds one. serde_json refuses such a string, so an
/// event holding one was left out of the record whole (its text, tool calls, first token),
/// and a whole answer lost its usage. Only the record's copy is changed: the client gets the
/// bytes as they came. Control characters between tokens (white space) are left as they are.
pub(crate) fn raw_controls_escaped(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|b| *b < 0x20) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    for c in text.chars() {
        match c {
            c if in_string && escaped => {
                escaped = false;
                if u32::from(c) < 0x20 {
                    // `\` then a raw control: neither is a valid escape; the control is
                    // escaped after a backslash escaped on its own.
                    out.push('\\');
                    changed = true;
                    push_unicode_escape(&mut out, c);
                    continue;
                }
            }
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            c if in_string && u32::from(c) < 0x20 => {
                changed = true;
                push_unicode_escape(&mut out, c);
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    changed.then_some(out)
}

/// `c`'s JSON `\u00XX` escape, pushed onto `out`.
fn push_unicode_escape(out: &mut String, c: char) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "\\u{:04x}", u32::from(c));
}

/// Reads a non-stream JSON response body (chat, completions, embeddings, responses).
pub fn summarize_body(body: &[u8]) -> ResponseSummary {
    summarize_json_body(body, &CutGuard::default()).unwrap_or_default()
}

/// [`summarize_body`], or `None` when the body is not a JSON object: then nothing could be
/// read from it, and whoever writes it out must not take it for JSON. Its texts are bounded
/// (see [`ResponseSummary::bound_texts`], cut short of `guard`'s secrets), and a chat
/// answer's are cut as they are read (see [`Gather`]): read whole first, a 50 MB answer's
/// text was copied whole (twice its size while serde_json unescaped it) to keep 8 MiB.
pub fn summarize_json_body(body: &[u8], guard: &CutGuard) -> Option<ResponseSummary> {
    if let Some(fixed) = std::str::from_utf8(body)
        .ok()
        .and_then(lone_surrogates_replaced)
    {
        return summarize_json_body(fixed.as_bytes(), guard);
    }
    let mut summary = summarize_gathering(body, &mut Gather::new(guard))?;
    summary.bound_texts(guard.clone());
    Some(summary)
}

/// [`summarize_json_body`] before its texts are bounded, `gather` reading them.
fn summarize_gathering(body: &[u8], gather: &mut Gather<'_>) -> Option<ResponseSummary> {
    // Fast path: one typed pass over the body, strings borrowed. Any field of an unexpected
    // type makes it fail, and the lenient path below reads the fields one by one instead.
    // The body's UTF-8 is checked once, up front: reading from bytes, serde_json checks
    // each string on its own, which cost a fifth of the pass on a typical answer.
    // A list is no answer (see [`crate::json_object`]), on either path.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(fast) = serde_json::from_str::<FastBody<'_>>(text) {
            if let Some(summary) = fast.into_summary(gather) {
                return Some(summary);
            }
        }
    }
    // What the fast path gathered is gone: the lenient one gathers afresh.
    gather.restart();
    summarize_leniently(body, gather)
}

/// An optional string that borrows from the input when it has no escapes. `#[serde(borrow)]`
/// on an `Option<Cow<str>>` does not do that by itself: the `Option` hands the value to
/// `Cow`'s own `Deserialize`, which always copies (serde-rs/serde#1497). Every stream event
/// paid three copies (id, model, content) for it.
fn borrowed_text<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|text| text.0))
}

/// A response body as it usually is: read in one pass.
#[derive(Deserialize)]
struct FastBody<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "objects_only")]
    choices: Option<Vec<FastChoice<'a>>>,
    #[serde(default, deserialize_with = "object_only")]
    usage: Option<FastUsage>,
    /// Groq's metadata: with no top-level `usage`, its own is read on the lenient path.
    #[serde(borrow, default)]
    x_groq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output: Option<&'a RawValue>,
    /// An Anthropic message's content blocks: read on the lenient path.
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    /// Embeddings' vectors or images, read in this same pass (see [`read_items`]): a big
    /// embeddings answer was read three times, by this pass, the lenient one and once more
    /// for its `data`. A chat answer has no such member, so it costs it nothing.
    #[serde(borrow, default, deserialize_with = "objects_only")]
    data: Option<Vec<DataItem<'a>>>,
    /// A transcription's text: such an answer is read on the lenient path.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FastChoice<'a> {
    #[serde(borrow, default, deserialize_with = "object_only")]
    message: Option<MessageRaw<'a>>,
    /// A legacy completion's text, left raw to be read within its bound (see [`Gather`]).
    /// Not a string (nor `null`): the lenient path reads the body, as it did when this was
    /// read typed and failed the pass.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FastUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "object_only")]
    prompt_tokens_details: Option<FastDetails>,
    #[serde(default, deserialize_with = "object_only")]
    completion_tokens_details: Option<FastDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    cost: Option<f64>,
    // Other shapes (Anthropic-style cache fields, the Responses API's names) take the
    // lenient path: their presence is what matters, so they are detected here. Each of them,
    // not only `input_tokens`: one sent as `null` reads as absent here, and a body with
    // `"input_tokens": null, "output_tokens": 5` lost its output count on this path.
    #[serde(default)]
    input_tokens: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    output_tokens: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    input_tokens_details: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    output_tokens_details: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cache_read_input_tokens: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cache_creation_input_tokens: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct FastDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

impl FastUsage {
    /// The usage in one shape; `None` when it needs the lenient path (vendor fields), else
    /// `Some(None)` when it holds no count at all, or one beyond [`MAX_COUNT`].
    fn into_usage(self) -> Option<Option<Usage>> {
        let u = self;
        if u.input_tokens.is_some()
            || u.output_tokens.is_some()
            || u.input_tokens_details.is_some()
            || u.output_tokens_details.is_some()
            || u.cache_read_input_tokens.is_some()
            || u.cache_creation_input_tokens.is_some()
        {
            return None;
        }
        let input = u.prompt_tokens;
        let output = u.completion_tokens;
        if input.is_none() && output.is_none() && u.total_tokens.is_none() {
            return Some(None);
        }
        let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
        let prompt = u.prompt_tokens_details.as_ref();
        let usage = Usage {
            input,
            output,
            total: u.total_tokens.unwrap_or(0),
            cached_input: prompt
                .and_then(|d| d.cached_tokens)
                .or(u.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_creation_input: prompt.and_then(|d| d.cache_write_tokens).unwrap_or(0),
            reasoning: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cost: u.cost.and_then(plausible_cost),
            audio_seconds: None,
        };
        Some(
            usage
                .with_parts_in_wholes(u.total_tokens.is_some())
                .checked(),
        )
    }
}

impl FastBody<'_> {
    /// `None` when the body needs the lenient path (a Responses API body, an Anthropic
    /// message, vendor usage, a transcription, moderations, any other shape).
    fn into_summary(self, gather: &mut Gather<'_>) -> Option<ResponseSummary> {
        let texts_ok = self.choices.iter().flatten().all(|choice| {
            choice
                .text
                .is_none_or(|text| matches!(text.get().as_bytes().first(), Some(b'"' | b'n')))
        });
        if !texts_ok
            || self.output.is_some()
            || self.content.is_some_and(|c| c.get() != "null")
            || self.error.is_some_and(|e| e.get() != "null")
            || (self.usage.is_none() && self.x_groq.is_some_and(|g| g.get() != "null"))
        {
            return None;
        }
        // No `choices` and no `data` (a transcription, moderations, ...): the lenient path.
        if self.choices.is_none() && self.data.is_none() {
            return None;
        }
        let usage = match self.usage {
            None => None,
            Some(u) => u.into_usage()?,
        };
        let mut out = ResponseSummary {
            id: self.id.map(std::borrow::Cow::into_owned),
            model: self.model.map(std::borrow::Cow::into_owned),
            usage,
            ..Default::default()
        };
        let Some(choices) = self.choices else {
            // Embeddings or images, read in this one pass as the lenient path reads them
            // (which a test checks); a `text` comes first there, and `data` of neither shape
            // is left to it too.
            let items = self.data?;
            if self.text.is_some() || !read_items(&items, &mut out) {
                return None;
            }
            return Some(out);
        };
        let mut choices = choices.into_iter();
        if let Some(choice) = choices.next() {
            out.finish_reason = choice.finish_reason.map(std::borrow::Cow::into_owned);
            if let Some(message) = choice.message {
                fill_from_message(&mut out, message, gather);
            } else if let Some(text) = choice.text.filter(|text| text.get() != "null") {
                // A string serde_json would not read fails the pass, as it did read typed.
                if !gather.push(&mut out.content, text) {
                    return None;
                }
            }
        }
        // With `n` above 1: the others' reasons, already parsed (none with one choice).
        out.more_finish_reasons = choices
            .enumerate()
            .filter_map(|(i, c)| Some((i + 1, c.finish_reason?.into_owned())))
            .take(MAX_MORE_FINISH_REASONS)
            .collect();
        Some(out)
    }
}

/// A message's texts, read in the order [`ResponseSummary::bound_texts`] keeps them
/// (content, reasoning, refusal, tool calls), so `gather` cuts each where that bound would.
/// Each text's room left for more (a list of parts grows it by doubling) is given back
/// before the next is read.
fn fill_from_message(out: &mut ResponseSummary, message: MessageRaw<'_>, gather: &mut Gather<'_>) {
    gather_content(message.content, Part::Text, gather, &mut out.content);
    gather.done(&mut out.content);
    if !message
        .reasoning_content
        .is_some_and(|raw| gather.push(&mut out.reasoning, raw))
    {
        if let Some(raw) = message.reasoning {
            gather.push(&mut out.reasoning, raw);
        }
    }
    gather_content(message.content, Part::Thinking, gather, &mut out.reasoning);
    gather.done(&mut out.reasoning);
    if let Some(raw) = message.refusal {
        gather.push(&mut out.refusal, raw);
    }
    out.tool_calls = message
        .tool_calls
        .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
        .map(|calls| {
            calls
                .into_iter()
                .map_while(|call| gather.tool_call(call))
                .collect()
        })
        .unwrap_or_default();
    // The legacy functions API's one call (none after a text past the bound).
    if out.tool_calls.is_empty() && !gather.over {
        if let Some(call) = message
            .function_call
            .and_then(|raw| gather.function_call(raw))
        {
            out.tool_calls.push(call);
        }
    }
}

/// Reads a body field by field, tolerating odd types.
fn summarize_leniently(body: &[u8], gather: &mut Gather<'_>) -> Option<ResponseSummary> {
    // The top level and the first choice are read as borrowed raw JSON, so the (possibly
    // long) message text is copied once and nothing else is allocated; only the small
    // `usage` object and the rare Responses API `output` become `Value`s. A field of an
    // unexpected type is skipped, not fatal.
    let top = crate::json_object::from_object_slice::<BodyTop<'_>>(body)?;
    let mut out = ResponseSummary {
        id: raw_str(top.id),
        model: raw_str(top.model),
        ..Default::default()
    };
    // Groq's own usage only when there is none at the top level: never both.
    if let Some(usage) = usage_object(top.usage)
        .or_else(|| top.x_groq.and_then(groq_usage))
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    {
        out.usage = Usage::from_json(&usage);
    }
    let first_choice = top
        .choices
        .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
        .and_then(|choices| choices.first().copied())
        .and_then(|raw| from_object::<ChoiceRaw<'_>>(raw.get()));
    if let Some(choice) = first_choice {
        out.finish_reason = raw_str(choice.finish_reason);
        if let Some(message) = choice
            .message
            .and_then(|raw| from_object::<MessageRaw<'_>>(raw.get()))
        {
            fill_from_message(&mut out, message, gather);
        } else if let Some(text) = choice.text {
            gather.push(&mut out.content, text);
        }
    } else if let Some(output) = top.output.and_then(Output::read) {
        gather_responses_output(output, &mut out, gather);
        out.finish_reason = raw_str(top.status);
    } else if let Some(blocks) = top
        .content
        .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
    {
        // An Anthropic message (`/v1/messages`): content blocks and a `stop_reason`.
        read_anthropic_content(&blocks, &mut out, gather);
        out.finish_reason = raw_str(top.stop_reason);
    } else if top.choices.is_none() && top.output.is_none() && top.content.is_none() {
        read_other_shapes(&top, body, &mut out, gather);
    }
    // An error reported under a 2xx (a gateway's `{"error": {...}}` with status 200, a
    // Responses API `"status": "failed"`).
    if let Some(error) = top
        .error
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .filter(|error| !error.is_null())
    {
        out.error = Some(error_message(&error));
    }
    Some(out)
}

/// The top level of a response body, every field left raw.
#[derive(Deserialize)]
struct BodyTop<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    /// Embeddings' vectors or images (see [`read_data`]).
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// A transcription's or translation's text.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    /// Moderations' results.
    #[serde(borrow, default)]
    results: Option<&'a RawValue>,
    /// Anthropic's legacy Text Completions API (`/v1/complete`): the generated text.
    #[serde(borrow, default)]
    completion: Option<&'a RawValue>,
    /// Groq's metadata, whose `usage` is read when there is no top-level one.
    #[serde(borrow, default)]
    x_groq: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceRaw<'a> {
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageRaw<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    /// The legacy functions API's call, in place of `tool_calls`.
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

/// One part of a `content` list (multimodal, some vendors): `{"type": "text", "text": ...}`,
/// or, from Mistral's thinking models, `{"type": "thinking", "thinking": [{"type": "text",
/// "text": ...}]}` (its `thinking` a string in some), which is reasoning.
#[derive(Debug, Deserialize)]
struct PartRaw<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
}

impl PartRaw<'_> {
    /// The part's text and its thinking (either may be empty), read whole: a stream delta's.
    fn texts(&self) -> (String, String) {
        let mut gather = Gather::whole();
        let (mut text, mut thinking) = (String::new(), String::new());
        if self.kind.is_some_and(|kind| kind.get() == "\"thinking\"") {
            // A list of text parts, or a string: `content`'s own shapes.
            gather_content(self.thinking, Part::Text, &mut gather, &mut thinking);
        } else if let Some(raw) = self.text {
            gather.push(&mut text, raw);
        }
        (text, thinking)
    }
}

/// The parts of a `content` list, each read on its own: one that is not an object is
/// skipped, not the list.
fn content_parts(raw: &RawValue) -> Vec<PartRaw<'_>> {
    serde_json::from_str::<Vec<&RawValue>>(raw.get())
        .map(|parts| {
            parts
                .into_iter()
                .filter_map(|part| from_object(part.get()))
                .collect()
        })
        .unwrap_or_default()
}

/// Which texts of a `content` [`gather_content`] reads.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// A string, and each part's `text`.
    Text,
    /// Each `thinking` part's thinking: its own text parts (a string, a list or one part),
    /// not the thinking parts inside it.
    Thinking,
}

/// Appends `content`'s texts of the kind `part` to `into`, through `gather`: a string is all
/// text; a list of parts has each part's text or thinking (see [`PartRaw`]), and so has one
/// part alone, as a stream's delta has it (see [`DeltaContent`]). The content's text and its
/// thinking are read in two passes, so each is cut where [`ResponseSummary::bound_texts`]
/// cuts it (the text counts first).
fn gather_content(
    content: Option<&RawValue>,
    part: Part,
    gather: &mut Gather<'_>,
    into: &mut String,
) {
    let Some(raw) = content else {
        return;
    };
    let mut read = |one: &PartRaw<'_>| {
        let thinking = one.kind.is_some_and(|kind| kind.get() == "\"thinking\"");
        match (thinking, part) {
            (true, Part::Thinking) => gather_content(one.thinking, Part::Text, gather, into),
            (false, Part::Text) => {
                if let Some(text) = one.text {
                    gather.push(into, text);
                }
            }
            _ => {}
        }
    };
    match raw.get().as_bytes().first() {
        Some(b'"') if part == Part::Text => {
            gather.push(into, raw);
        }
        Some(b'[') => content_parts(raw).iter().for_each(read),
        Some(b'{') => {
            if let Some(one) = from_object::<PartRaw<'_>>(raw.get()) {
                read(&one);
            }
        }
        _ => {}
    }
}

/// Reads a whole answer's texts within [`MAX_STREAM_TEXT`] as they are decoded, in the order
/// [`ResponseSummary::bound_texts`] keeps them: a text that runs past what is left of the
/// bound is decoded only so far, plus a margin, and the texts after it not at all (read only
/// to tell a string from another value). The margin is the reach of the cut's guard (the
/// longest secret, see [`CutGuard::reach`]): `bound_texts` then cuts what was gathered
/// exactly where it would have cut the whole text, short of a secret running across the cut.
/// Decoded whole first, a 50 MB answer's text was copied whole (up to twice its size while
/// serde_json unescaped it) beside its body, to keep 8 MiB of it.
struct Gather<'g> {
    /// `None` for [`Self::whole`].
    guard: Option<&'g CutGuard>,
    /// [`MAX_STREAM_TEXT`], or no bound at all (see [`Self::whole`]).
    limit: usize,
    /// [`Self::margin`], found the first time a text may run past the bound.
    margin: Option<usize>,
    /// Bytes of the texts gathered so far, each whole.
    kept: usize,
    /// A text ran past the bound: `bound_texts` cuts it and keeps nothing after it.
    over: bool,
}

impl<'g> Gather<'g> {
    fn new(guard: &'g CutGuard) -> Self {
        Self {
            guard: Some(guard),
            limit: MAX_STREAM_TEXT,
            margin: None,
            kept: 0,
            over: false,
        }
    }

    /// Reads texts whole: a stream's delta, which its [`TextBudget`] bounds as it appends it
    /// (a delta is one event's, bounded by the event).
    fn whole() -> Self {
        Self {
            guard: None,
            limit: usize::MAX,
            margin: None,
            kept: 0,
            over: false,
        }
    }

    /// Starts over, nothing gathered (the lenient path reads a body the fast one gave up on).
    fn restart(&mut self) {
        self.kept = 0;
        self.over = false;
    }

    /// What is gathered of a text past its bound: the bytes the cut's guard may read past
    /// it (see `RequestRedactor::safe_cut`), and a character's.
    fn margin(&mut self) -> usize {
        let guard = self.guard;
        *self
            .margin
            .get_or_insert_with(|| guard.map_or(0, CutGuard::reach).saturating_add(4))
    }

    /// Most bytes of a text of `len` bytes at most to gather now: all of it when it fits.
    fn cap(&mut self, len: usize) -> usize {
        if self.over {
            return 0;
        }
        let room = self.limit - self.kept;
        if len <= room {
            return usize::MAX;
        }
        room.saturating_add(self.margin())
    }

    /// Counts a text of `full` bytes, `gathered` or not.
    fn count(&mut self, full: usize) {
        if self.over {
            return;
        }
        if full > self.limit - self.kept {
            self.over = true;
        } else {
            self.kept = self.kept.saturating_add(full);
        }
    }

    /// Appends the JSON string `raw` to `into`, decoded as far as [`Self::cap`] allows;
    /// `false` (and nothing appended) when it is not a string serde_json would read.
    fn push(&mut self, into: &mut String, raw: &RawValue) -> bool {
        let text = raw.get();
        // A string's text is never longer than its JSON.
        let cap = self.cap(text.len().saturating_sub(2));
        // Room for what is kept of it: its length decoded, read first when it has escapes
        // (its JSON would reserve up to six times that).
        let decoded = if memchr::memchr(b'\\', text.as_bytes()).is_none() {
            text.len().saturating_sub(2)
        } else if cap == 0 {
            0
        } else {
            match decode_json_string(text, &mut String::new(), 0) {
                Some(len) => len,
                None => return false,
            }
        };
        if cap > 0 {
            self.reserve(into, decoded.min(cap.saturating_add(4)));
        }
        let before = into.len();
        let Some(full) = decode_json_string(text, into, cap) else {
            into.truncate(before);
            return false;
        };
        self.count(full);
        true
    }

    /// Room in `into` for `add` more bytes at once; for many short texts (content parts)
    /// room grows by doubling, but never past what the field may still be given.
    fn reserve(&self, into: &mut String, add: usize) {
        if into.capacity() - into.len() < add {
            let most = (self.limit - self.kept)
                .saturating_add(self.margin.unwrap_or(0))
                .saturating_add(4);
            into.reserve_exact(add.max(into.len()).min(most.max(add)));
        }
    }

    /// `field` gathered: room left in it for more, grown by doubling (see [`Self::reserve`]),
    /// is given back, since the fields after it are given what is left of the bound.
    fn done(&self, field: &mut String) {
        field.shrink_to_fit();
    }

    /// Appends `text`, read whole already (a separator, a note), counted and cut as
    /// [`Self::push`] cuts.
    fn push_str(&mut self, into: &mut String, text: &str) {
        let mut end = self.cap(text.len()).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        self.reserve(into, end);
        into.push_str(&text[..end]);
        self.count(text.len());
    }

    /// Appends the JSON value `raw` as `serde_json::Value`'s `to_string` writes it (see
    /// [`json_text`]), counted and cut as [`Self::push`] cuts; `false` (and nothing
    /// appended) when it is not one a `Value` reads. Read into a `Value` and written whole
    /// first, a tool call's 50 MB arguments object took several times its size to keep 8 MiB.
    fn push_json(&mut self, into: &mut String, raw: &RawValue) -> bool {
        // Its length written is not known before it is written (`1e9` is `1000000000.0`):
        // what is left of the bound, and the margin, are kept; all of it when it fits.
        let cap = self.cap(usize::MAX);
        if cap == 0 {
            // Past the bound nothing of it is kept, whatever it is (it was read for nothing).
            return true;
        }
        self.reserve(into, raw.get().len().min(cap.saturating_add(4)));
        let before = into.len();
        let mut kept = Kept::new(into, cap);
        if json_text(raw.get(), &mut kept, VALUE_DEPTH).is_none() {
            into.truncate(before);
            return false;
        }
        let full = kept.full;
        self.count(full);
        true
    }

    /// Appends a tool call's arguments: a string as it is, anything else as its JSON (see
    /// [`Self::push_json`]), nothing when a `Value` would not read it.
    fn push_arguments(&mut self, into: &mut String, raw: &RawValue) {
        if !self.push(into, raw) && self.push_json(into, raw) {
            // Written longer than its JSON (numbers), it grew by doubling.
            into.shrink_to_fit();
        }
    }

    /// A message's tool call (see [`tool_call_of`]), its name and arguments gathered; `None`
    /// once a text ran past the bound, which keeps no call after it.
    fn tool_call(&mut self, call: &RawValue) -> Option<ToolCall> {
        if self.over {
            return None;
        }
        let strict = from_object::<ToolCallRaw<'_>>(call.get())
            .and_then(|raw| Some((raw, raw.tool(ToolRaw::strict)?)));
        let (raw, (tool, kind)) = match strict {
            Some(read) => read,
            None => {
                // Not an object, or one with a member twice: read as a `Value` reads it (the
                // last one counts), and not at all where a `Value` is refused.
                if !value_reads(call.get()) {
                    return None;
                }
                let Some(members) = Members::read(call.get()) else {
                    return Some(ToolCall {
                        kind: "function".to_owned(),
                        ..ToolCall::default()
                    });
                };
                let raw = ToolCallRaw::of(&members);
                (raw, raw.tool(ToolRaw::tolerant)?)
            }
        };
        let mut out = ToolCall {
            id: raw_str(raw.id).unwrap_or_default(),
            kind: raw_str(raw.kind).unwrap_or_else(|| kind.to_owned()),
            ..ToolCall::default()
        };
        if let Some(name) = tool.name {
            self.push(&mut out.name, name);
        }
        let arguments = if kind == "custom" {
            tool.input
        } else {
            tool.arguments
        };
        if let Some(arguments) = arguments {
            self.push_arguments(&mut out.arguments, arguments);
        }
        Some(out)
    }

    /// The legacy functions API's one call (`function_call: {"name", "arguments"}`), a tool
    /// call of type `function` with no id, read as a `Value` reads it: none when it is not an
    /// object, or not one a `Value` reads; a member written twice is its last.
    fn function_call(&mut self, raw: &RawValue) -> Option<ToolCall> {
        let members = Members::read(raw.get())?;
        if !value_reads(raw.get()) {
            return None;
        }
        let mut call = ToolCall {
            kind: "function".to_owned(),
            ..ToolCall::default()
        };
        if let Some(name) = members.get("name") {
            self.push(&mut call.name, name);
        }
        if let Some(arguments) = members.get("arguments") {
            self.push_arguments(&mut call.arguments, arguments);
        }
        Some(call)
    }
}

/// A message's tool call as [`Gather::tool_call`] reads it, every member left raw.
#[derive(Deserialize, Clone, Copy)]
struct ToolCallRaw<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function: Option<&'a RawValue>,
    #[serde(borrow, default)]
    custom: Option<&'a RawValue>,
}

/// A tool call's `function` (or `custom`) object, its members left raw.
#[derive(Deserialize, Default)]
struct ToolRaw<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

impl<'a> ToolCallRaw<'a> {
    /// The call's members as a `Value` has them (see [`Members::get`]).
    fn of(members: &Members<'a>) -> Self {
        Self {
            id: members.get("id"),
            kind: members.get("type"),
            function: members.get("function"),
            custom: members.get("custom"),
        }
    }

    /// Its `function` object, or its `custom` one (with no `function`), read by `read`, and
    /// the call's kind; `None` when `read` refuses the object. Neither, or one that is not an
    /// object, has no name nor arguments.
    fn tool(self, read: fn(&'a str) -> Option<ToolRaw<'a>>) -> Option<(ToolRaw<'a>, &'static str)> {
        let function = self.function.filter(|function| function.get() != "null");
        let custom = self
            .custom
            .filter(|custom| function.is_none() && object_text(custom.get()).is_some());
        let (tool, kind) = match custom {
            Some(custom) => (Some(custom), "custom"),
            None => (function, "function"),
        };
        match tool.filter(|tool| object_text(tool.get()).is_some()) {
            None => Some((ToolRaw::default(), kind)),
            Some(tool) => Some((read(tool.get())?, kind)),
        }
    }
}

impl<'a> ToolRaw<'a> {
    /// Read as a derived struct reads it: a member twice refuses it.
    fn strict(raw: &'a str) -> Option<Self> {
        from_object(raw)
    }

    /// Read as a `Value` reads it: a member twice is its last (`null` included).
    fn tolerant(raw: &'a str) -> Option<Self> {
        let members = Members::read(raw)?;
        Some(Self {
            name: members.get("name"),
            arguments: members.get("arguments"),
            input: members.get("input"),
        })
    }
}

/// Decodes the JSON string `raw` (quotes included) onto `into`, keeping its first `cap`
/// bytes or a little more (to the end of the character at `cap`), and returns its whole
/// decoded length; `None` when it is not a string serde_json reads (an invalid escape, a
/// lone surrogate's, a raw control character), and then `into` may hold part of it. What is
/// past `cap` is read to the end all the same, so the answer is serde_json's: only less is
/// kept.
fn decode_json_string(raw: &str, into: &mut String, cap: usize) -> Option<usize> {
    let mut kept = Kept::new(into, cap);
    json_string_pieces(raw, |piece, _| kept.put(piece))?;
    Some(kept.full)
}

/// A text written in pieces onto `into`, which keeps its first `cap` bytes or a little more
/// (to the end of the character at `cap`); `full` counts them all.
struct Kept<'s> {
    into: &'s mut String,
    cap: usize,
    full: usize,
}

impl<'s> Kept<'s> {
    fn new(into: &'s mut String, cap: usize) -> Self {
        Self { into, cap, full: 0 }
    }

    fn put(&mut self, piece: &str) {
        let room = self.cap.saturating_sub(self.full);
        if room > 0 {
            let mut end = piece.len().min(room);
            while !piece.is_char_boundary(end) {
                end += 1;
            }
            self.into.push_str(&piece[..end]);
        }
        self.full = self.full.saturating_add(piece.len());
    }

    /// `text` as serde_json writes it inside a string's quotes: `"` and `\` escaped, and
    /// every control character (`\n`, `\u001f`).
    fn put_escaped(&mut self, text: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut start = 0;
        for (at, b) in text.bytes().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.put(&text[start..at]);
            if short.is_empty() {
                let unit = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ];
                self.put(std::str::from_utf8(&unit).unwrap_or_default());
            } else {
                self.put(short);
            }
            start = at + 1;
        }
        self.put(&text[start..]);
    }
}

/// Decodes the JSON string `raw` (quotes included), handing it to `emit` in pieces (each
/// whole characters), each told whether it was an escape (a run between escapes holds no
/// `"`, `\` nor control character); `None` when it is not a string serde_json reads (see
/// [`decode_json_string`]).
fn json_string_pieces(raw: &str, mut emit: impl FnMut(&str, bool)) -> Option<()> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let bytes = inner.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let run = bytes[at..]
            .iter()
            .position(|&b| b == b'\\' || b == b'"' || b < 0x20)
            .map_or(bytes.len(), |n| at + n);
        // The run ends before an ASCII byte (or at the end): a character boundary.
        emit(&inner[at..run], false);
        let Some(&b) = bytes.get(run) else {
            break;
        };
        if b != b'\\' {
            return None;
        }
        let escape = *bytes.get(run + 1)?;
        at = run + 2;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex_unit(bytes, at)?;
                at += 4;
                match unit {
                    0xD800..=0xDBFF => {
                        if bytes.get(at..at + 2) != Some(b"\\u".as_slice()) {
                            return None;
                        }
                        let low = hex_unit(bytes, at + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        at += 6;
                        let code = 0x1_0000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code)?
                    }
                    0xDC00..=0xDFFF => return None,
                    unit => char::from_u32(u32::from(unit))?,
                }
            }
            _ => return None,
        };
        emit(c.encode_utf8(&mut [0; 4]), true);
    }
    Some(())
}

/// Arrays and objects one inside another past which serde_json refuses to read a `Value`
/// (its recursion limit: the 128th is refused).
const VALUE_DEPTH: usize = 128;

/// Writes the JSON value `raw` onto `out` as `serde_json::Value`'s `to_string` writes it once
/// read (compact; an object's members in their keys' order, a member written twice as its
/// last; numbers as `Value` reads them), piece by piece: nothing is read whole into a
/// `Value` (a 50 MB object took several times its size so) and only what `out` keeps is
/// copied. `None` where reading it into a `Value` fails (a number out of range, a lone
/// surrogate's escape, nesting past [`VALUE_DEPTH`]), and `out` may then hold part of it.
fn json_text(raw: &str, out: &mut Kept<'_>, depth: usize) -> Option<()> {
    let raw = raw.trim_ascii();
    match raw.as_bytes().first()? {
        b'"' => {
            out.put("\"");
            // Only what was an escape may need one again.
            json_string_pieces(raw, |piece, escape| {
                if escape {
                    out.put_escaped(piece);
                } else {
                    out.put(piece);
                }
            })?;
            out.put("\"");
        }
        b'[' => {
            let depth = depth.saturating_sub(1);
            if depth == 0 {
                return None;
            }
            out.put("[");
            let mut reader = serde_json::Deserializer::from_str(raw);
            serde::Deserializer::deserialize_seq(&mut reader, ListText { out, depth }).ok()?;
            out.put("]");
        }
        b'{' => {
            let depth = depth.saturating_sub(1);
            if depth == 0 {
                return None;
            }
            let mut members = Members::read(raw)?.0;
            // By key, each key's members in the order written: the last of them is kept,
            // as a `Value`'s map keeps it; those before it are only read.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            out.put("{");
            let mut first = true;
            for (at, (key, value)) in members.iter().enumerate() {
                if members.get(at + 1).is_some_and(|next| next.0 == *key) {
                    json_text(value.get(), &mut Kept::new(&mut String::new(), 0), depth)?;
                    continue;
                }
                if !first {
                    out.put(",");
                }
                first = false;
                out.put("\"");
                out.put_escaped(key);
                out.put("\":");
                json_text(value.get(), out, depth)?;
            }
            out.put("}");
        }
        // A number, `true`, `false` or `null`: short.
        _ => out.put(&serde_json::from_str::<Value>(raw).ok()?.to_string()),
    }
    Some(())
}

/// `raw` reads as a `serde_json::Value` (see [`json_text`]); nothing of it is kept.
fn value_reads(raw: &str) -> bool {
    json_text(raw, &mut Kept::new(&mut String::new(), 0), VALUE_DEPTH).is_some()
}

/// A list's items written by [`json_text`] as they are read, none held.
struct ListText<'o, 's> {
    out: &'o mut Kept<'s>,
    depth: usize,
}

impl<'de> serde::de::Visitor<'de> for ListText<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON list")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(item) = items.next_element::<&'de RawValue>()? {
            if !first {
                self.out.put(",");
            }
            first = false;
            json_text(item.get(), self.out, self.depth)
                .ok_or_else(|| serde::de::Error::custom("not a JSON value"))?;
        }
        Ok(())
    }
}

/// A JSON object's members, left raw, in the order written. Read as a `Value` reads an
/// object: a member written twice is its last (see [`Self::get`]), where a derived struct
/// refuses the object.
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// `raw`'s members when it is an object.
    fn read(raw: &'a str) -> Option<Self> {
        from_object(raw)
    }

    /// The member `key`, its last when written twice (`null` included: a `Value` has it).
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| *value)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key.0, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The four hex digits at `at` as a UTF-16 code unit, as serde_json reads them (either case).
fn hex_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |unit, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(unit << 4 | v as u16)
    })
}

/// A raw JSON value read as a string, when it is one.
fn raw_str(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// The text of an error object as providers send it: its `message`, a bare string as is,
/// anything else as JSON.
fn error_message(error: &Value) -> String {
    match error {
        Value::String(text) => text.clone(),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

/// Most characters of an error's `type` or `code` a record keeps, as of a name a message
/// quotes: an upstream's code is a short token, and one that is not must not grow a record.
const MAX_ERROR_TOKEN_CHARS: usize = 80;

/// An upstream's error object as a record keeps it beside its `message` (already bounded):
/// `{"message", "type", "code"}`, each of the two last when given and not `null` (a code
/// that is not a string, `429`, as its JSON value; a string cut past
/// [`MAX_ERROR_TOKEN_CHARS`]); `None` when it gives neither, or is not an object.
fn error_detail(message: &str, error: &Value) -> Option<Value> {
    let token = |key: &str| match error.get(key)? {
        Value::Null => None,
        Value::String(text) => Some(Value::String(crate::error::clip(
            text,
            MAX_ERROR_TOKEN_CHARS,
        ))),
        Value::Array(_) | Value::Object(_) => None,
        scalar => Some(scalar.clone()),
    };
    let kind = token("type");
    let code = token("code");
    if kind.is_none() && code.is_none() {
        return None;
    }
    let mut detail = serde_json::Map::new();
    detail.insert("message".into(), Value::String(message.to_owned()));
    if let Some(kind) = kind {
        detail.insert("type".into(), kind);
    }
    if let Some(code) = code {
        detail.insert("code".into(), code);
    }
    Some(Value::Object(detail))
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A message's tool call: a `function` call's name and `arguments`, or a custom tool call's
/// (OpenAI's `{"type": "custom", "custom": {"name", "input"}}`) name and free-form `input` as
/// the arguments, as the Responses API's `custom_tool_call` is read. Read from a `Value`, as
/// a whole answer's calls were before [`Gather::tool_call`]: the tests' reference.
#[cfg(test)]
fn tool_call_of(call: &Value) -> ToolCall {
    let function = call.get("function").filter(|function| !function.is_null());
    let custom = call
        .get("custom")
        .filter(|custom| custom.is_object() && function.is_none());
    let ((name, arguments), kind) = match custom {
        Some(custom) => (tool_fields(Some(custom), "input"), "custom"),
        None => (function_fields(function), "function"),
    };
    ToolCall {
        id: str_field(call, "id").unwrap_or_default(),
        kind: str_field(call, "type").unwrap_or_else(|| kind.to_owned()),
        name,
        arguments,
    }
}

/// A `function` object's name and arguments (a string as is, anything else as JSON).
#[cfg(test)]
fn function_fields(function: Option<&Value>) -> (String, String) {
    tool_fields(function, "arguments")
}

/// A tool object's name and its arguments under `arguments_key` (a string as is, anything
/// else as JSON).
#[cfg(test)]
fn tool_fields(tool: Option<&Value>, arguments_key: &str) -> (String, String) {
    let name = tool.and_then(|t| str_field(t, "name")).unwrap_or_default();
    let arguments = tool
        .and_then(|t| t.get(arguments_key))
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    (name, arguments)
}

/// The Responses API: `output` is a list of items; messages hold `output_text` parts,
/// reasoning items their raw `reasoning_text` parts (`content`) and their `summary`, tool
/// calls are `function_call`s and `custom_tool_call`s. The image tool's calls
/// (`image_generation_call`, each image in base64 in its `result`) are a note after the
/// text (`<1 image (image_generation_call, 1.3 MB)>`) and set
/// [`ResponseSummary::body_noted`], as the images endpoints' base64 does: no record keeps
/// megabytes of them, once per answer and again per read-back.
fn read_responses_output(output: &[Value], out: &mut ResponseSummary) {
    for item in output {
        if let Some(call) = responses_tool_call(item) {
            out.tool_calls.push(call);
            continue;
        }
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let Some(parts) = item.get("content").and_then(Value::as_array) {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            out.content.push_str(text);
                        } else if let Some(text) = part.get("refusal").and_then(Value::as_str) {
                            out.refusal.push_str(text);
                        }
                    }
                }
            }
            Some("reasoning") => {
                // The raw chain (`reasoning_text`, which a stream sends as
                // `response.reasoning_text.delta`) before its summary, in a stream's order;
                // each summary part after some reasoning a paragraph of its own, as a
                // stream's `response.reasoning_summary_part.added` makes it.
                for key in ["content", "summary"] {
                    if let Some(parts) = item.get(key).and_then(Value::as_array) {
                        for part in parts {
                            if let Some(text) = part.get("text").and_then(Value::as_str) {
                                if key == "summary" && !out.reasoning.is_empty() {
                                    out.reasoning.push_str(REASONING_PARTS_APART);
                                }
                                out.reasoning.push_str(text);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(note) = image_generation_note(output) {
        push_image_note(&mut out.content, &note);
        out.body_noted = true;
    }
}

/// `<1 image (image_generation_call, 1.3 MB)>` for the image tool's calls in a Responses
/// API `output` (each image in base64 in its `result`; the decoded size of all), `None`
/// when it has none.
fn image_generation_note(output: &[Value]) -> Option<String> {
    let (mut images, mut bytes) = (0usize, 0u64);
    for item in output {
        if item.get("type").and_then(Value::as_str) != Some("image_generation_call") {
            continue;
        }
        if let Some(result) = item.get("result").and_then(Value::as_str) {
            images += 1;
            bytes += base64_bytes(result);
        }
    }
    image_generation_note_of(images, bytes)
}

/// The decoded size of a base64 text.
fn base64_bytes(base64: &str) -> u64 {
    let padding = base64.bytes().rev().take_while(|b| *b == b'=').count();
    (base64.len().saturating_sub(padding) as u64) * 3 / 4
}

/// [`image_generation_note`]'s note for `images` images of `bytes` bytes in all.
fn image_generation_note_of(images: usize, bytes: u64) -> Option<String> {
    let plural = if images == 1 { "image" } else { "images" };
    (images > 0).then(|| {
        format!(
            "<{images} {plural} (image_generation_call, {})>",
            human_bytes(bytes)
        )
    })
}

/// `note` after the answer's text, a paragraph of its own.
fn push_image_note(content: &mut String, note: &str) {
    if !content.is_empty() {
        content.push_str("\n\n");
    }
    content.push_str(note);
}

/// What stands between a Responses API reasoning summary's parts (and between the raw chain
/// and the summary) in a record: a paragraph break, so `**Checking**` of a second part does
/// not run on from the first part's last sentence.
const REASONING_PARTS_APART: &str = "\n\n";

/// A Responses API output item that is a tool call: a `function_call` (its `arguments`), or
/// a `custom_tool_call` (type `custom`, its free-form `input` as the arguments).
fn responses_tool_call(item: &Value) -> Option<ToolCall> {
    let (kind, arguments) = match item.get("type").and_then(Value::as_str)? {
        "function_call" => ("function", "arguments"),
        "custom_tool_call" => ("custom", "input"),
        _ => return None,
    };
    Some(ToolCall {
        id: str_field(item, "call_id").unwrap_or_default(),
        kind: kind.to_owned(),
        name: str_field(item, "name").unwrap_or_default(),
        arguments: str_field(item, arguments).unwrap_or_default(),
    })
}

/// A whole answer's Responses API `output` (see [`read_responses_output`]), its items'
/// members left raw for [`Gather`] to read their texts within their bound. An item (or a
/// part in one) with a member twice is read as a `Value` reads it: the last one counts.
struct Output<'a>(Vec<OutputItem<'a>>);

/// A Responses API output item, its members left raw.
#[derive(Deserialize, Default)]
struct OutputItem<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    summary: Option<&'a RawValue>,
    #[serde(borrow, default)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

/// A part of an output item's `content` or `summary`, its members left raw.
#[derive(Deserialize, Default)]
struct OutputPart<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
}

/// `raw` is a JSON string (serde_json reads every string a raw value holds, but for a lone
/// surrogate's escape, which the caller ruled out).
fn is_string(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| raw.get().starts_with('"'))
}

/// The objects of the list `raw` each read as `T`: an item that is not an object is `T`'s
/// default (a `Value`'s `get` finds nothing in it), and the list's `None` is not a list.
/// `Err` when an object is one `T` refuses.
fn raw_objects<'a, T: Deserialize<'a> + Default>(raw: &'a RawValue) -> Option<Result<Vec<T>, ()>> {
    let items = serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok()?;
    Some(
        items
            .into_iter()
            .map(|item| match object_text(item.get()) {
                Some(text) => serde_json::from_str::<T>(text).map_err(|_| ()),
                None => Ok(T::default()),
            })
            .collect(),
    )
}

impl<'a> Output<'a> {
    /// `None` when the list is not one `Vec<Value>` reads, so the body is read as it was
    /// then (as another shape).
    fn read(raw: &'a RawValue) -> Option<Self> {
        // A lone surrogate's escape `Value` refuses (a body not UTF-8 is not fixed first).
        if lone_surrogates_replaced(raw.get()).is_some() {
            return None;
        }
        let strict = raw_objects::<OutputItem<'_>>(raw)?.ok().filter(|items| {
            items.iter().all(|item| {
                [item.content, item.summary]
                    .into_iter()
                    .flatten()
                    .all(|parts| !matches!(raw_objects::<OutputPart<'_>>(parts), Some(Err(()))))
            })
        });
        if let Some(items) = strict {
            return Some(Self(items));
        }
        // A member twice, where `Value`s were read whole: read as a `Value` reads it, and
        // only where the list reads as `Value`s.
        if !value_reads(raw.get()) {
            return None;
        }
        Some(Self(members_of_objects(raw, OutputItem::of)?))
    }
}

/// The objects of the list `raw` each read by `of` from its members (see [`Members`]): an
/// item that is not an object is `T`'s default (a `Value`'s `get` finds nothing in it), and
/// the list's `None` is not a list.
fn members_of_objects<'a, T: Default>(
    raw: &'a RawValue,
    of: fn(&Members<'a>) -> T,
) -> Option<Vec<T>> {
    let items = serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok()?;
    Some(
        items
            .into_iter()
            .map(|item| Members::read(item.get()).map_or_else(T::default, |members| of(&members)))
            .collect(),
    )
}

impl<'a> OutputItem<'a> {
    /// The item's members as a `Value` has them (see [`Members::get`]).
    fn of(members: &Members<'a>) -> Self {
        Self {
            kind: members.get("type"),
            content: members.get("content"),
            summary: members.get("summary"),
            call_id: members.get("call_id"),
            name: members.get("name"),
            arguments: members.get("arguments"),
            input: members.get("input"),
            result: members.get("result"),
        }
    }
}

impl<'a> OutputPart<'a> {
    /// The part's members as a `Value` has them (see [`Members::get`]).
    fn of(members: &Members<'a>) -> Self {
        Self {
            text: members.get("text"),
            refusal: members.get("refusal"),
        }
    }
}

impl OutputItem<'_> {
    /// Its `type` is `kind` (a string, as a `Value`'s `as_str` reads it).
    fn is(&self, kind: &str) -> bool {
        raw_str(self.kind).as_deref() == Some(kind)
    }

    /// The parts of its `summary`, or of its `content`: none when it is not a list. A part
    /// with a member twice is read as a `Value` reads it (see [`Output::read`]).
    fn parts(&self, summary: bool) -> Vec<OutputPart<'_>> {
        let raw = if summary { self.summary } else { self.content };
        raw.and_then(|raw| members_of_objects(raw, OutputPart::of))
            .unwrap_or_default()
    }
}

/// [`read_responses_output`] of a whole answer, its texts read within their bound through
/// `gather`, in the order [`ResponseSummary::bound_texts`] keeps them: the messages' texts
/// and the image note (content), the reasoning, the refusals, then the tool calls. Read
/// into `Value`s, a 50 MB answer's text was copied whole to keep 8 MiB of it.
fn gather_responses_output(output: Output<'_>, out: &mut ResponseSummary, gather: &mut Gather<'_>) {
    let Output(items) = output;
    let messages = || items.iter().filter(|item| item.is("message"));
    for item in messages() {
        for part in item.parts(false) {
            if let Some(text) = part.text.filter(|text| is_string(Some(text))) {
                gather.push(&mut out.content, text);
            }
        }
    }
    let (mut images, mut bytes) = (0usize, 0u64);
    for item in items.iter().filter(|item| item.is("image_generation_call")) {
        if let Some(result) = item.result.filter(|result| is_string(Some(result))) {
            images += 1;
            let text = result.get();
            bytes += if text.contains('\\') {
                base64_bytes(&raw_str(Some(result)).unwrap_or_default())
            } else {
                base64_bytes(&text[1..text.len() - 1])
            };
        }
    }
    if let Some(note) = image_generation_note_of(images, bytes) {
        if !out.content.is_empty() {
            gather.push_str(&mut out.content, "\n\n");
        }
        gather.push_str(&mut out.content, &note);
        out.body_noted = true;
    }
    gather.done(&mut out.content);
    for item in items.iter().filter(|item| item.is("reasoning")) {
        for summary in [false, true] {
            for part in item.parts(summary) {
                let Some(text) = part.text.filter(|text| is_string(Some(text))) else {
                    continue;
                };
                if summary && !out.reasoning.is_empty() {
                    gather.push_str(&mut out.reasoning, REASONING_PARTS_APART);
                }
                gather.push(&mut out.reasoning, text);
            }
        }
    }
    gather.done(&mut out.reasoning);
    for item in messages() {
        for part in item.parts(false) {
            if is_string(part.text) {
                continue;
            }
            if let Some(refusal) = part.refusal.filter(|refusal| is_string(Some(refusal))) {
                gather.push(&mut out.refusal, refusal);
            }
        }
    }
    gather.done(&mut out.refusal);
    for item in &items {
        let (kind, arguments) = if item.is("function_call") {
            ("function", item.arguments)
        } else if item.is("custom_tool_call") {
            ("custom", item.input)
        } else {
            continue;
        };
        // None after a text past the bound (see [`ResponseSummary::bound_texts`]).
        if gather.over {
            break;
        }
        let mut call = ToolCall {
            id: raw_str(item.call_id).unwrap_or_default(),
            kind: kind.to_owned(),
            ..ToolCall::default()
        };
        if let Some(name) = item.name {
            gather.push(&mut call.name, name);
        }
        if let Some(arguments) = arguments {
            gather.push(&mut call.arguments, arguments);
        }
        out.tool_calls.push(call);
    }
}

/// An Anthropic message's `content` block as a whole answer's is read: [`AnthropicPart`]
/// with its texts left raw, for [`Gather`] to read within their bound.
#[derive(Deserialize)]
struct AnthropicBlock<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    partial_json: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> AnthropicBlock<'a> {
    /// The block, when [`AnthropicPart`] reads it: its texts strings (or `null`) serde_json
    /// reads.
    fn read(raw: &'a RawValue) -> Option<Self> {
        let block = from_object::<Self>(raw.get())?;
        let text_ok = |text: Option<&RawValue>| {
            text.is_none_or(|text| {
                is_string(Some(text)) && lone_surrogates_replaced(text.get()).is_none()
            })
        };
        (text_ok(block.text) && text_ok(block.thinking)).then_some(block)
    }

    /// The `tool_use` block's call as [`anthropic_tool_call`] reads it, its name and its
    /// `input` (the arguments, its JSON as written) gathered: copied whole, a 50 MB input
    /// was held twice to keep 8 MiB of it.
    fn tool_call(self, gather: &mut Gather<'_>) -> ToolCall {
        let mut call = anthropic_tool_call(&AnthropicPart {
            kind: self.kind,
            text: None,
            thinking: None,
            partial_json: self.partial_json,
            id: self.id,
            name: None,
            input: None,
            stop_reason: self.stop_reason,
        });
        if let Some(name) = self.name {
            gather.push_str(&mut call.name, &name);
        }
        if let Some(input) = self.input.map(RawValue::get) {
            if input.trim_ascii() != "null" {
                gather.push_str(&mut call.arguments, input);
            }
        }
        call
    }
}

/// An Anthropic message's `content` blocks: `text` is content, `thinking` reasoning,
/// `tool_use` a tool call (its `input` object as the arguments). A block of another type, or
/// one that is not an object, is skipped. The texts are read through `gather`, in the order
/// [`ResponseSummary::bound_texts`] keeps them (text, thinking, then the tool calls): read
/// whole, a 50 MB answer's text was copied whole to keep 8 MiB of it.
fn read_anthropic_content(
    blocks: &[&RawValue],
    out: &mut ResponseSummary,
    gather: &mut Gather<'_>,
) {
    let blocks: Vec<AnthropicBlock<'_>> = blocks
        .iter()
        .filter_map(|raw| AnthropicBlock::read(raw))
        .collect();
    let of_kind = |kind: &'static str| {
        blocks.iter().filter(move |block| {
            !is_tool_use(block.kind.as_deref()) && block.kind.as_deref() == Some(kind)
        })
    };
    for block in of_kind("text") {
        if let Some(text) = block.text {
            gather.push(&mut out.content, text);
        }
    }
    gather.done(&mut out.content);
    for block in of_kind("thinking") {
        if let Some(thinking) = block.thinking {
            gather.push(&mut out.reasoning, thinking);
        }
    }
    gather.done(&mut out.reasoning);
    for block in blocks {
        // None after a text past the bound (see [`ResponseSummary::bound_texts`]).
        if gather.over {
            break;
        }
        if is_tool_use(block.kind.as_deref()) {
            out.tool_calls.push(block.tool_call(gather));
        }
    }
}

/// A whole answer with no `choices`, `output` or `content`: a transcription or translation
/// (`text`: its text is the content), embeddings or images (`data`: a note, see
/// [`read_data`]), moderations (`results`: a note, see [`moderation_note`]). A JSON answer
/// of none of these shapes (and no error) gets a note of its top-level keys, never their
/// values: an unknown answer may hold anything (a session's client secret), and the request
/// log keeps its body anyway.
fn read_other_shapes(
    top: &BodyTop<'_>,
    body: &[u8],
    out: &mut ResponseSummary,
    gather: &mut Gather<'_>,
) {
    if top
        .text
        .is_some_and(|text| gather.push(&mut out.content, text))
    {
        out.text_answer = true;
        return;
    }
    // Anthropic's legacy `/v1/complete`: `{"type": "completion", "completion": " Hello",
    // "stop_reason": "stop_sequence", ...}`, read as a legacy completion's `choices[0].text`.
    if top
        .completion
        .is_some_and(|text| gather.push(&mut out.content, text))
    {
        out.finish_reason = raw_str(top.stop_reason);
        return;
    }
    if top.data.is_some_and(|data| read_data(data, out)) {
        return;
    }
    if let Some(note) = top.results.and_then(moderation_note) {
        out.content = note;
        return;
    }
    if top.error.is_none_or(|e| e.get() == "null") {
        out.content = keys_note(body);
    }
}

/// One item of an answer's `data` list: an embedding, or an image. The vector and the base64
/// are left raw: only their lengths are read, never a copy of them.
#[derive(Deserialize)]
struct DataItem<'a> {
    #[serde(borrow, default)]
    embedding: Option<&'a RawValue>,
    #[serde(borrow, default)]
    b64_json: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    url: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    revised_prompt: Option<std::borrow::Cow<'a, str>>,
}

/// Embeddings (`<3 embeddings, 1536 dimensions>`) or images (`<2 images (b64_json, 1.2
/// MB)>`, then each image's URL and revised prompt, one a line) as the content; false when
/// `data` is neither. Vectors and base64 images set [`ResponseSummary::body_noted`].
fn read_data(data: &RawValue, out: &mut ResponseSummary) -> bool {
    let Some(items) = from_objects::<DataItem<'_>>(data.get()) else {
        return false;
    };
    read_items(&items, out)
}

/// [`read_data`] for a `data` list already read (by the fast path's one pass).
fn read_items(items: &[DataItem<'_>], out: &mut ResponseSummary) -> bool {
    if let Some(first) = items.iter().find_map(|item| item.embedding) {
        out.content = embeddings_note(items.len(), first);
        out.body_noted = true;
        return true;
    }
    if !items
        .iter()
        .any(|item| item.b64_json.is_some() || item.url.is_some())
    {
        return false;
    }
    out.content = images_note(items);
    out.body_noted = items.iter().any(|item| item.b64_json.is_some());
    true
}

/// `<3 embeddings, 1536 dimensions>`, from the first vector's length: a list of numbers
/// (its commas counted) or, with `encoding_format: "base64"`, float32s in base64.
fn embeddings_note(n: usize, first: &RawValue) -> String {
    let plural = if n == 1 { "embedding" } else { "embeddings" };
    let raw = first.get().as_bytes();
    let dimensions = match raw.first() {
        Some(b'[') => {
            let inner = raw[1..raw.len().saturating_sub(1)].trim_ascii();
            let commas = memchr::memchr_iter(b',', inner).count();
            Some((if inner.is_empty() { 0 } else { commas + 1 }, ""))
        }
        Some(b'"') => {
            let floats = usize::try_from(base64_decoded_len(first) / 4).unwrap_or(usize::MAX);
            Some((floats, ", base64"))
        }
        _ => None,
    };
    match dimensions {
        Some((d, encoding)) => format!("<{n} {plural}, {d} dimensions{encoding}>"),
        None => format!("<{n} {plural}>"),
    }
}

/// `<2 images (b64_json, 1.2 MB)>` (the decoded size of all of them) or `<1 image (url)>`,
/// then for each image its URL and its revised prompt, when it has them.
fn images_note(items: &[DataItem<'_>]) -> String {
    let n = items.len();
    let plural = if n == 1 { "image" } else { "images" };
    let b64: u64 = items
        .iter()
        .filter_map(|item| item.b64_json)
        .map(base64_decoded_len)
        .sum();
    let has_b64 = items.iter().any(|item| item.b64_json.is_some());
    let mut note = if has_b64 {
        format!("<{n} {plural} (b64_json, {})>", human_bytes(b64))
    } else {
        format!("<{n} {plural} (url)>")
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(url) = &item.url {
            note.push_str(&format!("\nimage {}: {url}", i + 1));
        }
        if let Some(prompt) = &item.revised_prompt {
            note.push_str(&format!("\nimage {} revised prompt: {prompt}", i + 1));
        }
    }
    note
}

/// `1.2 MB`, `34.5 kB`, `512 bytes` (decimal units).
fn human_bytes(bytes: u64) -> String {
    // Exact enough: one decimal is shown.
    let f = bytes as f64;
    if bytes >= 1_000_000 {
        format!("{:.1} MB", f / 1_000_000.0)
    } else if bytes >= 1_000 {
        format!("{:.1} kB", f / 1_000.0)
    } else {
        format!("{bytes} bytes")
    }
}

/// One of a moderation answer's `results`.
#[derive(Deserialize)]
struct ModerationResult {
    #[serde(default)]
    flagged: Option<bool>,
    #[serde(default)]
    categories: Option<std::collections::BTreeMap<String, Value>>,
}

/// `<moderation: not flagged>`, `<moderation: flagged (harassment, violence)>`, or for
/// several inputs `<moderation of 3 inputs: 1 flagged (violence)>`: the categories set to
/// `true` in any flagged result, in name order. `None` when `results` is not a moderation's
/// (a rerank's results have no `flagged`).
fn moderation_note(results: &RawValue) -> Option<String> {
    let results = from_objects::<ModerationResult>(results.get())?;
    if results.is_empty() || results.iter().any(|r| r.flagged.is_none()) {
        return None;
    }
    let flagged: Vec<&ModerationResult> =
        results.iter().filter(|r| r.flagged == Some(true)).collect();
    let mut categories: Vec<&str> = flagged
        .iter()
        .filter_map(|r| r.categories.as_ref())
        .flat_map(|c| c.iter().filter(|(_, v)| **v == Value::Bool(true)))
        .map(|(name, _)| name.as_str())
        .collect();
    categories.sort_unstable();
    categories.dedup();
    let which = if categories.is_empty() {
        String::new()
    } else {
        format!(" ({})", categories.join(", "))
    };
    Some(match (results.len(), flagged.len()) {
        (1, 0) => "<moderation: not flagged>".to_owned(),
        (1, _) => format!("<moderation: flagged{which}>"),
        (n, 0) => format!("<moderation of {n} inputs: none flagged>"),
        (n, k) => format!("<moderation of {n} inputs: {k} flagged{which}>"),
    })
}

/// Most top-level keys [`keys_note`] names, and the longest key it shows whole.
const MAX_NOTED_KEYS: usize = 16;
const MAX_NOTED_KEY_CHARS: usize = 64;

/// `<JSON answer with keys: id, object, status>`: the top-level keys of an answer of no
/// known shape, in order, at most [`MAX_NOTED_KEYS`] (then `...`), each cut to
/// [`MAX_NOTED_KEY_CHARS`] characters. An empty string when the body is not an object.
fn keys_note(body: &[u8]) -> String {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = (Vec<String>, usize);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let (mut keys, mut n) = (Vec::new(), 0);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                n += 1;
                if keys.len() < MAX_NOTED_KEYS {
                    keys.push(key.chars().take(MAX_NOTED_KEY_CHARS).collect());
                }
            }
            Ok((keys, n))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let Ok((keys, n)) = serde::Deserializer::deserialize_map(&mut de, Keys) else {
        return String::new();
    };
    if keys.is_empty() {
        return "<JSON answer: an empty object>".to_owned();
    }
    let more = if n > keys.len() { ", ..." } else { "" };
    format!("<JSON answer with keys: {}{more}>", keys.join(", "))
}

// ---- streams -----------------------------------------------------------------------------

/// What one stream event was, for the forwarding decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `data: [DONE]`
    Done,
    /// A chunk with `choices: []` and a usage object: the reply to `include_usage`.
    UsageOnly,
    /// The last event of a format that has no `[DONE]` (see [`is_last_event`]): the answer
    /// is complete once it is forwarded, as at `[DONE]`. Told from the event's name by the
    /// stream tee, never returned by [`classify_event`] or [`StreamAccumulator::push_data`].
    End,
    /// Anything else: forwarded as is.
    Other,
}

/// The last events of an endpoint's own format when it has no `data: [DONE]`: Anthropic's
/// `message_stop` on `/messages`, the Responses API's `response.completed`,
/// `response.incomplete` and `response.failed` on `/responses`; none elsewhere (a chat
/// stream ends at `[DONE]` only, whatever its events are named: an upstream that names one
/// `message_stop` must not cut it short). Nothing of the answer follows them (the upstream
/// closes), so the body ends there as it does after `[DONE]`. Not the audio and image
/// streams' end events: an image stream with `n` above 1 has one
/// `image_generation.completed` per image.
#[derive(Debug, Clone, Copy)]
pub struct LastEvents(&'static [&'static [u8]]);

impl LastEvents {
    /// Those of the format of `path` (the path after `/v1`).
    pub fn of(path: &str) -> Self {
        if path == "/messages" {
            Self(&[b"message_stop"])
        } else if path == "/responses" || path.starts_with("/responses/") {
            Self(&[
                b"response.completed",
                b"response.incomplete",
                b"response.failed",
            ])
        } else {
            Self::NONE
        }
    }

    /// A format that ends at `[DONE]` only.
    pub const NONE: Self = Self(&[]);

    fn contains(self, name: &[u8]) -> bool {
        self.0.contains(&name)
    }
}

/// Whether `event` (whole, its `data` payload `data`) is one of `last`: by its `event:` name
/// when its first line is one (Anthropic and the Responses API name every event so), else
/// by its data's `"type"` when that is the object's first member. No JSON is parsed, and a
/// chat stream has nothing to compare, so this costs what `[DONE]`'s comparison does; it is
/// the same whether a sink records the stream or not.
pub fn is_last_event(event: &[u8], data: &[u8], last: LastEvents) -> bool {
    if last.0.is_empty() {
        return false;
    }
    let last = |name: &[u8]| last.contains(name);
    if let Some(name) = event_name(event) {
        if last(name) {
            return true;
        }
    }
    leading_type(data).is_some_and(last)
}

/// The name an event's first line gives it (`event: message_stop`), if that line is its
/// `event:` field. A `\n` before it is the rest of the previous event's `\r\n`, cut
/// between two reads (the event splitter ends an event at a `\r` that is the last byte
/// come): the same event read whole would have none.
fn event_name(event: &[u8]) -> Option<&[u8]> {
    let event = event.strip_prefix(b"\n").unwrap_or(event);
    let rest = event.strip_prefix(b"event:")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The value of a JSON object's `"type"` member when it is the object's first, read without
/// parsing the rest (`{"type": "message_stop"}`). `None` when the object opens otherwise.
fn leading_type(data: &[u8]) -> Option<&[u8]> {
    let rest = data.trim_ascii_start().strip_prefix(b"{")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"type\"")?;
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The [`EventKind`] of one `data:` payload without reading it into a summary, for streams
/// nothing records (every sink off): `[DONE]` is a comparison, and only a payload that names
/// `"usage"` is parsed, by [`StreamAccumulator::push_data`] itself. `want_usage_only` false
/// skips even that (the client asked for the usage chunk itself).
pub fn classify_event(data: &[u8], want_usage_only: bool) -> EventKind {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return EventKind::Done;
    }
    if !want_usage_only || !names_usage(trimmed) {
        return EventKind::Other;
    }
    // A payload naming a usage object (one a stream, mostly) is read as the accumulator
    // reads it, repairs included (a stray byte, a raw control character, a lone surrogate),
    // so the two never disagree: a probe of its own forwarded, with every sink off, usage
    // chunks the accumulator drops (found by fuzzing, bb45/bb48).
    match StreamAccumulator::default().push_data(trimmed) {
        EventKind::UsageOnly => EventKind::UsageOnly,
        _ => EventKind::Other,
    }
}

/// A payload cut short (not whole JSON) that names a `usage` object: it may be the usage-only
/// chunk, cut by the end of the body it was the last event of. A piece of JSON cannot be told
/// apart further. Read only at a stream's end, never per event.
pub fn may_be_cut_usage_chunk(data: &[u8]) -> bool {
    let trimmed = data.trim_ascii();
    names_usage(trimmed) && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_err()
}

/// `"usage"` followed by a colon and a value other than `null` somewhere in `data`: what can
/// make a usage-only chunk as [`StreamAccumulator::push_data`] reads one (an object, or any
/// value: `"usage": 5` is read as a usage, none in it). `"usage": null`, which OpenAI puts in
/// every other chunk once `include_usage` is on, is not. A key inside a JSON string has its
/// quotes escaped, so it cannot match; a false match only costs a parse.
fn names_usage(data: &[u8]) -> bool {
    // Built once: building a searcher cost more than the search on a ~200-byte event.
    static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE_KEY.find_iter(data).any(|at| {
        let mut rest = data[at + 7..]
            .iter()
            .copied()
            .skip_while(u8::is_ascii_whitespace);
        rest.next() == Some(b':')
            && rest
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| b != b'n')
    })
}

/// Builds a [`ResponseSummary`] from stream events, one `data:` payload at a time.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    summary: ResponseSummary,
    /// Set once an event carried text, reasoning or a tool call (or, in a speech stream,
    /// audio).
    saw_output: bool,
    /// Set once the stream's own end event was read (Anthropic's `message_stop`, or on the
    /// legacy `/v1/complete` the `completion` event with a `stop_reason`, the Responses
    /// API's `response.completed` / `incomplete` / `failed`, the audio streams'
    /// `speech.audio.done` and `transcript.text.done`): those formats have no
    /// `data: [DONE]`, and a stream of theirs that closes after it ran to its end.
    saw_end: bool,
    /// Anthropic: the usage counts read so far. `message_start` has the input and cache
    /// counts (and a provisional output count), `message_delta` the output (cumulative, and
    /// in newer versions the input again); each count keeps the largest value seen.
    anthropic_usage: Option<serde_json::Map<String, Value>>,
    /// Anthropic: which tool call each `tool_use` content block became, for its
    /// `input_json_delta` pieces.
    anthropic_tools: Vec<AnthropicTool>,
    /// The Responses API: which tool call (index into `summary.tool_calls`) each tool call
    /// item (by its `output_index`) became, for the pieces of its arguments.
    responses_tools: Vec<(Option<u64>, usize)>,
    /// Set by the first event of OpenAI's audio event streams (see [`is_audio_event`]): from
    /// then on each event is read as an [`AudioEvent`] first. A chat stream never sets it, so
    /// its events are never looked at for these.
    audio: Option<AudioTally>,
    /// Set by the first event of an image stream (see [`is_image_event`]), as `audio` is.
    images: Option<ImageTally>,
    /// How much text the record keeps of this stream (see [`TextBudget`]).
    budget: TextBudget,
    /// Tool calls past [`MAX_STREAM_TOOL_CALLS`] came and were left out.
    tool_calls_cut: bool,
    /// Chat streams: which tool call (index into `summary.tool_calls`) each upstream tool
    /// call `index` names now. Not the index itself: Ollama (and vLLM at times) sends every
    /// call whole at index 0, each with its own id, and read by index alone they made one call
    /// of all (`f1f2`, `{"a":1}{"b":2}`). See [`Self::slot_of_index`].
    chat_tools: Vec<(usize, usize)>,
}

/// Most bytes of text a stream's record keeps: its content, reasoning, refusal and tool
/// calls together. A real answer is a few hundred kilobytes at most; an upstream that streams
/// without end (or a `?proxy=` server made to) would otherwise grow the record, and the
/// router's memory, with every byte it relays, gigabytes within seconds. Past it the record
/// keeps what it had, ending in [`crate::sinks::generation::TRUNCATION_MARKER`]; the client
/// gets every byte, and usage is still read.
pub const MAX_STREAM_TEXT: usize = 8 * 1024 * 1024;

/// The longest value of an Anthropic stream's usage kept, in bytes of JSON (see
/// [`StreamAccumulator::merge_anthropic_usage`]).
const MAX_ANTHROPIC_USAGE_VALUE: usize = 1024;

/// Most tool calls a stream's record keeps (each costs a record entry even when empty), for
/// the reason [`MAX_STREAM_TEXT`] bounds the text.
pub const MAX_STREAM_TOOL_CALLS: usize = 1024;

/// The text a stream's record has kept so far, against [`MAX_STREAM_TEXT`], and the secrets
/// its cut must not split.
#[derive(Debug, Default)]
struct TextBudget {
    kept: usize,
    cut: bool,
    /// The record's secrets and the configured keys: the cut moves back to before any of
    /// them it would fall inside (see [`CutGuard`]), since the sinks' redaction would not
    /// recognise the half kept. Consulted only when the cut is made.
    guard: CutGuard,
}

impl TextBudget {
    /// Appends `text` to `field` while there is room; the piece that does not fit is cut at a
    /// character boundary, short of any secret that would run across the cut (what `field`
    /// ends with included), and the field that was growing ends with the marker; after that
    /// nothing more is kept.
    fn append(&mut self, field: &mut String, text: &str) {
        if self.cut || text.is_empty() {
            return;
        }
        let room = MAX_STREAM_TEXT - self.kept;
        if text.len() <= room {
            field.push_str(text);
            self.kept += text.len();
            return;
        }
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = self.guard.safe_cut(field, text, field.len() + end);
        match cut.checked_sub(field.len()) {
            Some(end) => field.push_str(&text[..end]),
            None => field.truncate(cut),
        }
        field.push_str(crate::sinks::generation::TRUNCATION_MARKER);
        self.kept = MAX_STREAM_TEXT;
        self.cut = true;
    }

    /// Keeps `field`, a text read whole, within the budget: cut as [`Self::append`] cuts a
    /// piece that does not fit, emptied once the budget is spent.
    fn keep(&mut self, field: &mut String) {
        if self.cut {
            *field = String::new();
            return;
        }
        let room = MAX_STREAM_TEXT - self.kept;
        if field.len() <= room {
            self.kept += field.len();
            return;
        }
        let mut end = room;
        while !field.is_char_boundary(end) {
            end -= 1;
        }
        let end = self.guard.safe_cut(field, "", end);
        field.truncate(end);
        field.push_str(crate::sinks::generation::TRUNCATION_MARKER);
        // The cut-off bytes are given back, not kept as spare room.
        field.shrink_to_fit();
        self.kept = MAX_STREAM_TEXT;
        self.cut = true;
    }

    /// Empties `field`, all of whose text was appended here, and gives its bytes back. Once
    /// the text was cut nothing more is kept anyway, and `field` stays as it is.
    fn take_back(&mut self, field: &mut String) {
        if !self.cut {
            self.kept = self.kept.saturating_sub(field.len());
            field.clear();
        }
    }
}

/// What an image stream (`/images/generations` or `/images/edits` with `stream: true`)
/// carried: its record's content is a note of it (see [`ImageTally::note`]), never the
/// base64.
#[derive(Debug, Default)]
struct ImageTally {
    /// `image_generation.completed` / `image_edit.completed` events read, and the bytes
    /// their base64 decodes to.
    completed: u64,
    completed_bytes: u64,
    /// `*.partial_image` events read, and their decoded bytes.
    partial: u64,
    partial_bytes: u64,
}

impl ImageTally {
    /// `<1 image (b64_json, 1.2 MB)>`, as a whole answer's note of its base64 images (see
    /// [`images_note`]): the completed images and their decoded size. A stream cut before
    /// any image completed says what partial images it had:
    /// `<no image completed; 2 partial images (b64_json, 301.2 kB)>`.
    fn note(&self) -> String {
        let plural = |n: u64| if n == 1 { "image" } else { "images" };
        if self.completed == 0 && self.partial > 0 {
            return format!(
                "<no image completed; {} partial {} (b64_json, {})>",
                self.partial,
                plural(self.partial),
                human_bytes(self.partial_bytes)
            );
        }
        format!(
            "<{} {} (b64_json, {})>",
            self.completed,
            plural(self.completed),
            human_bytes(self.completed_bytes)
        )
    }
}

/// The event types of OpenAI's image streams: `image_generation.partial_image` and
/// `image_generation.completed` (`/images/generations`), `image_edit.partial_image` and
/// `image_edit.completed` (`/images/edits`), each with a base64 `b64_json`, the completed
/// one with `usage`.
fn is_image_event(kind: &str) -> bool {
    kind.starts_with("image_generation.") || kind.starts_with("image_edit.")
}

/// One event of an image stream, only what the record needs: the base64 is left raw, only
/// its length is read.
#[derive(Deserialize)]
struct ImageEvent<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    b64_json: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

/// What an audio event stream carried beyond the summary's fields.
#[derive(Debug, Default)]
struct AudioTally {
    /// A speech stream (`speech.audio.*` events): its record's content says how much audio
    /// it carried (see [`speech_description`]), not the audio itself.
    speech: bool,
    /// `speech.audio.delta` events read.
    deltas: u64,
    /// The audio bytes their base64 decodes to.
    bytes: u64,
}

/// The event types of OpenAI's audio event streams: `/audio/speech` with
/// `stream_format: "sse"` (`speech.audio.delta` with base64 `audio`, then `speech.audio.done`
/// with `usage`, and no `[DONE]`), and `/audio/transcriptions` with `stream: true`
/// (`transcript.text.delta` with a text `delta`, then `transcript.text.done` with the whole
/// `text` and `usage`).
fn is_audio_event(kind: &str) -> bool {
    kind.starts_with("speech.audio.") || kind.starts_with("transcript.text.")
}

/// One event of an audio event stream, only what the record needs. The audio is left raw:
/// only its length is read, never a copy of it (a delta may hold megabytes of base64).
#[derive(Deserialize)]
struct AudioEvent<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    audio: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    delta: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

/// The bytes a base64 JSON string (raw, quotes included) decodes to, from its length alone.
/// A `\/` escape (JSON may escape `/`) counts as the one character it stands for.
fn base64_decoded_len(raw: &RawValue) -> u64 {
    let text = raw.get().as_bytes();
    let Some(inner) = text
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
    else {
        return 0;
    };
    let escapes = memchr::memchr_iter(b'\\', inner).count();
    let padding = inner.iter().rev().take_while(|b| **b == b'=').count();
    let chars = inner.len().saturating_sub(escapes + padding) as u64;
    chars * 3 / 4
}

/// A speech stream's record content in place of its audio: `<speech audio, 48213 bytes in
/// 12 deltas>`.
fn speech_description(tally: &AudioTally) -> String {
    let deltas = if tally.deltas == 1 { "delta" } else { "deltas" };
    format!(
        "<speech audio, {} bytes in {} {deltas}>",
        tally.bytes, tally.deltas
    )
}

/// The `type`s of Anthropic's Messages stream events that [`StreamAccumulator`] reads on their
/// own path. (`error` is shared with the Responses API and read by the common path.)
const ANTHROPIC_EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
];

/// An Anthropic `message_start`'s `message`: only what the record needs.
#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

/// An Anthropic content block (`content_block_start`'s `content_block`, or one of a whole
/// message's `content`), or a delta to one (`content_block_delta`'s `delta`, whose `type` is
/// `text_delta`, `thinking_delta`, `input_json_delta`, ...), or a `message_delta`'s `delta`.
#[derive(Deserialize)]
struct AnthropicPart<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    thinking: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    partial_json: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
}

fn anthropic_part(raw: Option<&RawValue>) -> Option<AnthropicPart<'_>> {
    from_object(raw?.get())
}

/// A content block of these types is a tool call (`server_tool_use`: one the provider runs,
/// such as web search).
fn is_tool_use(kind: Option<&str>) -> bool {
    matches!(kind, Some("tool_use" | "server_tool_use"))
}

/// A tool call from an Anthropic `tool_use` block: its `input` object becomes the arguments
/// (a JSON string, as in OpenAI's shape). In a stream the block opens with an empty `{}`,
/// which its `input_json_delta` pieces replace when any come (see [`AnthropicTool`]); a
/// call of a tool without arguments has none, and keeps the `{}` a whole message has.
/// A `server_tool_use` block (web search, code execution: run by the provider, its result in
/// the block after it) keeps that type, so a trace tells it from a `function` call the client
/// has to run.
fn anthropic_tool_call(block: &AnthropicPart<'_>) -> ToolCall {
    let arguments = block
        .input
        .map(RawValue::get)
        .filter(|raw| raw.trim_ascii() != "null")
        .unwrap_or_default();
    let kind = match block.kind.as_deref() {
        Some("server_tool_use") => "server_tool_use",
        _ => "function",
    };
    ToolCall {
        id: block.id.as_deref().unwrap_or_default().to_owned(),
        kind: kind.to_owned(),
        name: block.name.as_deref().unwrap_or_default().to_owned(),
        arguments: arguments.to_owned(),
    }
}

/// The Responses API stream events about a tool call, read on their own path (see
/// [`ResponsesToolEvent`]).
const RESPONSES_TOOL_EVENTS: &[&str] = &[
    "response.output_item.added",
    "response.output_item.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.custom_tool_call_input.delta",
    "response.custom_tool_call_input.done",
];

/// One of [`RESPONSES_TOOL_EVENTS`]: `response.output_item.added` and `.done` (an `item`,
/// which may be a tool call), `response.function_call_arguments.delta` and
/// `response.custom_tool_call_input.delta` (a piece of a call's arguments or input), and
/// their `.done` (all of them), each naming its item by its `output_index`.
#[derive(Deserialize)]
struct ResponsesToolEvent<'a> {
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(borrow, default, deserialize_with = "object_only")]
    item: Option<ResponsesItem<'a>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    delta: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    arguments: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    input: Option<std::borrow::Cow<'a, str>>,
}

/// A Responses API output item, only what a tool call has: a message's text is skipped
/// unread.
#[derive(Deserialize)]
struct ResponsesItem<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    call_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    arguments: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    input: Option<std::borrow::Cow<'a, str>>,
}

impl ResponsesItem<'_> {
    /// The item as a tool call, as [`responses_tool_call`] reads one in a whole `output`.
    fn tool_call(self) -> Option<ToolCall> {
        let (kind, arguments) = match self.kind.as_deref()? {
            "function_call" => ("function", self.arguments),
            "custom_tool_call" => ("custom", self.input),
            _ => return None,
        };
        let owned = |text: Option<std::borrow::Cow<'_, str>>| text.unwrap_or_default().into_owned();
        Some(ToolCall {
            id: owned(self.call_id),
            kind: kind.to_owned(),
            name: owned(self.name),
            arguments: owned(arguments),
        })
    }
}

/// An Anthropic stream's `tool_use` block and the tool call it became.
#[derive(Debug)]
struct AnthropicTool {
    /// The block's `index`, which its `input_json_delta` pieces name.
    block: Option<u64>,
    /// The call's place in `summary.tool_calls`.
    slot: usize,
    /// The call's arguments are still the block's own `input` (`{}`): its first piece of
    /// JSON replaces them.
    start_input: bool,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "objects_only")]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    /// Responses API events.
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(default)]
    response: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    /// A Responses API `error` event's message (a string), or an Anthropic `message_start`'s
    /// message (an object): left raw, read by the event's type.
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    /// A Responses API `error` event's code (a string, or what the upstream sent): raw.
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    /// Anthropic: the content block an event is about.
    #[serde(borrow, default)]
    index: Option<&'a RawValue>,
    /// Anthropic: a `content_block_start`'s block (text, thinking, tool_use).
    #[serde(borrow, default)]
    content_block: Option<&'a RawValue>,
    /// Anthropic's legacy `/v1/complete`: a `completion` event's piece of text.
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    completion: Option<std::borrow::Cow<'a, str>>,
    /// Anthropic's legacy `/v1/complete`: set on a stream's last `completion` event.
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
    /// Groq's metadata, whose `usage` its last chunk has (see [`groq_usage`]).
    #[serde(borrow, default)]
    x_groq: Option<&'a RawValue>,
}

/// Whether a typed stream event's `type` is one of the Responses API's (`response.*`, and
/// its `error` event).
fn is_responses_event(kind: &str) -> bool {
    kind.starts_with("response.") || kind == "error"
}

/// How [`Chunk`] reads a member, for [`mistyped_members_fitted`]. Members not listed take
/// any value (they are left raw) or are not read.
#[derive(Clone, Copy)]
enum Shape {
    /// A string.
    Text,
    /// A string; another value is read as its JSON text, as a whole answer's tool call
    /// arguments are (see [`tool_fields`]).
    TextOrJson,
    /// A non-negative integer (a choice's or tool call's `index`); a string holding one is
    /// read as that number.
    Index,
    /// A delta's `content`: a string, a part or a list of parts (see [`DeltaContent`]).
    Content,
    /// An object, its members of these shapes.
    Object(&'static [(&'static str, Shape)]),
    /// A list of such objects; an item that is not one is left out.
    Objects(&'static [(&'static str, Shape)]),
}

/// The typed members of [`Chunk`] and the structs under it, by name: kept in step with them
/// by hand (a member typed there and missing here, sent mistyped, still loses its chunk).
const CHUNK_SHAPE: &[(&str, Shape)] = &[
    ("id", Shape::Text),
    ("model", Shape::Text),
    ("type", Shape::Text),
    ("completion", Shape::Text),
    ("stop_reason", Shape::Text),
    ("choices", Shape::Objects(CHOICE_SHAPE)),
];
const CHOICE_SHAPE: &[(&str, Shape)] = &[
    ("index", Shape::Index),
    ("delta", Shape::Object(DELTA_SHAPE)),
    ("text", Shape::Text),
    ("finish_reason", Shape::Text),
];
const DELTA_SHAPE: &[(&str, Shape)] = &[
    ("content", Shape::Content),
    ("reasoning_content", Shape::Text),
    ("reasoning", Shape::Text),
    ("refusal", Shape::Text),
    ("tool_calls", Shape::Objects(TOOL_CALL_SHAPE)),
    ("function_call", Shape::Object(FUNCTION_SHAPE)),
];
const TOOL_CALL_SHAPE: &[(&str, Shape)] = &[
    ("index", Shape::Index),
    ("id", Shape::Text),
    ("type", Shape::Text),
    ("function", Shape::Object(FUNCTION_SHAPE)),
    ("custom", Shape::Object(CUSTOM_SHAPE)),
];
const FUNCTION_SHAPE: &[(&str, Shape)] = &[("name", Shape::Text), ("arguments", Shape::TextOrJson)];
const CUSTOM_SHAPE: &[(&str, Shape)] = &[("name", Shape::Text), ("input", Shape::TextOrJson)];

/// `text` (a stream event [`Chunk`] refused) with each member of an unexpected type left
/// out, as a whole answer's lenient reading skips one (see [`summarize_leniently`]): a
/// chunk's `"id": 12345`, a number for its `delta.content`, or a list where an object
/// belongs (a choice, a delta: never read by position, see [`crate::json_object`]). A tool
/// call's `arguments` not a string are their JSON text, and an `index` sent as a string
/// (`"0"`) its number, as they read in a whole answer or an SDK. `None` when `text` is not a
/// JSON object. Read only after the typed pass failed, so a well-formed stream never pays
/// for it.
fn mistyped_members_fitted(text: &str) -> Option<String> {
    let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    fit_members(&mut chunk, CHUNK_SHAPE);
    Some(Value::Object(chunk).to_string())
}

/// Leaves out of `object` each member of `members` whose value is not of its shape.
fn fit_members(object: &mut serde_json::Map<String, Value>, members: &[(&str, Shape)]) {
    for (name, shape) in members {
        if let Some(value) = object.get_mut(*name) {
            if !fit(value, *shape) {
                object.remove(*name);
            }
        }
    }
}

/// Whether `value` is (or was made) of `shape`; `null` is every member's "none".
fn fit(value: &mut Value, shape: Shape) -> bool {
    match (shape, &mut *value) {
        (_, Value::Null) => true,
        (Shape::Text | Shape::TextOrJson | Shape::Content, Value::String(_)) => true,
        (Shape::Content, Value::Array(_) | Value::Object(_)) => true,
        (Shape::TextOrJson, other) => {
            *value = Value::String(other.to_string());
            true
        }
        (Shape::Index, Value::Number(n)) => n.as_u64().is_some_and(|n| usize::try_from(n).is_ok()),
        (Shape::Index, Value::String(s)) => match s.trim().parse::<usize>() {
            Ok(index) => {
                *value = Value::from(index);
                true
            }
            Err(_) => false,
        },
        (Shape::Object(members), Value::Object(object)) => {
            fit_members(object, members);
            true
        }
        (Shape::Objects(members), Value::Array(items)) => {
            items.retain_mut(|item| match item {
                Value::Object(object) => {
                    fit_members(object, members);
                    true
                }
                _ => false,
            });
            true
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    /// Which of `n` answers this delta belongs to; only the first (0, or none given) is
    /// recorded, as of a whole answer.
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default, deserialize_with = "object_only")]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<DeltaContent<'a>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    reasoning: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    refusal: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "objects_only")]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    /// The legacy functions API's one call: its name first, then its arguments in pieces.
    #[serde(borrow, default, deserialize_with = "object_only")]
    function_call: Option<FunctionDelta<'a>>,
}

/// A delta's `content`: a string, borrowed from the event unless escaped (almost every
/// delta), or a list of parts (Mistral's thinking models: `[{"type": "thinking",
/// "thinking": [...]}]`, `[{"type": "text", "text": ...}]`), read as a whole answer's (see
/// [`PartRaw`]), or one such part alone (`{"type": "text", "text": ...}`), read as a list of
/// it. A string is read in the chunk's one pass, as before; only a part costs more.
#[derive(Debug)]
enum DeltaContent<'a> {
    Text(std::borrow::Cow<'a, str>),
    Parts(Vec<PartRaw<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for DeltaContent<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = DeltaContent<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, a content part or a list of them")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(DeltaContent::Text(std::borrow::Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(DeltaContent::Text(std::borrow::Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(DeltaContent::Text(std::borrow::Cow::Owned(text)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // Each part read on its own: one that is not an object is skipped.
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<&'de RawValue>()? {
                    if let Some(part) = from_object::<PartRaw<'de>>(part.get()) {
                        parts.push(part);
                    }
                }
                Ok(DeltaContent::Parts(parts))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // One part on its own, not in a list: read as a list of it would be.
                let part = PartRaw::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(DeltaContent::Parts(vec![part]))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed_text")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "object_only")]
    function: Option<FunctionDelta<'a>>,
    /// A custom tool call's (type `custom`) name and pieces of its free-form input.
    #[serde(borrow, default, deserialize_with = "object_only")]
    custom: Option<CustomDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    arguments: Option<std::borrow::Cow<'a, str>>,
}

/// A piece of a custom tool call (OpenAI's `{"type": "custom", "custom": {"name",
/// "input"}}`): its name first, then its input in pieces, which are the call's arguments.
#[derive(Deserialize)]
struct CustomDelta<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    input: Option<std::borrow::Cow<'a, str>>,
}

impl StreamAccumulator {
    /// Cuts this stream's texts short of `guard`'s secrets (the record's and the configured
    /// keys), when they are cut at all: see [`TextBudget`]. Without it only keys of the
    /// router's own form are known.
    pub fn guard_cuts(&mut self, guard: CutGuard) {
        self.budget.guard = guard;
    }

    /// Reads one event's `data` payload (the text after `data:`, lines joined). Returns what
    /// kind of event it was; malformed JSON is `Other` and is forwarded untouched.
    pub fn push_data(&mut self, data: &[u8]) -> EventKind {
        let cut_before = self.budget.cut;
        let kind = self.read_data(data);
        if !cut_before && self.budget.cut {
            self.end_other_texts_at_the_cut();
        }
        kind
    }

    /// Once, when the stream's text is cut: the other texts stop growing there too (nothing
    /// more is kept), so one that ends with the beginning of a secret, whose rest an event
    /// not read would have brought (two fields' pieces interleaved), loses that beginning,
    /// as the text cut does. A text that merely ends with what one begins with (an `s`
    /// before keys that start `sk-`) loses it as well: nothing tells the two apart.
    fn end_other_texts_at_the_cut(&mut self) {
        let redactor = self.budget.guard.redactor();
        let summary = &mut self.summary;
        let calls = summary
            .tool_calls
            .iter_mut()
            .flat_map(|call| [&mut call.name, &mut call.arguments]);
        let texts = [
            &mut summary.content,
            &mut summary.reasoning,
            &mut summary.refusal,
        ];
        for text in texts.into_iter().chain(calls) {
            if text.ends_with(crate::sinks::generation::TRUNCATION_MARKER) {
                continue;
            }
            let end = redactor.safe_cut(text, "", text.len());
            text.truncate(end);
        }
    }

    fn read_data(&mut self, data: &[u8]) -> EventKind {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            return EventKind::Done;
        }
        // Every event read is an object: a list is none, and is not read by position as one
        // (see [`crate::json_object`]).
        if trimmed.first() != Some(&b'{') {
            return EventKind::Other;
        }
        // UTF-8 checked once for the whole payload: from bytes, serde_json checks every key
        // and string on its own, which cost a sixth of reading a typical event.
        let text = match std::str::from_utf8(trimmed) {
            Ok(text) => text,
            // A byte that is not UTF-8 (an upstream's Latin-1 `é`) spoils one character, not
            // the event: it is read with U+FFFD in that place (the client gets the bytes as
            // they came). The lossy copy is valid UTF-8, so this recurses once.
            Err(_) => return self.read_data(String::from_utf8_lossy(trimmed).as_bytes()),
        };
        // A lone surrogate's escape likewise spoils one character (see
        // [`lone_surrogates_replaced`]); the copy has none left, so this recurses once.
        if let Some(fixed) = lone_surrogates_replaced(text) {
            return self.read_data(fixed.as_bytes());
        }
        // An audio event stream's events (its first one told: see below), read on their own
        // path; an event of another type there (an `error`) is read as any other.
        if self.audio.is_some() {
            if let Some(kind) = self.push_audio_event(text) {
                return kind;
            }
        }
        if self.images.is_some() {
            if let Some(kind) = self.push_image_event(text) {
                return kind;
            }
        }
        let chunk = match serde_json::from_str::<Chunk<'_>>(text) {
            Ok(chunk) => chunk,
            // A member written twice (`"id"`, `"usage"`) is read as JSON parsers read it, the
            // last one winning (Python's, JavaScript's): refused, the event was lost, a usage
            // chunk with it (bb50). The copy has each once, so this recurses once.
            Err(error) if error.to_string().starts_with("duplicate field") => {
                return match serde_json::from_str::<Value>(text) {
                    Ok(last_wins) => self.read_data(last_wins.to_string().as_bytes()),
                    Err(_) => EventKind::Other,
                };
            }
            Err(_) => {
                // A raw control character in a string spoils nothing but itself (see
                // [`raw_controls_escaped`]); the copy has none left, so this recurses once.
                if let Some(fixed) = raw_controls_escaped(text) {
                    return self.read_data(fixed.as_bytes());
                }
                // A member of an unexpected type (`"id": 12345`, a tool call's `arguments`
                // as an object) spoils nothing but itself, as in a whole answer: it lost the
                // whole chunk, its usage and finish reason with it (bb51). Read once more
                // without it; a copy that still fails is not read.
                let Some(fitted) = mistyped_members_fitted(text) else {
                    return EventKind::Other;
                };
                return match serde_json::from_str::<Chunk<'_>>(&fitted) {
                    Ok(chunk) => self.read_chunk(chunk, &fitted),
                    Err(_) => EventKind::Other,
                };
            }
        };
        self.read_chunk(chunk, text)
    }

    /// Reads one parsed event; `text` is its JSON, for the formats read on paths of their own.
    fn read_chunk(&mut self, chunk: Chunk<'_>, text: &str) -> EventKind {
        if self.summary.id.is_none() {
            self.summary.id = chunk.id.as_deref().map(str::to_owned);
        }
        if let Some(model) = chunk.model.as_deref() {
            if self.summary.model.as_deref() != Some(model) {
                self.summary.model = Some(model.to_owned());
            }
        }
        // The error is the record's (its outcome, level and message); the finish reason
        // stays what the upstream gave, none here.
        if let Some(error) = chunk.error.as_ref() {
            self.note_error(error_message(error), Some(error));
        }
        if let Some(kind) = chunk.event_type.as_deref() {
            if ANTHROPIC_EVENTS.contains(&kind) {
                self.push_anthropic_event(kind, &chunk);
                return EventKind::Other;
            }
            if kind == "completion" {
                self.push_legacy_completion(&chunk);
                return EventKind::Other;
            }
            if self.audio.is_none() && is_audio_event(kind) {
                // The stream's first audio event, read once more on the audio path.
                self.audio = Some(AudioTally::default());
                if let Some(kind) = self.push_audio_event(text) {
                    return kind;
                }
            }
            if self.images.is_none() && is_image_event(kind) {
                // The stream's first image event, read once more on the image path.
                self.images = Some(ImageTally::default());
                if let Some(kind) = self.push_image_event(text) {
                    return kind;
                }
            }
        }
        // `"usage": null` (every chunk but the last, with include_usage) deserializes to None.
        let has_usage = match chunk.usage {
            Some(usage) => {
                if let Some(parsed) = Usage::from_raw(usage) {
                    self.summary.usage = Some(parsed);
                }
                true
            }
            None => false,
        };
        // Groq's usage under `x_groq` (its last chunk's), read only when no usage was: one
        // the chunk has at the top level, or another chunk had, is the same count. A
        // top-level `usage` that is not an object (a list) is none (see [`usage_object`]).
        // It is not the reply to `include_usage` (Groq sends it unasked), so it makes no
        // chunk usage-only.
        if usage_object(chunk.usage).is_none() && self.summary.usage.is_none() {
            if let Some(usage) = chunk.x_groq.and_then(groq_usage) {
                self.summary.usage = Usage::from_raw(usage);
            }
        }
        // A chunk of a chat stream may name its own type (`"type": "chat.completion.chunk"`,
        // as some gateways add): read as a Responses API event, it lost its text and first
        // token, and its usage chunk was not told usage-only (bb51). A typed event with
        // `choices` is one only when its type is of that API's.
        let event_type = chunk
            .event_type
            .as_deref()
            .filter(|kind| chunk.choices.is_none() || is_responses_event(kind));
        if let Some(kind) = event_type {
            if kind == "error" {
                let message = raw_str(chunk.message)
                    .unwrap_or_else(|| "the upstream reported an error".to_owned());
                // Its code beside its message, as the reference has it (its `type` is the
                // event's, `error`, no error's type).
                let code = chunk
                    .code
                    .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                let event = code.map(|code| serde_json::json!({ "code": code }));
                self.note_error(message, event.as_ref());
            }
            if RESPONSES_TOOL_EVENTS.contains(&kind) {
                self.push_responses_tool_event(kind, text);
            } else {
                self.push_responses_event(kind, chunk.delta, chunk.response.as_ref());
            }
            return EventKind::Other;
        }
        let choices = chunk.choices.unwrap_or_default();
        if choices.is_empty() && has_usage {
            return EventKind::UsageOnly;
        }
        for choice in choices {
            self.push_choice(choice);
        }
        EventKind::Other
    }

    /// Keeps choice `index`'s finish reason (a second one for the same choice replaces the
    /// first), up to [`MAX_MORE_FINISH_REASONS`] choices.
    fn note_more_finish_reason(&mut self, index: usize, reason: String) {
        let more = &mut self.summary.more_finish_reasons;
        if let Some(slot) = more.iter_mut().find(|(i, _)| *i == index) {
            slot.1 = reason;
        } else if more.len() < MAX_MORE_FINISH_REASONS {
            more.push((index, reason));
        }
    }

    fn push_choice(&mut self, choice: ChunkChoice<'_>) {
        // With `n` > 1 the answers' deltas interleave; mixed, they made one text of all. Of
        // the others only the finish reason is kept (parsed with the chunk anyway).
        if let Some(index) = choice.index.filter(|i| *i != 0) {
            if let Some(reason) = choice.finish_reason {
                self.note_more_finish_reason(index, reason.into_owned());
            }
            return;
        }
        if let Some(reason) = choice.finish_reason {
            self.summary.finish_reason = Some(reason.into_owned());
        }
        if let Some(text) = choice.text {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.content, &text);
        }
        let Some(delta) = choice.delta else { return };
        match delta.content {
            Some(DeltaContent::Text(text)) => {
                self.note_output(!text.is_empty());
                self.budget.append(&mut self.summary.content, &text);
            }
            Some(DeltaContent::Parts(parts)) => {
                for part in parts {
                    let (text, thinking) = part.texts();
                    self.note_output(!text.is_empty() || !thinking.is_empty());
                    self.budget.append(&mut self.summary.content, &text);
                    self.budget.append(&mut self.summary.reasoning, &thinking);
                }
            }
            None => {}
        }
        if let Some(text) = delta.reasoning_content.or(delta.reasoning) {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.reasoning, &text);
        }
        if let Some(text) = delta.refusal {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.refusal, &text);
        }
        for call in delta.tool_calls.unwrap_or_default() {
            self.note_output(true);
            let id = call.id.as_deref().filter(|id| !id.is_empty());
            let named = |name: &Option<std::borrow::Cow<'_, str>>| {
                name.as_deref().is_some_and(|name| !name.is_empty())
            };
            let starts = call.function.as_ref().is_some_and(|f| named(&f.name))
                || call.custom.as_ref().is_some_and(|c| named(&c.name));
            let index = match call.index {
                Some(index) => self.slot_of_index(index, id, starts),
                None => self.slot_of_id(id),
            };
            let Some(index) = index else {
                continue;
            };
            let Some(slot) = self.summary.tool_calls.get_mut(index) else {
                continue;
            };
            // A call keeps its first id (see [`Self::slot_of_index`]).
            if let Some(id) = call.id.filter(|id| !id.is_empty() && slot.id.is_empty()) {
                slot.id = id.into_owned();
            }
            if let Some(kind) = call.kind {
                slot.kind = kind.into_owned();
            } else if call.custom.is_some() && slot.kind != "custom" {
                // A custom call's first piece without its `type`: it is no function's.
                slot.kind = "custom".to_owned();
            }
            if let Some(function) = call.function {
                self.push_function_delta(index, function);
            }
            if let Some(custom) = call.custom {
                let piece = FunctionDelta {
                    name: custom.name,
                    arguments: custom.input,
                };
                self.push_function_delta(index, piece);
            }
        }
        // The legacy functions API's one call: recorded as the first tool call (type
        // `function`, no id), as a whole answer's `message.function_call` is.
        if let Some(function) = delta.function_call {
            self.note_output(true);
            if !self.summary.tool_calls.is_empty() || self.new_tool_call().is_some() {
                self.push_function_delta(0, function);
            }
        }
    }

    /// The tool call a chat delta with upstream index `index` goes on with: the one that
    /// index named last, unless the delta's `id` (when it has a non-empty one) is another
    /// than that call's. Then it goes on with the call of that id, if there is one (two
    /// calls' pieces alternating at one index); else, when it `starts` a call (it names a
    /// function) and that call has its name, it starts a new call (Ollama's calls, each whole
    /// at index 0); else it is that call's next piece with a changed id (Poolside's and some
    /// local servers' later pieces carry ids of their own), kept under its first id, as the
    /// openai SDKs assemble it by index. A new index starts a new call, so calls are kept in
    /// the order they began. `None` when a new call is not kept ([`Self::new_tool_call`]).
    fn slot_of_index(&mut self, index: usize, id: Option<&str>, starts: bool) -> Option<usize> {
        let named = self
            .chat_tools
            .iter()
            .find(|(upstream, _)| *upstream == index)
            .map(|&(_, slot)| slot);
        let calls = &self.summary.tool_calls;
        if let Some(slot) = named {
            let call = calls.get(slot)?;
            let Some(id) = id.filter(|id| !call.id.is_empty() && call.id != *id) else {
                return Some(slot);
            };
            if let Some(other) = calls.iter().rposition(|call| call.id == id) {
                self.name_slot(index, other);
                return Some(other);
            }
            if !starts || call.name.is_empty() {
                return Some(slot);
            }
        }
        let slot = self.new_tool_call()?;
        self.name_slot(index, slot);
        Some(slot)
    }

    /// Upstream tool call `index` names the record's call `slot` from now on.
    fn name_slot(&mut self, index: usize, slot: usize) {
        self.chat_tools.retain(|(upstream, _)| *upstream != index);
        self.chat_tools.push((index, slot));
    }

    /// The tool call a chat delta without an index goes on with (Gemini's endpoint sends each
    /// call whole, without one): the call with the delta's id, else a new one; a delta with
    /// no id goes on with the last call. `None` when a new call is not kept.
    fn slot_of_id(&mut self, id: Option<&str>) -> Option<usize> {
        let calls = &self.summary.tool_calls;
        let found = match id {
            Some(id) => calls.iter().rposition(|call| call.id == id),
            None => calls.len().checked_sub(1),
        };
        found.or_else(|| self.new_tool_call())
    }

    /// A new tool call at the end of the record's, when there is room for it (see
    /// [`Self::room_for_a_new_tool_call`]): its index.
    fn new_tool_call(&mut self) -> Option<usize> {
        let index = self.summary.tool_calls.len();
        if !self.room_for_a_new_tool_call(index) {
            return None;
        }
        self.summary.tool_calls.push(ToolCall {
            kind: "function".to_owned(),
            ..Default::default()
        });
        Some(index)
    }

    /// A piece of tool call `index`'s name and arguments (a `function` delta, or a custom
    /// call's name and input).
    fn push_function_delta(&mut self, index: usize, function: FunctionDelta<'_>) {
        let Some(slot) = self.summary.tool_calls.get_mut(index) else {
            return;
        };
        // Some providers (Fireworks, MiniMax, GPT-5 at times) repeat the whole name in every
        // piece rather than send it once: a piece that is the name so far is a repeat.
        if let Some(name) = function.name.filter(|name| *name != slot.name) {
            self.budget.append(&mut slot.name, &name);
        }
        if let Some(args) = function.arguments {
            self.budget.append(&mut slot.arguments, &args);
        }
    }

    /// Whether a tool call at `index` (one past those kept, or further) may be added. Not
    /// once the text was cut ([`TextBudget`]): the record keeps nothing after its marker, and
    /// a call added then would have lost its name and arguments, reading as a call of no
    /// function. Not past [`MAX_STREAM_TOOL_CALLS`] either: the last call kept then ends in
    /// the marker, so the record says it is not all there (once).
    fn room_for_a_new_tool_call(&mut self, index: usize) -> bool {
        if self.budget.cut {
            return false;
        }
        if index < MAX_STREAM_TOOL_CALLS {
            return true;
        }
        if !std::mem::replace(&mut self.tool_calls_cut, true) {
            if let Some(last) = self.summary.tool_calls.last_mut() {
                last.arguments
                    .push_str(crate::sinks::generation::TRUNCATION_MARKER);
            }
        }
        false
    }

    fn push_responses_event(
        &mut self,
        kind: &str,
        delta: Option<&RawValue>,
        response: Option<&Value>,
    ) {
        let delta_text = || delta.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        match kind {
            "response.output_text.delta" => {
                if let Some(text) = delta_text() {
                    self.note_output(!text.is_empty());
                    self.budget.append(&mut self.summary.content, &text);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = delta_text() {
                    self.note_output(!text.is_empty());
                    self.budget.append(&mut self.summary.reasoning, &text);
                }
            }
            // Each summary part after some reasoning begins a paragraph, as a whole answer's
            // parts are joined ([`REASONING_PARTS_APART`]).
            "response.reasoning_summary_part.added" if !self.summary.reasoning.is_empty() => {
                self.budget
                    .append(&mut self.summary.reasoning, REASONING_PARTS_APART);
            }
            "response.refusal.delta" => {
                if let Some(text) = delta_text() {
                    self.note_output(!text.is_empty());
                    self.budget.append(&mut self.summary.refusal, &text);
                }
            }
            // The model answering is known from the first event: a stream cut (or ended by
            // an `error` event) before `response.completed` still names it, as a chat
            // stream does from its first chunk.
            "response.created" | "response.in_progress" => {
                self.summary.begun = true;
                if let Some(response) = response {
                    self.note_response_id(response);
                    if let Some(model) = response.get("model").and_then(Value::as_str) {
                        if self.summary.model.as_deref() != Some(model) {
                            self.summary.model = Some(model.to_owned());
                        }
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.saw_end = true;
                if let Some(response) = response {
                    self.note_response_id(response);
                    if let Some(usage) = response.get("usage") {
                        if let Some(parsed) = Usage::from_json(usage) {
                            self.summary.usage = Some(parsed);
                        }
                    }
                    if let Some(model) = str_field(response, "model") {
                        self.summary.model = Some(model);
                    }
                    if let Some(output) = response.get("output").and_then(Value::as_array) {
                        self.take_responses_output(output);
                    }
                    self.summary.finish_reason = str_field(response, "status");
                    if kind == "response.failed" {
                        let error = response.get("error").filter(|e| !e.is_null());
                        self.note_error(
                            error.map_or_else(
                                || "the upstream reported the response failed".to_owned(),
                                error_message,
                            ),
                            error,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads one event of an audio event stream (see [`is_audio_event`]); `None` when it is
    /// not one (or not of the shape expected), to be read as any other event.
    fn push_audio_event(&mut self, text: &str) -> Option<EventKind> {
        let event = serde_json::from_str::<AudioEvent<'_>>(text).ok()?;
        let kind = event.kind.as_deref()?;
        match kind {
            "speech.audio.delta" => {
                let bytes = event.audio.map_or(0, base64_decoded_len);
                let tally = self.audio.get_or_insert_with(AudioTally::default);
                tally.speech = true;
                tally.deltas += 1;
                tally.bytes = tally.bytes.saturating_add(bytes);
                // The first audio is the stream's first token.
                self.note_output(bytes > 0);
            }
            "speech.audio.done" => {
                self.audio.get_or_insert_with(AudioTally::default).speech = true;
                self.saw_end = true;
                self.take_usage(event.usage);
            }
            "transcript.text.delta" => {
                if let Some(text) = event.delta {
                    self.note_output(!text.is_empty());
                    self.budget.append(&mut self.summary.content, &text);
                }
            }
            "transcript.text.done" => {
                self.saw_end = true;
                self.summary.text_answer = true;
                self.take_usage(event.usage);
                // The whole text, when no delta carried it.
                if let Some(text) = event.text.filter(|_| self.summary.content.is_empty()) {
                    self.note_output(!text.is_empty());
                    self.summary.content = text.into_owned();
                }
            }
            // Another event of these streams (a diarized transcript's segments): nothing the
            // record reads.
            _ if is_audio_event(kind) => {}
            _ => return None,
        }
        Some(EventKind::Other)
    }

    /// Reads one event of an image stream (see [`is_image_event`]); `None` when it is not
    /// one, to be read as any other event. The images are counted, never kept.
    fn push_image_event(&mut self, text: &str) -> Option<EventKind> {
        let event = serde_json::from_str::<ImageEvent<'_>>(text).ok()?;
        let kind = event.kind.as_deref()?;
        if !is_image_event(kind) {
            return None;
        }
        let bytes = event.b64_json.map_or(0, base64_decoded_len);
        let tally = self.images.get_or_insert_with(ImageTally::default);
        if kind.ends_with(".completed") {
            tally.completed += 1;
            tally.completed_bytes = tally.completed_bytes.saturating_add(bytes);
            self.take_usage(event.usage);
            // These streams have no `[DONE]`: the upstream closes after its completed image.
            // (With `n` above 1, a stream cut after its first image counts as complete.)
            self.saw_end = true;
        } else if kind.ends_with(".partial_image") {
            tally.partial += 1;
            tally.partial_bytes = tally.partial_bytes.saturating_add(bytes);
        }
        // The first image, partial or whole, is the stream's first token.
        self.note_output(bytes > 0);
        Some(EventKind::Other)
    }

    /// A usage object, when it has counts, becomes the summary's.
    fn take_usage(&mut self, usage: Option<&RawValue>) {
        if let Some(parsed) = usage.and_then(Usage::from_raw) {
            self.summary.usage = Some(parsed);
        }
    }

    /// Reads one event of Anthropic's Messages stream (`/v1/messages`).
    fn push_anthropic_event(&mut self, kind: &str, chunk: &Chunk<'_>) {
        match kind {
            "message_start" => {
                self.summary.begun = true;
                let Some(message) = chunk
                    .message
                    .and_then(|raw| from_object::<AnthropicMessage<'_>>(raw.get()))
                else {
                    return;
                };
                if self.summary.id.is_none() {
                    self.summary.id = message.id.map(std::borrow::Cow::into_owned);
                }
                if let Some(model) = message.model {
                    self.summary.model = Some(model.into_owned());
                }
                // Not yet the usage: its output count is provisional. A stream cut before
                // `message_delta` (or `message_stop`) has unknown usage, as any cut stream.
                self.merge_anthropic_usage(message.usage);
            }
            "content_block_start" => {
                let Some(block) = anthropic_part(chunk.content_block) else {
                    return;
                };
                if is_tool_use(block.kind.as_deref()) {
                    self.note_output(true);
                    if !self.room_for_a_new_tool_call(self.summary.tool_calls.len()) {
                        return;
                    }
                    let mut call = anthropic_tool_call(&block);
                    let input = std::mem::take(&mut call.arguments);
                    self.budget.append(&mut call.arguments, &input);
                    self.anthropic_tools.push(AnthropicTool {
                        block: chunk.index.and_then(|raw| raw.get().parse::<u64>().ok()),
                        slot: self.summary.tool_calls.len(),
                        start_input: !call.arguments.is_empty(),
                    });
                    self.summary.tool_calls.push(call);
                    return;
                }
                self.push_anthropic_text(&block);
            }
            "content_block_delta" => {
                let Some(delta) = anthropic_part(chunk.delta) else {
                    return;
                };
                if delta.kind.as_deref() == Some("input_json_delta") {
                    let Some(piece) = delta.partial_json.as_deref() else {
                        return;
                    };
                    let index = chunk.index.and_then(|raw| raw.get().parse::<u64>().ok());
                    // The block this piece belongs to; without an index, the last tool call.
                    let tool = match index {
                        Some(index) => self
                            .anthropic_tools
                            .iter_mut()
                            .rev()
                            .find(|tool| tool.block == Some(index)),
                        None => self.anthropic_tools.last_mut(),
                    };
                    let Some(tool) = tool else { return };
                    let Some(call) = self.summary.tool_calls.get_mut(tool.slot) else {
                        return;
                    };
                    if !piece.is_empty() && std::mem::take(&mut tool.start_input) {
                        self.budget.take_back(&mut call.arguments);
                    }
                    self.saw_output |= !piece.is_empty();
                    self.budget.append(&mut call.arguments, piece);
                    return;
                }
                self.push_anthropic_text(&delta);
            }
            "message_delta" => {
                if let Some(reason) = anthropic_part(chunk.delta).and_then(|d| d.stop_reason) {
                    self.summary.finish_reason = Some(reason.into_owned());
                }
                if chunk.usage.is_some()
                    && (self.merge_anthropic_usage(chunk.usage) || self.summary.usage.is_none())
                {
                    self.take_anthropic_usage();
                }
            }
            "message_stop" => {
                self.saw_end = true;
                if self.summary.usage.is_none() {
                    self.take_anthropic_usage();
                }
            }
            _ => {}
        }
    }

    /// An event of Anthropic's legacy Text Completions stream (`/v1/complete`): each
    /// `completion` event carries a piece of the text (the first one with text is the first
    /// token); the last has the `stop_reason` (every other one `null`), which ends the answer
    /// as `message_stop` ends a message, since that stream has no `[DONE]` and no other last
    /// event. It carries no usage.
    fn push_legacy_completion(&mut self, chunk: &Chunk<'_>) {
        if let Some(text) = chunk.completion.as_deref() {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.content, text);
        }
        if let Some(reason) = chunk.stop_reason.as_deref() {
            self.summary.finish_reason = Some(reason.to_owned());
            self.saw_end = true;
        }
    }

    /// Text or thinking from an Anthropic block or delta (`text` / `text_delta`,
    /// `thinking` / `thinking_delta`).
    fn push_anthropic_text(&mut self, part: &AnthropicPart<'_>) {
        if let Some(text) = part.text.as_deref() {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.content, text);
        }
        if let Some(text) = part.thinking.as_deref() {
            self.note_output(!text.is_empty());
            self.budget.append(&mut self.summary.reasoning, text);
        }
    }

    /// Adds an Anthropic usage object's fields to those seen so far: a count keeps the
    /// largest value (the counts are cumulative, and a `message_delta` of some compatible
    /// upstreams says 0 for the input `message_start` counted); anything else the first.
    /// Says whether anything changed. Only the fields [`Usage`] reads ([`USAGE_KEYS`]) are
    /// kept, each of [`MAX_ANTHROPIC_USAGE_VALUE`] bytes at most: an upstream sending a new
    /// key in every event grew the map (and the copy read at every `message_delta`) with the
    /// stream, to hundreds of MB.
    fn merge_anthropic_usage(&mut self, usage: Option<&RawValue>) -> bool {
        let Some(fields) = usage.and_then(|raw| {
            serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(raw.get()).ok()
        }) else {
            return false;
        };
        let seen = self.anthropic_usage.get_or_insert_with(Default::default);
        let mut changed = false;
        for (key, raw) in fields {
            let text = raw.get();
            if text == "null" || text.len() > MAX_ANTHROPIC_USAGE_VALUE {
                continue;
            }
            if !USAGE_KEYS.contains(&key.as_str()) {
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            match seen.get(&key) {
                Some(old) if old.as_f64() >= value.as_f64() => {}
                Some(old) if !old.is_number() => {}
                _ => {
                    seen.insert(key, value);
                    changed = true;
                }
            }
        }
        changed
    }

    /// The Anthropic usage seen so far becomes the summary's.
    fn take_anthropic_usage(&mut self) {
        if let Some(seen) = &self.anthropic_usage {
            if let Some(parsed) = Usage::from_json(&Value::Object(seen.clone())) {
                self.summary.usage = Some(parsed);
            }
        }
    }

    /// The Responses API's `response.id`, which its stream events carry only inside
    /// `response` (`response.created`, `response.completed`, ...).
    fn note_response_id(&mut self, response: &Value) {
        if self.summary.id.is_none() {
            self.summary.id = str_field(response, "id");
        }
    }

    /// Reads one of [`RESPONSES_TOOL_EVENTS`]: a tool call item opens a call (its first
    /// token), whose arguments come as pieces, or whole in its `.done` events when no piece
    /// carried them. A stream cut before `response.completed` keeps the calls so far.
    fn push_responses_tool_event(&mut self, kind: &str, text: &str) {
        let Ok(event) = serde_json::from_str::<ResponsesToolEvent<'_>>(text) else {
            return;
        };
        if let Some(item) = event.item {
            let Some(call) = item.tool_call() else {
                return;
            };
            self.note_output(true);
            let seen = self
                .responses_tools
                .iter()
                .rev()
                .find(|(index, _)| *index == event.output_index);
            if let Some(&(_, slot)) = seen {
                // The item again, done: its arguments, when no piece carried them.
                self.fill_arguments(slot, &call.arguments);
                return;
            }
            let slot = self.summary.tool_calls.len();
            if !self.room_for_a_new_tool_call(slot) {
                return;
            }
            let mut kept = ToolCall {
                arguments: String::new(),
                ..call
            };
            self.budget.append(&mut kept.arguments, &call.arguments);
            self.summary.tool_calls.push(kept);
            self.responses_tools.push((event.output_index, slot));
            return;
        }
        // The call this is about; without an index, the last one.
        let seen = match event.output_index {
            Some(_) => self
                .responses_tools
                .iter()
                .rev()
                .find(|(index, _)| *index == event.output_index),
            None => self.responses_tools.last(),
        };
        let Some(&(_, slot)) = seen else { return };
        if kind.ends_with(".delta") {
            let Some(piece) = event.delta else { return };
            self.note_output(!piece.is_empty());
            if let Some(call) = self.summary.tool_calls.get_mut(slot) {
                self.budget.append(&mut call.arguments, &piece);
            }
        } else if let Some(whole) = event.arguments.or(event.input) {
            self.fill_arguments(slot, &whole);
        }
    }

    /// Tool call `slot`'s arguments are `whole` when it has none yet.
    fn fill_arguments(&mut self, slot: usize, whole: &str) {
        if let Some(call) = self.summary.tool_calls.get_mut(slot) {
            if call.arguments.is_empty() {
                self.budget.append(&mut call.arguments, whole);
            }
        }
    }

    /// A Responses API stream's final `output`, read as a whole body's is: its tool calls;
    /// and its text, reasoning and refusal where no delta event carried them (an upstream
    /// may send the answer only here). Any of them is output, so a stream whose answer came
    /// only in this event has its first token here.
    fn take_responses_output(&mut self, output: &[Value]) {
        let mut whole = ResponseSummary::default();
        read_responses_output(output, &mut whole);
        let found = !whole.content.is_empty()
            || !whole.reasoning.is_empty()
            || !whole.refusal.is_empty()
            || !whole.tool_calls.is_empty();
        self.note_output(found);
        // The calls as they were sent whole, over those assembled from their events; none
        // there (an upstream that leaves `output` empty) leaves those.
        if !whole.tool_calls.is_empty() {
            self.summary.tool_calls = whole.tool_calls;
        }
        // The text its deltas brought stands; the image tool's note, which no delta brings,
        // follows it.
        if !self.summary.content.is_empty() {
            if let Some(note) = image_generation_note(output) {
                if !self.summary.content.ends_with(&note) {
                    push_image_note(&mut self.summary.content, &note);
                }
            }
        }
        for (seen, complete) in [
            (&mut self.summary.content, whole.content),
            (&mut self.summary.reasoning, whole.reasoning),
            (&mut self.summary.refusal, whole.refusal),
        ] {
            if seen.is_empty() {
                *seen = complete;
            }
        }
    }

    /// The first error reported is kept: later ones are usually its consequences.
    /// Keeps the first error the stream reported: its message, and, from `error` (the
    /// upstream's error object), its type and code ([`ResponseSummary::error_detail`]).
    fn note_error(&mut self, message: String, error: Option<&Value>) {
        if self.summary.error.is_some() {
            return;
        }
        let message = crate::record::bounded_error(&message, &self.budget.guard);
        self.summary.error_detail = error.and_then(|error| error_detail(&message, error));
        self.summary.error = Some(message);
    }

    fn note_output(&mut self, nonempty: bool) {
        self.saw_output |= nonempty;
    }

    /// True once the stream carried any generated text, reasoning or tool call; the first
    /// such event marks the completion start (time to first token).
    pub fn saw_output(&self) -> bool {
        self.saw_output
    }

    /// True once the stream's own end event was read (see the `saw_end` field): a stream
    /// without `data: [DONE]` that closes after it is complete, not cut.
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    pub fn summary(&self) -> &ResponseSummary {
        &self.summary
    }

    /// The summary of what was read. A speech stream's content is then a note of the audio it
    /// carried (`<speech audio, 48213 bytes in 12 deltas>`), an image stream's a note of its
    /// images (`<1 image (b64_json, 1.2 MB)>`), never the audio or the images.
    pub fn into_summary(mut self) -> ResponseSummary {
        if let Some(tally) = self.audio.take().filter(|tally| tally.speech) {
            self.summary.content = speech_description(&tally);
        }
        if let Some(tally) = self.images.take() {
            self.summary.content = tally.note();
        }
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A stream of ever new tool calls keeps [`MAX_STREAM_TOOL_CALLS`] of them, OpenAI's and
    /// Anthropic's shapes alike.
    #[test]
    fn a_streams_tool_calls_are_bounded() {
        let mut openai = StreamAccumulator::default();
        let mut anthropic = StreamAccumulator::default();
        for i in 0..MAX_STREAM_TOOL_CALLS + 100 {
            let event = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": format!("c{i}"), "type": "function",
                 "function": {"name": "f", "arguments": "{}"}}]}}]});
            openai.push_data(event.to_string().as_bytes());
            let block = json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "tool_use", "id": format!("t{i}"), "name": "f", "input": {}}});
            anthropic.push_data(block.to_string().as_bytes());
        }
        for stream in [openai, anthropic] {
            let calls = stream.into_summary().tool_calls;
            assert_eq!(calls.len(), MAX_STREAM_TOOL_CALLS);
            let marker = crate::sinks::generation::TRUNCATION_MARKER;
            let last = calls.last().expect("calls");
            assert_eq!(last.arguments.matches(marker).count(), 1, "{last:?}");
            assert!(
                calls[..MAX_STREAM_TOOL_CALLS - 1]
                    .iter()
                    .all(|c| !c.arguments.contains(marker))
            );
        }
    }

    /// A whole answer's texts under the bound are left as they are; over it, they are cut in
    /// order (content, reasoning, refusal, tool calls) and what comes after the cut is not
    /// kept, as in a stream.
    #[test]
    fn a_whole_answers_texts_are_bounded_together() {
        let marker = crate::sinks::generation::TRUNCATION_MARKER;
        let call = |arguments: &str| ToolCall {
            name: "f".into(),
            arguments: arguments.into(),
            ..Default::default()
        };
        let mut small = ResponseSummary {
            content: "a".repeat(MAX_STREAM_TEXT / 2),
            reasoning: "b".repeat(MAX_STREAM_TEXT / 2 - 1),
            tool_calls: vec![call("")],
            ..Default::default()
        };
        small.bound_texts(CutGuard::default());
        assert_eq!(
            small.content.len() + small.reasoning.len(),
            MAX_STREAM_TEXT - 1
        );
        assert_eq!(small.tool_calls.len(), 1);

        let mut big = ResponseSummary {
            content: "a".repeat(MAX_STREAM_TEXT / 2),
            reasoning: "b".repeat(MAX_STREAM_TEXT / 4),
            refusal: "c".repeat(MAX_STREAM_TEXT / 8),
            tool_calls: vec![call(&"d".repeat(MAX_STREAM_TEXT)), call("{}")],
            ..Default::default()
        };
        big.bound_texts(CutGuard::default());
        assert_eq!(big.content.len(), MAX_STREAM_TEXT / 2);
        assert_eq!(big.reasoning.len(), MAX_STREAM_TEXT / 4);
        assert_eq!(big.refusal.len(), MAX_STREAM_TEXT / 8);
        assert_eq!(
            big.tool_calls.len(),
            1,
            "the call after the cut is not kept"
        );
        let kept = &big.tool_calls[0].arguments;
        assert!(kept.ends_with(marker));
        assert_eq!(
            big.content.len() + big.reasoning.len() + big.refusal.len() + 1 + kept.len(),
            MAX_STREAM_TEXT + marker.len()
        );
    }

    /// Once the text budget is spent, a tool call that starts later is not recorded: it would
    /// have had no name and no arguments, reading as a call of no function.
    #[test]
    fn no_tool_call_is_added_after_the_text_was_cut() {
        let marker = crate::sinks::generation::TRUNCATION_MARKER;
        let big = "x".repeat(MAX_STREAM_TEXT + 10);
        let mut openai = StreamAccumulator::default();
        let mut anthropic = StreamAccumulator::default();
        for (i, id) in ["tA", "tB"].iter().enumerate() {
            let arguments = if i == 0 { big.as_str() } else { "{}" };
            let event = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": id, "type": "function",
                 "function": {"name": "attempt_completion", "arguments": arguments}}]}}]});
            openai.push_data(event.to_string().as_bytes());
            let start = json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "tool_use", "id": id, "name": "attempt_completion", "input": {}}});
            anthropic.push_data(start.to_string().as_bytes());
            let delta = json!({"type": "content_block_delta", "index": i,
                "delta": {"type": "input_json_delta", "partial_json": arguments}});
            anthropic.push_data(delta.to_string().as_bytes());
        }
        for stream in [openai, anthropic] {
            let calls = stream.into_summary().tool_calls;
            assert_eq!(calls.len(), 1, "tB is not recorded");
            assert_eq!(calls[0].id, "tA");
            assert_eq!(calls[0].name, "attempt_completion");
            assert!(calls[0].arguments.ends_with(marker));
        }
    }

    const CUT_KEY: &str = "sk-upstream-SECRET-abcdefgh12345";
    const CUT_CLIENT_KEY: &str = "client-key-abcdefgh";
    const CUT_ROUTER_KEY: &str = "sk-lr-0123456789abcdefghijABCDEFGHIJkl";

    /// A stream reader whose cuts know a configured key and a client's.
    fn guarded_stream() -> StreamAccumulator {
        use crate::secret::Secret;
        let keys = crate::sinks::redact::Redactor::new(&[Secret::new(CUT_KEY)]);
        let mut stream = StreamAccumulator::default();
        stream.guard_cuts(CutGuard::new(
            keys,
            vec![Secret::new(CUT_CLIENT_KEY)].into(),
        ));
        stream
    }

    fn push_content(stream: &mut StreamAccumulator, text: &str) {
        let event = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        stream.push_data(event.to_string().as_bytes());
    }

    /// `len` bytes of filler, in pieces of 1 MiB.
    fn push_filler(stream: &mut StreamAccumulator, len: usize) {
        let piece = "x".repeat(1024 * 1024);
        let mut left = len;
        while left > 0 {
            let n = left.min(piece.len());
            push_content(stream, &piece[..n]);
            left -= n;
        }
    }

    /// A key across the stream's text bound, in the piece that crosses it or split between
    /// two pieces right there, is cut off whole: the record keeps the text before it and the
    /// marker, no part of the key (which the sinks' redaction would no longer recognise).
    #[test]
    fn a_streams_text_is_cut_short_of_a_key_across_its_bound() {
        let marker = crate::sinks::generation::TRUNCATION_MARKER;
        // A key the answer writes with JSON escapes (quoting JSON) too: the sinks' redaction
        // reads those, and half of one kept was half of it in the request log (bb74).
        let escaped = |key: &str| -> String {
            key.chars()
                .map(|c| format!("\\u{:04x}", u32::from(c)))
                .collect()
        };
        let keys = [CUT_KEY, CUT_CLIENT_KEY, CUT_ROUTER_KEY].map(str::to_owned);
        let keys = keys
            .into_iter()
            .chain([escaped(CUT_KEY), escaped(CUT_CLIENT_KEY)]);
        for key in keys {
            for inside in [1, key.len() / 2, key.len() - 1] {
                let before = MAX_STREAM_TEXT - inside - "Bearer ".len();
                let mut crossing = guarded_stream();
                push_filler(&mut crossing, before);
                push_content(&mut crossing, &format!("Bearer {key} and on"));
                let mut split = guarded_stream();
                push_filler(&mut split, before);
                push_content(&mut split, &format!("Bearer {}", &key[..inside]));
                push_content(&mut split, &key[inside..]);
                for stream in [crossing, split] {
                    let content = stream.into_summary().content;
                    let kept = content.strip_suffix(marker).expect("marked");
                    assert!(kept.ends_with("xBearer "), "{key} {inside}");
                    assert_eq!(kept.len(), before + "Bearer ".len(), "{key} {inside}");
                }
            }
        }
        // Anywhere else, the cut is where the bound is.
        let mut stream = guarded_stream();
        push_filler(&mut stream, MAX_STREAM_TEXT - 3);
        push_content(&mut stream, "abcdef sk-and-more");
        let content = stream.into_summary().content;
        assert_eq!(content.len(), MAX_STREAM_TEXT + marker.len());
        assert!(content.ends_with(&format!("xabc{marker}")));
    }

    /// Another text that ends with a key's beginning when the text is cut (two fields'
    /// pieces interleaved) stops there too: it loses that beginning.
    #[test]
    fn other_texts_lose_a_keys_beginning_at_the_cut() {
        let mut stream = guarded_stream();
        let reasoning = json!({"choices": [{"index": 0, "delta": {"reasoning_content": "think: sk-upstream-SE"}}]});
        stream.push_data(reasoning.to_string().as_bytes());
        push_filler(&mut stream, MAX_STREAM_TEXT);
        let summary = stream.into_summary();
        assert_eq!(summary.reasoning, "think: ");
        assert!(summary.content.ends_with("x…[truncated by llmsrouter]"));
    }

    /// The guard the as-read tests cut with: [`CUT_KEY`] configured.
    fn cut_key_guard() -> CutGuard {
        CutGuard::new(
            crate::sinks::redact::Redactor::new(&[crate::secret::Secret::new(CUT_KEY)]),
            Default::default(),
        )
    }

    /// Text `len` bytes long once decoded, escaped at both ends (`\n`, `é` as `\u00e9`, a
    /// pair for `😀`), where the bound may fall.
    fn escaped_text(len: usize) -> String {
        let escaped = "ab\nc\u{e9}\u{1F600}\"".repeat(len.min(3 << 16) / 36);
        let mut t = escaped.clone();
        t.push_str(&"x".repeat(len - 2 * escaped.len()));
        t.push_str(&escaped);
        t
    }

    /// `len` bytes of text, then [`CUT_KEY`]: a key the bound may fall inside.
    fn keyed_text(len: usize) -> String {
        format!("{}{CUT_KEY} and on", "y".repeat(len))
    }

    /// A whole answer's texts are cut as they are read, each where reading it whole and then
    /// bounding it cut it (escapes, a key across the cut, the bound falling in the content,
    /// the reasoning, the refusal or a tool call's arguments, a content of parts), and no
    /// text read ever holds more than the bound and a margin: read whole, a 20 MiB content was
    /// copied whole (twice, while serde_json unescaped it) to keep 8 MiB.
    #[test]
    fn a_whole_answers_texts_are_cut_as_they_are_read() {
        let guard = cut_key_guard();
        let m = MAX_STREAM_TEXT;
        let (text, keyed) = (escaped_text, keyed_text);
        let bodies = [
            json!({"choices": [{"message": {"content": text(2 * m)}}]}),
            json!({"choices": [{"message": {"content": keyed(m - 5)}}]}),
            json!({"choices": [{"message": {"content": text(m / 2),
                "reasoning_content": keyed(m / 2 - 3), "refusal": "no"}}]}),
            json!({"choices": [{"message": {"content": [{"type": "text", "text": text(m / 3)},
                {"type": "thinking", "thinking": [{"type": "text", "text": text(m / 2)}]},
                {"type": "text", "text": text(m / 2 + 7)}], "reasoning": "r"}}]}),
            json!({"choices": [{"message": {"content": text(m / 2), "refusal": text(m / 4),
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "b", "function": {"name": "g", "arguments": {"k": text(m / 2)}}},
                    {"id": "c", "function": {"name": "h", "arguments": "{}"}}]}}]}),
            json!({"choices": [{"message": {"content": null, "tool_calls": [
                {"type": "custom", "custom": {"name": "run", "input": text(m + 1)}},
                {"function": {"name": "f", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
            json!({"choices": [{"text": keyed(m - 1), "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
            json!({"text": text(m + 100), "usage": {"type": "tokens", "input_tokens": 1,
                "output_tokens": 2}}),
            json!({"choices": [{"message": {"content": text(m - 1), "refusal": "no"}}]}),
        ];
        for body in bodies {
            // Written escaped, as some upstreams write any character past ASCII.
            let body = body
                .to_string()
                .replace('\u{e9}', "\\u00e9")
                .replace('\u{1F600}', "\\ud83d\\ude00");
            let start: String = body.chars().take(80).collect();
            let mut whole =
                summarize_gathering(body.as_bytes(), &mut Gather::whole()).expect("an answer");
            whole.bound_texts(guard.clone());
            let cut = summarize_json_body(body.as_bytes(), &guard).expect("an answer");
            assert_eq!(cut, whole, "{start}");
            // What is held before the cut: the texts, within the bound and a margin.
            let read =
                summarize_gathering(body.as_bytes(), &mut Gather::new(&guard)).expect("an answer");
            let held = held(&read);
            let margin = guard.reach() + 8;
            assert!(held <= m + margin, "{held} held: {start}");
        }
    }

    /// A Responses API answer's `output` and an Anthropic message's content blocks are cut
    /// as they are read too, each where reading them whole (into `Value`s, as before) and
    /// then bounding them cut them: the messages' texts and the image note, the reasoning
    /// and its summary, the refusals, then the tool calls; text, thinking, then `tool_use`.
    /// No text read holds more than the bound and a margin: read whole, a 20 MiB text was
    /// copied whole to keep 8 MiB.
    #[test]
    fn responses_and_anthropic_texts_are_cut_as_they_are_read() {
        let guard = cut_key_guard();
        let m = MAX_STREAM_TEXT;
        let (text, keyed) = (escaped_text, keyed_text);
        let usage = json!({"input_tokens": 5, "output_tokens": 6});
        let message =
            |parts: Value| json!({"type": "message", "role": "assistant", "content": parts});
        let said = |t: String| json!({"type": "output_text", "text": t, "annotations": []});
        let image = json!({"type": "image_generation_call", "result": "aGVs/bG8="});
        let call = |name: &str, arguments: String| json!({"type": "function_call", "call_id": "c", "name": name, "arguments": arguments});
        let responses = [
            json!({"object": "response", "status": "completed", "usage": usage, "output": [
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": text(m / 3)}],
                    "summary": [{"type": "summary_text", "text": "s1"},
                        {"type": "summary_text", "text": keyed(m / 2)}]},
                message(json!([said(text(m / 2)), {"type": "refusal", "refusal": "no"},
                    said(text(m / 4))])),
                call("f", text(m / 4)), image]}),
            json!({"status": "completed", "output": [message(json!([said(text(2 * m))]))]}),
            json!({"status": "completed", "output": [message(json!([said(keyed(m - 40))])),
                image]}),
            json!({"status": "incomplete", "usage": usage, "output": [
                message(json!([said(text(m / 2)), {"type": "refusal", "refusal": text(m / 2)}])),
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": text(m / 4)}]},
                call("f", "{}".to_owned())]}),
            json!({"status": "completed", "output": [message(json!([said("hi".to_owned())])),
                call("f", text(m + 1)), call("g", "{}".to_owned()),
                {"type": "custom_tool_call", "call_id": "d", "name": "run", "input": "ls"}]}),
            json!({"status": "completed", "output": [message(json!([said(text(m - 3))])),
                image, "odd", {"type": "message", "content": "not parts"}]}),
            json!({"status": "completed", "output": [message(json!([said("small".to_owned()),
                {"type": "refusal", "refusal": "no"}])), call("f", "{}".to_owned())]}),
        ];
        let blocks = |content: Value| {
            json!({"type": "message", "role": "assistant", "content": content,
                "stop_reason": "end_turn", "usage": usage})
        };
        let tool = json!({"type": "tool_use", "id": "t", "name": "f", "input": {"k": "v"}});
        let anthropic = [
            blocks(
                json!([{"type": "thinking", "thinking": text(m / 2), "signature": "s"},
                {"type": "text", "text": text(m / 2)}, tool,
                {"type": "text", "text": keyed(m / 2)}]),
            ),
            blocks(json!([{"type": "text", "text": text(2 * m)}])),
            blocks(json!([{"type": "text", "text": "a"},
                {"type": "thinking", "thinking": keyed(m - 5)}, tool])),
            blocks(
                json!([{"type": "text", "text": 5}, {"type": "thinking", "thinking": "t"},
                {"type": "server_tool_use", "id": "s", "name": "web", "input": {}, "text": 5},
                {"type": "text", "text": text(m - 1)}, "odd", tool]),
            ),
            blocks(json!([{"type": "text", "text": "small"}, tool])),
        ];
        // An item or a block with a member twice: `Value` keeps the last one.
        let twice = [
            format!(
                r#"{{"status": "completed", "output": [{{"type": "message", "type": "message",
                "content": [{{"text": {}}}]}}, {{"type": "reasoning",
                "summary": [{{"text": "a", "text": {}}}]}}]}}"#,
                json!(text(m / 2)),
                json!(text(m))
            ),
            format!(
                r#"{{"type": "message", "content": [{{"type": "text", "text": "x",
                "text": {}}}, {{"type": "text", "text": {}}}]}}"#,
                json!(text(m / 2)),
                json!(text(m))
            ),
        ];
        let cuts = cut_as_before(responses.iter().chain(&anthropic), &twice, &guard);
        assert!(cuts >= 9, "{cuts} cut");
    }

    /// Reads each body (JSON, written with escapes; then `twice`, with a member written twice)
    /// as before (the Responses API's output into `Value`s, the Anthropic blocks as
    /// `AnthropicPart`s, each text whole) and as now, and checks they agree once bounded and
    /// that no text read now holds more than the bound and a margin; the bodies cut.
    fn cut_as_before<'v>(
        bodies: impl IntoIterator<Item = &'v Value>,
        twice: &[String],
        guard: &CutGuard,
    ) -> usize {
        let m = MAX_STREAM_TEXT;
        // Read whole, as before: the Responses API's output into `Value`s, the Anthropic
        // blocks as `AnthropicPart`s.
        let before = |body: &str| {
            let value: Value = serde_json::from_str(body).expect("JSON");
            let mut out =
                summarize_gathering(body.as_bytes(), &mut Gather::whole()).expect("an answer");
            let mut old = ResponseSummary::default();
            if let Some(output) = value["output"].as_array() {
                read_responses_output(output, &mut old);
            } else {
                for raw in serde_json::from_str::<BodyTop<'_>>(body)
                    .ok()
                    .and_then(|top| top.content)
                    .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
                    .unwrap_or_default()
                {
                    let Some(block) = from_object::<AnthropicPart<'_>>(raw.get()) else {
                        continue;
                    };
                    if is_tool_use(block.kind.as_deref()) {
                        old.tool_calls.push(anthropic_tool_call(&block));
                        continue;
                    }
                    match block.kind.as_deref() {
                        Some("text") => old
                            .content
                            .push_str(block.text.as_deref().unwrap_or_default()),
                        Some("thinking") => old
                            .reasoning
                            .push_str(block.thinking.as_deref().unwrap_or_default()),
                        _ => {}
                    }
                }
            }
            assert_eq!(
                (
                    &out.content,
                    &out.reasoning,
                    &out.refusal,
                    &out.tool_calls,
                    out.body_noted
                ),
                (
                    &old.content,
                    &old.reasoning,
                    &old.refusal,
                    &old.tool_calls,
                    old.body_noted
                ),
                "read whole"
            );
            out.bound_texts(guard.clone());
            out
        };
        let bodies = bodies.into_iter().map(|body| {
            body.to_string()
                .replace('\u{e9}', "\\u00e9")
                .replace('\u{1F600}', "\\ud83d\\ude00")
                .replace("aGVs/bG8=", "aGVs\\/bG8=")
        });
        let mut cuts = 0;
        for body in bodies.chain(twice.iter().cloned()) {
            let start: String = body.chars().take(100).collect();
            let whole = before(&body);
            let cut = summarize_json_body(body.as_bytes(), guard).expect("an answer");
            assert_eq!(cut, whole, "{start}");
            assert!(
                cut.usage.is_some() || !body.contains("input_tokens"),
                "{start}"
            );
            cuts += usize::from(
                cut.content
                    .ends_with(crate::sinks::generation::TRUNCATION_MARKER)
                    || cut
                        .reasoning
                        .ends_with(crate::sinks::generation::TRUNCATION_MARKER)
                    || cut
                        .refusal
                        .ends_with(crate::sinks::generation::TRUNCATION_MARKER)
                    || cut.tool_calls.iter().any(|c| {
                        c.arguments
                            .ends_with(crate::sinks::generation::TRUNCATION_MARKER)
                    }),
            );
            let read =
                summarize_gathering(body.as_bytes(), &mut Gather::new(guard)).expect("an answer");
            let held = held(&read);
            let margin = guard.reach() + 8;
            assert!(held <= m + margin, "{held} held: {start}");
        }
        cuts
    }

    /// An Anthropic `tool_use` block's `input` (its JSON as written) and a Responses API
    /// call in an item with a member written twice are cut as they are read too, where
    /// reading them whole and then bounding them cut them: copied whole, a 16 MiB `input`
    /// was held twice to keep 8 MiB of it, and an `output` with a member twice was read into
    /// `Value`s whole.
    #[test]
    fn tool_use_inputs_and_calls_written_twice_are_cut_as_they_are_read() {
        let guard = cut_key_guard();
        let m = MAX_STREAM_TEXT;
        let (text, keyed) = (escaped_text, keyed_text);
        let tool = json!({"type": "tool_use", "id": "t", "name": "f", "input": {"k": "v"}});
        let blocks = |content: Value| {
            json!({"type": "message", "role": "assistant", "content": content,
                "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 6}})
        };
        let anthropic = [
            blocks(
                json!([{"type": "text", "text": "a"}, {"type": "tool_use", "id": "u",
                "name": "f", "input": {"k": text(m + 100), "n": [1, 2]}}, tool]),
            ),
            blocks(json!([{"type": "thinking", "thinking": text(m / 2)},
                {"type": "server_tool_use", "id": "s", "name": "web",
                    "input": {"q": keyed(m / 2 - 40)}}, tool, {"type": "text", "text": "b"}])),
            blocks(json!([{"type": "tool_use", "id": "u", "name": "f", "input": null}, tool])),
        ];
        let twice = [format!(
            r#"{{"status": "completed", "output": [{{"type": "message",
            "content": [{{"text": "hi", "text": "hello"}}]}}, {{"type": "function_call",
            "type": "function_call", "call_id": "c", "name": "f", "arguments": {}}},
            {{"type": "function_call", "name": "g", "arguments": "{{}}"}}]}}"#,
            json!(text(m + 100))
        )];
        let cuts = cut_as_before(&anthropic, &twice, &guard);
        assert!(cuts >= 3, "{cuts} cut");
    }

    proptest! {
        /// The bounded string reader reads what serde_json reads, refuses what it refuses,
        /// and keeps at least `cap` bytes of it (to a character's end), never more.
        #[test]
        fn a_string_is_decoded_as_serde_json_decodes_it(
            parts in proptest::collection::vec(prop_oneof![
                ".{0,6}",
                Just("\\n".to_owned()), Just("\\\"".to_owned()), Just("\\/".to_owned()),
                Just("\\u00e9".to_owned()), Just("\\ud83d\\ude00".to_owned()),
                Just("\\ud83d".to_owned()), Just("\\ude00".to_owned()), Just("\\x".to_owned()),
                Just("\\u12".to_owned()), Just("\"".to_owned()), Just("\u{1}".to_owned()),
                Just("\\".to_owned()), Just("\\uD83D\\uDE00".to_owned()),
            ], 0..12),
            cap in 0usize..40,
        ) {
            let raw = format!("\"{}\"", parts.concat());
            let serde = serde_json::from_str::<String>(&raw).ok();
            let mut whole = String::new();
            let full = decode_json_string(&raw, &mut whole, usize::MAX);
            prop_assert_eq!(full.map(|_| whole.clone()), serde.clone());
            let mut kept = "before".to_owned();
            let cut = decode_json_string(&raw, &mut kept, cap);
            prop_assert_eq!(cut, serde.as_ref().map(String::len));
            if let Some(serde) = serde {
                let kept = &kept["before".len()..];
                prop_assert!(serde.starts_with(kept));
                prop_assert!(kept.len() >= cap.min(serde.len()) && kept.len() <= cap + 3);
            }
        }
    }

    /// The bytes a whole answer's texts hold once read, before [`ResponseSummary::bound_texts`].
    fn held(read: &ResponseSummary) -> usize {
        read.content.capacity()
            + read.reasoning.capacity()
            + read.refusal.capacity()
            + read
                .tool_calls
                .iter()
                .map(|c| c.name.capacity() + c.arguments.capacity())
                .sum::<usize>()
    }

    /// A chat answer's tool calls whose arguments are not a string (an object, read as its
    /// JSON), its legacy `function_call`, and a call or a `function` with a member written
    /// twice (the last one counts) are cut as they are read too, each where reading them
    /// into `Value`s whole (as before) and then bounding them cut them; and a content of
    /// many parts holds no room past the bound for the texts after it. Read whole, a
    /// 16 MiB arguments object was held several times over to keep 8 MiB; a content of parts
    /// kept room, grown by doubling, that the reasoning after it was given again.
    /// (Read in two halves, `half` 0 or 1, each a test of its own: the 8 MiB texts take a
    /// while in a build without optimisation.) The bodies cut.
    fn tool_calls_cut_as_before(half: usize) -> usize {
        let guard = cut_key_guard();
        let m = MAX_STREAM_TEXT;
        let (text, keyed) = (escaped_text, keyed_text);
        let s = |t: String| json!(t).to_string();
        let object = |t: String| {
            format!(
                r#"{{"z": [1e2, -0, 1.50, 18446744073709551616, true, null], "k": {}, "a": {{"y": "\u0001", "x": "é"}}, "z": "last"}}"#,
                s(t)
            )
        };
        let chat = |message: String| {
            format!(
                r#"{{"id": "c", "choices": [{{"message": {message}, "finish_reason": "tool_calls"}}], "usage": {{"prompt_tokens": 1, "completion_tokens": 2}}}}"#
            )
        };
        let bodies = [
            // Arguments as an object: its JSON, keys in order, the last `z`.
            chat(format!(
                r#"{{"content": null, "tool_calls": [{{"id": "a", "type": "function", "function": {{"name": "f", "arguments": {}}}}}, {{"id": "b", "function": {{"name": "g", "arguments": "{{}}"}}}}]}}"#,
                object(text(m + 100))
            )),
            chat(format!(
                r#"{{"content": {}, "tool_calls": [{{"id": "a", "type": "function", "function": {{"name": "f", "arguments": {}}}}}]}}"#,
                s(text(m / 2)),
                object(keyed(m / 2 - 60))
            )),
            chat(
                r#"{"content": "hi", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": [1, {"b": 2, "a": 1e9}]}}, {"id": "b", "function": {"name": "g", "arguments": 12.0}}]}"#
                    .to_owned(),
            ),
            // The legacy call: a string, an object, a member twice.
            chat(format!(
                r#"{{"content": "", "function_call": {{"name": "f", "arguments": {}}}}}"#,
                s(text(m + 100))
            )),
            chat(format!(
                r#"{{"content": {}, "function_call": {{"arguments": {}, "name": "f"}}}}"#,
                s(text(m / 3)),
                object(text(m))
            )),
            chat(format!(
                r#"{{"function_call": {{"name": "f", "arguments": "x", "arguments": {}}}}}"#,
                s(keyed(m - 30))
            )),
            chat(r#"{"function_call": {"name": "f", "arguments": null}}"#.to_owned()),
            chat(r#"{"function_call": ["f", "{}"]}"#.to_owned()),
            // A member twice: in the call, in its `function`, a `null` last.
            chat(format!(
                r#"{{"tool_calls": [{{"id": "a", "id": "b", "function": {{"name": "f", "arguments": "{{}}"}}, "function": {{"name": "g", "arguments": {}}}}}, {{"id": "c", "function": {{"name": "h", "arguments": "{{}}"}}}}]}}"#,
                s(text(m + 100))
            )),
            chat(format!(
                r#"{{"content": {}, "tool_calls": [{{"id": "a", "function": {{"name": "f", "name": "g", "arguments": {}}}}}, {{"id": "b", "function": {{"name": "h", "arguments": "a", "arguments": null}}}}]}}"#,
                s(text(m / 2)),
                object(text(m / 4))
            )),
            chat(format!(
                r#"{{"tool_calls": [{{"type": "custom", "type": "custom", "custom": {{"name": "run", "input": {}}}}}, 5, {{"function": {{"name": "f", "arguments": "{{}}"}}}}]}}"#,
                s(text(m + 1))
            )),
            chat(format!(
                r#"{{"tool_calls": [5, {{"function": {{"name": "f", "arguments": {}}}}}]}}"#,
                s(text(m - 2))
            )),
            // Many parts, then the reasoning: no room kept for it twice.
            chat(format!(
                r#"{{"content": [{}], "reasoning_content": {}}}"#,
                vec![
                    json!({"type": "text", "text": "p".repeat(4000)}).to_string();
                    m * 3 / 5 / 4000
                ]
                .join(","),
                s(text(m * 2 / 5))
            )),
        ];
        // Read into `Value`s whole and then bounded, as before: `tool_call_of` read a call
        // with a member twice, and the arguments that were not a string (as `Value`'s JSON);
        // the legacy call was a `Value`.
        let before = |body: &str| {
            let value: Value = serde_json::from_str(body).expect("JSON");
            let mut out =
                summarize_gathering(body.as_bytes(), &mut Gather::whole()).expect("an answer");
            let message = &value["choices"][0]["message"];
            out.tool_calls = message["tool_calls"]
                .as_array()
                .map(|calls| calls.iter().map(tool_call_of).collect())
                .unwrap_or_default();
            if let Some(call) = message.get("function_call").filter(|c| c.is_object()) {
                let (name, arguments) = function_fields(Some(call));
                out.tool_calls.push(ToolCall {
                    kind: "function".to_owned(),
                    name,
                    arguments,
                    ..ToolCall::default()
                });
            }
            out.bound_texts(guard.clone());
            out
        };
        let mut cuts = 0;
        for body in bodies.into_iter().skip(half * 7).take(7) {
            let body = body
                .replace('\u{e9}', "\\u00e9")
                .replace('\u{1F600}', "\\ud83d\\ude00");
            let start: String = body.chars().take(160).collect();
            let whole = before(&body);
            let cut = summarize_json_body(body.as_bytes(), &guard).expect("an answer");
            assert_eq!(cut, whole, "{start}");
            assert!(cut.usage.is_some(), "{start}");
            let marked = |t: &String| t.ends_with(crate::sinks::generation::TRUNCATION_MARKER);
            let texts = [&cut.content, &cut.reasoning, &cut.refusal];
            if texts.into_iter().any(marked) || cut.tool_calls.iter().any(|c| marked(&c.arguments))
            {
                cuts += 1;
                let kept = texts.iter().map(|t| t.len()).sum::<usize>()
                    + cut
                        .tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>();
                assert!(
                    kept <= m + crate::sinks::generation::TRUNCATION_MARKER.len(),
                    "{kept}: {start}"
                );
            }
            let read =
                summarize_gathering(body.as_bytes(), &mut Gather::new(&guard)).expect("an answer");
            let held = held(&read);
            assert!(held <= m + guard.reach() + 8, "{held} held: {start}");
        }
        // Past the bound nothing more is read of a call, whatever it is; a call `Value` refuses
        // (a number out of its range) ends the calls, as reading them into `Value`s ended them.
        let refused = chat(format!(
            r#"{{"tool_calls": [{{"id": "a", "function": {{"name": "f", "arguments": "{{}}"}}}}, {{"id": "b", "id": "b", "n": 1e400, "function": {{"name": "g", "arguments": {}}}}}, {{"id": "c"}}]}}"#,
            s(text(m))
        ));
        let cut = summarize_json_body(refused.as_bytes(), &guard).expect("an answer");
        assert_eq!(cut.tool_calls.len(), 1);
        assert_eq!(cut.tool_calls[0].arguments, "{}");
        let refused =
            chat(r#"{"function_call": {"name": "f", "arguments": {"a": 1e400}}}"#.to_owned());
        let cut = summarize_json_body(refused.as_bytes(), &guard).expect("an answer");
        assert_eq!(cut.tool_calls, []);
        let refused = chat(
            r#"{"tool_calls": [{"function": {"name": "f", "arguments": {"a": -1e999}}}]}"#
                .to_owned(),
        );
        let cut = summarize_json_body(refused.as_bytes(), &guard).expect("an answer");
        assert_eq!(cut.tool_calls[0].arguments, "");
        cuts
    }

    /// See [`tool_calls_cut_as_before`]: arguments as an object, and the legacy call.
    #[test]
    fn tool_calls_of_every_shape_are_cut_as_they_are_read() {
        let cuts = tool_calls_cut_as_before(0);
        assert!(cuts >= 5, "{cuts} cut");
    }

    /// See [`tool_calls_cut_as_before`]: calls with a member written twice, a content of many
    /// parts.
    #[test]
    fn tool_calls_written_twice_are_cut_as_they_are_read() {
        let cuts = tool_calls_cut_as_before(1);
        assert!(cuts >= 2, "{cuts} cut");
    }

    /// A value nested as deep as serde_json reads a `Value` is written; one deeper is refused,
    /// as reading it into a `Value` refused it.
    #[test]
    fn a_value_nested_past_serde_jsons_limit_is_refused_as_it_refused_it() {
        for depth in [1, 2, 126, 127, 128, 129, 300] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("[{\"b\":", "}]")] {
                let raw = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                let value = serde_json::from_str::<Value>(&raw)
                    .ok()
                    .map(|v| v.to_string());
                let mut written = String::new();
                let ok = json_text(&raw, &mut Kept::new(&mut written, usize::MAX), VALUE_DEPTH);
                assert_eq!(ok.map(|()| written), value, "{depth} {open}");
            }
        }
    }

    /// JSON values as a test writes them: strings with escapes (and some serde_json refuses),
    /// numbers of every form and range, lists and objects with members written twice (one as
    /// an escape), white space between.
    fn json_values() -> impl Strategy<Value = String> {
        let string = proptest::collection::vec(
            prop_oneof![
                "[a-z\u{e9}\u{1F600}\u{7f} ]{0,4}",
                Just("\\n".to_owned()),
                Just("\\\"".to_owned()),
                Just("\\/".to_owned()),
                Just("\\u0001".to_owned()),
                Just("\\u00e9".to_owned()),
                Just("\\ud83d\\ude00".to_owned()),
                Just("\\ud83d".to_owned()),
                Just("\\\\".to_owned()),
                Just("\\b\\f\\r\\t".to_owned()),
            ],
            0..5,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let leaf = prop_oneof![
            string.clone(),
            prop::sample::select(vec![
                "0",
                "-0",
                "1e2",
                "1.5E+3",
                "-12.50",
                "0.1e-3",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "1e400",
                "-1e309",
                "0.1e-400",
                "123456789012345678901234567890",
                "true",
                "false",
                "null",
                "3.141592653589793238",
            ])
            .prop_map(str::to_owned),
        ];
        let space = prop::sample::select(vec!["", " ", "\n\t"]);
        leaf.prop_recursive(4, 24, 5, move |inner| {
            let key = prop::sample::select(vec![
                "\"a\"",
                "\"b\"",
                "\"\\u0061\"",
                "\"c\\n\"",
                "\"\u{e9}\"",
            ]);
            prop_oneof![
                proptest::collection::vec((inner.clone(), space.clone()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(v, s)| format!("{s}{v}{s}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                proptest::collection::vec((key, inner, space.clone()), 0..5).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// A JSON value is written as `Value`'s `to_string` writes it once read, refused where
        /// it refuses to read it, and keeps at least `cap` bytes of that (to a character's
        /// end), never more, counting it all.
        #[test]
        fn a_value_is_written_as_serde_json_writes_it(raw in json_values(), cap in 0usize..60) {
            // Only what a raw value holds (what an answer's parts are) is written.
            prop_assume!(serde_json::from_str::<&RawValue>(&raw).is_ok());
            let value = serde_json::from_str::<Value>(&raw).ok().map(|v| v.to_string());
            let mut whole = String::new();
            let ok = json_text(&raw, &mut Kept::new(&mut whole, usize::MAX), VALUE_DEPTH);
            prop_assert_eq!(ok.map(|()| whole.clone()), value.clone(), "{}", raw);
            prop_assert_eq!(value_reads(&raw), value.is_some());
            let mut kept = String::new();
            let mut out = Kept::new(&mut kept, cap);
            let cut = json_text(&raw, &mut out, VALUE_DEPTH);
            let full = out.full;
            if let Some(value) = value {
                prop_assert!(cut.is_some());
                prop_assert_eq!(full, value.len());
                prop_assert!(value.starts_with(&kept));
                prop_assert!(kept.len() >= cap.min(value.len()) && kept.len() <= cap + 3);
            }
        }
    }

    /// A whole answer's texts are cut short of a key too.
    #[test]
    fn a_whole_answers_text_is_cut_short_of_a_key() {
        use crate::secret::Secret;
        let before = MAX_STREAM_TEXT - 5;
        let mut summary = ResponseSummary {
            content: format!("{}{CUT_KEY} more", "x".repeat(before)),
            ..Default::default()
        };
        let keys = crate::sinks::redact::Redactor::new(&[Secret::new(CUT_KEY)]);
        summary.bound_texts(CutGuard::new(keys, Default::default()));
        assert_eq!(
            summary.content,
            format!(
                "{}{}",
                "x".repeat(before),
                crate::sinks::generation::TRUNCATION_MARKER
            )
        );
    }

    /// An error message over the record's bound is cut short of a key it echoes there.
    #[test]
    fn a_streamed_error_is_cut_short_of_a_key() {
        let limit = crate::record::MAX_ERROR_CHARS;
        for key in [CUT_KEY, CUT_CLIENT_KEY, CUT_ROUTER_KEY] {
            for inside in [1, key.len() / 2, key.len() - 1] {
                let before = limit - inside;
                let message = format!("{}{key} and the rest", "y".repeat(before));
                let mut stream = guarded_stream();
                let event = json!({"error": {"message": message, "type": "auth"}});
                stream.push_data(event.to_string().as_bytes());
                let error = stream.into_summary().error.expect("error");
                assert_eq!(
                    error,
                    format!("{}… ({} bytes)", "y".repeat(before), message.len()),
                    "{key} {inside}"
                );
            }
        }
    }

    /// Only a lone surrogate's escape is replaced: pairs, other escapes and an escaped
    /// backslash followed by `ud800` as text stay as they were.
    #[test]
    fn lone_surrogate_escapes_become_the_replacement_character() {
        for (text, wanted) in [
            (r#""a\ud800b""#, Some(r#""a\ufffdb""#)),
            (r#""\udc00""#, Some(r#""\ufffd""#)),
            (r#""\uD83D""#, Some(r#""\ufffd""#)),
            (r#""\ud83d\ud83d\ude00""#, Some(r#""\ufffd\ud83d\ude00""#)),
            (r#""\ud83d\u0041""#, Some(r#""\ufffd\u0041""#)),
            (r#""\ud83d""#, Some(r#""\ufffd""#)),
            (r#""\ud83d\ude00 \u00e9 \n""#, None),
            (r#""\\ud800""#, None),
            (r#""\\\ud800""#, Some(r#""\\\ufffd""#)),
            (r#""no escapes""#, None),
        ] {
            assert_eq!(lone_surrogates_replaced(text).as_deref(), wanted, "{text}");
            let read = wanted.unwrap_or(text);
            assert!(serde_json::from_str::<String>(read).is_ok(), "{read}");
        }
        // Not JSON: left for serde_json to refuse.
        assert_eq!(lone_surrogates_replaced(r#""\ud8""#), None);
    }

    /// An event or answer with a lone surrogate keeps everything else for the record.
    #[test]
    fn a_lone_surrogate_loses_one_character_not_the_event() {
        let mut stream = StreamAccumulator::default();
        let event = r#"{"id":"c\udfff","choices":[{"delta":{"content":"bad \ud800 char"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        stream.push_data(event.as_bytes());
        let usage_only = r#"{"id":"c\udfff","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        assert_eq!(
            stream.push_data(usage_only.as_bytes()),
            EventKind::UsageOnly
        );
        let summary = stream.into_summary();
        assert_eq!(summary.content, "bad \u{fffd} char");
        assert_eq!(summary.finish_reason.as_deref(), Some("stop"));
        assert_eq!(summary.usage.map(|u| u.total), Some(8));
        let body = r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"a\ud800","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let summary = summarize_body(body.as_bytes());
        assert_eq!(summary.content, "a\u{fffd}");
        assert_eq!(summary.tool_calls.len(), 1);
        assert_eq!(summary.usage.map(|u| u.total), Some(3));
    }

    #[test]
    fn strings_are_borrowed_from_an_event_unless_escaped() {
        use std::borrow::Cow;
        let event = r#"{"id":"c1","model":"m","choices":[{"delta":{"content":"Hello"},"finish_reason":"stop"}]}"#;
        let chunk: Chunk<'_> = serde_json::from_str(event).expect("chunk");
        assert!(matches!(chunk.id, Some(Cow::Borrowed("c1"))));
        assert!(matches!(chunk.model, Some(Cow::Borrowed("m"))));
        let choice = &chunk.choices.as_deref().expect("choices")[0];
        assert!(matches!(choice.finish_reason, Some(Cow::Borrowed("stop"))));
        let content = &choice.delta.as_ref().expect("delta").content;
        assert!(
            matches!(content, Some(DeltaContent::Text(Cow::Borrowed("Hello")))),
            "{content:?}"
        );

        // An escape needs a copy: the text is the unescaped one.
        let event = r#"{"choices":[{"delta":{"content":"a\nb","reasoning":null}}],"model":null}"#;
        let chunk: Chunk<'_> = serde_json::from_str(event).expect("chunk");
        let delta = chunk
            .choices
            .expect("choices")
            .remove(0)
            .delta
            .expect("delta");
        assert!(
            matches!(delta.content, Some(DeltaContent::Text(Cow::Owned(ref s))) if s == "a\nb")
        );
        assert!(delta.reasoning.is_none() && chunk.model.is_none());
        // Not a string: the event is not read (as before), and is forwarded untouched.
        assert!(serde_json::from_str::<Chunk<'_>>(r#"{"model":5}"#).is_err());
    }

    /// Payloads of the shapes upstreams send, for `classify_event` vs `push_data`.
    const EVENTS: &[&str] = &[
        "[DONE]",
        " [DONE] ",
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#,
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        r#"{"id":"c","choices" : [ ] , "usage" :
            {"prompt_tokens":1}}"#,
        r#"{"id":"c","usage":{"prompt_tokens":1}}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}"#,
        r#"{"type":"response.completed","response":{"usage":{"input_tokens":1}},"usage":{"x":1}}"#,
        r#"{"id":"c","choices":[{"delta":{"content":"say \"usage\": {"}}]}"#,
        r#"{"id":"c","choices":[],"usage":null}"#,
        r#"{"usage":{"prompt_tokens":1},"choices":[]"#,
        r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        r#"{"type":"message_stop"}"#,
        r#"{"type":"speech.audio.delta","audio":"AAAA"}"#,
        r#"{"type":"speech.audio.done","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}"#,
        r#"{"type":"transcript.text.delta","delta":"hi"}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":[{"type":"text","text":"hi"}]}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"function_call":{"name":"f"}}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"custom":{"input":"x"}}]}}]}"#,
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"custom_tool_call"}}"#,
        // A raw tab in a string, which the accumulator reads past (bb48).
        "{\"id\":\"c\tx\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}",
        // A usage that is no object, and a key twice (found by fuzzing, bb45).
        r#"{"id":"c","choices":[],"usage":5}"#,
        r#"{"id":"c","id":"d","choices":[],"usage":{"prompt_tokens":1}}"#,
        "not json",
        "",
    ];

    #[test]
    fn classify_event_agrees_with_the_accumulator() {
        for event in EVENTS {
            let expected = StreamAccumulator::default().push_data(event.as_bytes());
            assert_eq!(classify_event(event.as_bytes(), true), expected, "{event}");
            let without = if expected == EventKind::Done {
                EventKind::Done
            } else {
                EventKind::Other
            };
            assert_eq!(classify_event(event.as_bytes(), false), without, "{event}");
        }
        // A member written twice: the last one wins, as JSON parsers read it (bb50).
        for twice in [
            r#"{"id":"c","id":"d","choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
        ] {
            let mut acc = StreamAccumulator::default();
            assert_eq!(
                acc.push_data(twice.as_bytes()),
                EventKind::UsageOnly,
                "{twice}"
            );
            assert!(acc.summary().usage.is_some(), "{twice}");
            assert_eq!(classify_event(twice.as_bytes(), true), EventKind::UsageOnly);
        }
        // A byte that is not UTF-8 (an upstream's Latin-1 `é`), read past by both.
        let latin1 = b"{\"id\":\"caf\xe9\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
        assert_eq!(classify_event(latin1, true), EventKind::UsageOnly);
        assert_eq!(
            StreamAccumulator::default().push_data(latin1),
            EventKind::UsageOnly
        );
    }

    /// The formats' last events are told by their `event:` name, or without one by a leading
    /// `"type"`, each on its own endpoint only; other events, a `type` further in, and chat
    /// chunks are not, and a chat stream has none (it ends at `[DONE]` whatever its events
    /// are named).
    #[test]
    fn last_events_are_told_by_their_name_on_their_own_endpoint() {
        let last = |path: &str, event: &str| {
            let data = crate::proxy::sse::event_data(event.as_bytes()).expect("data");
            is_last_event(event.as_bytes(), &data, LastEvents::of(path))
        };
        for (path, event) in [
            (
                "/messages",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ),
            ("/messages", "event:message_stop\r\ndata: {}\r\n\r\n"),
            // The previous event's `\r\n` cut between two reads (bb48).
            ("/messages", "\nevent: message_stop\r\ndata: {}\r\n\r\n"),
            (
                "/responses",
                "\nevent: response.completed\r\ndata: {\"sequence_number\":2,\"type\":\"response.completed\"}\r\n\r\n",
            ),
            ("/messages", "data: {\"type\":\"message_stop\"}\n\n"),
            (
                "/responses",
                "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n",
            ),
            ("/responses", "event: response.incomplete\ndata: {}\n\n"),
            ("/responses/resp_1", "event: response.failed\ndata: {}\n\n"),
            (
                "/responses",
                "data:  { \"type\" : \"response.completed\", \"response\": {}}\n\n",
            ),
            (
                "/responses",
                "event: message\ndata: {\"type\": \"response.failed\"}\n\n",
            ),
        ] {
            assert!(last(path, event), "{path} {event:?}");
            for other in ["/chat/completions", "/completions", "/audio/speech"] {
                assert!(!last(other, event), "{other} {event:?}");
            }
        }
        assert!(!last("/responses", "event: message_stop\ndata: {}\n\n"));
        assert!(!last(
            "/messages",
            "event: response.completed\ndata: {}\n\n"
        ));
        for event in [
            "event: message_delta\ndata: {\"type\":\"message_delta\"}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{}}\n\n",
            "event: response.output_text.done\ndata: {}\n\n",
            "event: image_generation.completed\ndata: {}\n\n",
            "data: {\"id\":\"c\",\"type\":\"message_stop\"}\n\n",
            "data: {\"id\":\"c\",\"choices\":[]}\n\n",
            "data: [DONE]\n\n",
            "data: {\"type\":\"message_stop_not\"}\n\n",
            "data: {\"type\":\"message_stop\n\n",
        ] {
            assert!(!last("/messages", event), "{event:?}");
            assert!(!last("/responses", event), "{event:?}");
        }
    }

    /// An error inside a stream answered 2xx is kept with its message, whatever shape the
    /// provider gave it; the first one reported wins, and `"error": null` is none.
    #[test]
    fn errors_reported_inside_a_stream_keep_their_message() {
        for (events, expected) in [
            (
                &[r#"{"error":{"message":"mid-stream provider error","code":500}}"#][..],
                Some("mid-stream provider error"),
            ),
            (
                &[
                    r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
                    r#"{"id":"x","choices":[],"error":"overloaded"}"#,
                    r#"{"error":{"message":"second"}}"#,
                ][..],
                Some("overloaded"),
            ),
            (&[r#"{"error":{"code":502}}"#][..], Some(r#"{"code":502}"#)),
            (
                &[r#"{"type":"error","code":"server_error","message":"responses failed"}"#][..],
                Some("responses failed"),
            ),
            (
                &[
                    r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"x","message":"it failed"}}}"#,
                ][..],
                Some("it failed"),
            ),
            (
                &[r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"}}],"error":null}"#][..],
                None,
            ),
        ] {
            let mut acc = StreamAccumulator::default();
            for event in events {
                acc.push_data(event.as_bytes());
            }
            assert_eq!(acc.summary().error.as_deref(), expected, "{events:?}");
        }
    }

    /// Beside its message, a stream's error keeps the type and code the upstream gave (a
    /// code that is not a string as its JSON value, a long one cut); none when it gave
    /// neither, and the first error reported wins here too.
    #[test]
    fn errors_reported_inside_a_stream_keep_their_type_and_code() {
        let long = "c".repeat(200);
        let cut = format!("{}… (200 bytes)", "c".repeat(80));
        for (events, expected) in [
            (
                vec![r#"{"type":"error","code":"server_error","message":"m","sequence_number":1}"#.to_owned()],
                Some(json!({"message": "m", "code": "server_error"})),
            ),
            (
                vec![r#"{"type":"error","error":{"type":"t","code":null,"message":"m"}}"#.to_owned()],
                Some(json!({"message": "m", "type": "t"})),
            ),
            (
                vec![r#"{"type":"response.failed","response":{"status":"failed","error":{"code":429,"message":"m"}}}"#.to_owned()],
                Some(json!({"message": "m", "code": 429})),
            ),
            (
                vec![format!(r#"{{"error":{{"message":"m","code":"{long}"}}}}"#)],
                Some(json!({"message": "m", "code": cut})),
            ),
            (vec![r#"{"type":"error","message":"m"}"#.to_owned()], None),
            (vec![r#"{"error":"overloaded"}"#.to_owned()], None),
            (
                vec![
                    r#"{"error":{"message":"first"}}"#.to_owned(),
                    r#"{"error":{"message":"second","code":"x"}}"#.to_owned(),
                ],
                None,
            ),
        ] {
            let mut acc = StreamAccumulator::default();
            for event in &events {
                acc.push_data(event.as_bytes());
            }
            assert_eq!(acc.summary().error_detail, expected, "{events:?}");
        }
    }

    #[test]
    fn openai_usage_with_details() {
        let u = Usage::from_json(&json!({
            "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 40},
            "completion_tokens_details": {"reasoning_tokens": 20}
        }))
        .expect("usage");
        assert_eq!(
            u,
            Usage {
                input: 100,
                output: 50,
                total: 150,
                cached_input: 40,
                cache_creation_input: 0,
                reasoning: 20,
                cost: None,
                audio_seconds: None,
            }
        );
    }

    #[test]
    fn deepseek_and_openrouter_and_anthropic_shapes() {
        let d = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_cache_hit_tokens": 7, "prompt_cache_miss_tokens": 3})).expect("ds");
        assert_eq!(d.cached_input, 7);
        assert_eq!(d.input, 10);
        let o = Usage::from_json(
            &json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.0012}),
        )
        .expect("or");
        assert_eq!(o.cost, Some(0.0012));
        let a = Usage::from_json(&json!({"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20})).expect("an");
        assert_eq!(
            (a.input, a.cached_input, a.cache_creation_input, a.total),
            (130, 100, 20, 134)
        );
        let r = Usage::from_json(&json!({"input_tokens": 8, "output_tokens": 9, "total_tokens": 17, "input_tokens_details": {"cached_tokens": 2}, "output_tokens_details": {"reasoning_tokens": 3}})).expect("resp");
        assert_eq!((r.cached_input, r.reasoning), (2, 3));
        assert!(Usage::from_json(&json!({})).is_none());
        assert!(Usage::from_json(&json!(null)).is_none());
        assert!(Usage::from_json(&json!({"prompt_tokens": -3})).is_none());
    }

    /// A part larger than its whole (xAI's reasoning beside completion_tokens that leave it
    /// out) is read as left out of the whole: added to it, the total kept as sent.
    #[test]
    fn a_part_larger_than_its_whole_is_added_to_it() {
        let x = Usage::from_json(
            &json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 330,
            "completion_tokens_details": {"reasoning_tokens": 310}}),
        )
        .expect("xai");
        assert_eq!(
            (x.input, x.output, x.total, x.reasoning),
            (10, 320, 330, 310)
        );
        let c = Usage::from_json(&json!({"prompt_tokens": 31, "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 50}}))
        .expect("cached");
        assert_eq!((c.input, c.cached_input, c.total), (81, 50, 85));
        let within = Usage::from_json(&json!({"prompt_tokens": 50, "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9}}))
        .expect("within");
        assert_eq!(
            (within.input, within.output),
            (50, 9),
            "a part as large as its whole is in it"
        );
        // xAI with less reasoning than output: the total says it is left out.
        let beside = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 500,
            "total_tokens": 710, "completion_tokens_details": {"reasoning_tokens": 200}}))
        .expect("beside");
        assert_eq!((beside.output, beside.total), (700, 710));
        let cache_beside = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 4}}))
        .expect("cache beside");
        assert_eq!((cache_beside.input, cache_beside.output), (14, 5));
        let both = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 22, "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 3}}))
        .expect("both");
        assert_eq!((both.input, both.output), (14, 8));
        let ambiguous = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 3}}))
        .expect("ambiguous");
        assert_eq!((ambiguous.input, ambiguous.output), (10, 5));
        // OpenAI's own: reasoning within output, cache within input, total their sum.
        let openai = Usage::from_json(&json!({"prompt_tokens": 10, "completion_tokens": 5,
            "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 3}}))
        .expect("openai");
        assert_eq!((openai.input, openai.output), (10, 5));
    }

    /// A number that is not a count (negative, not finite, beyond `MAX_COUNT`) anywhere in a
    /// usage makes it unknown, on the typed path and the lenient one alike; a string is
    /// skipped as before; a float is its whole part.
    #[test]
    fn a_count_that_is_not_one_makes_the_usage_unknown() {
        let chat = |usage: &str| {
            let body = format!(r#"{{"model":"m","choices":[],"usage":{usage}}}"#);
            summarize_body(body.as_bytes()).usage
        };
        for usage in [
            r#"{"prompt_tokens":9223372036854775807,"completion_tokens":1}"#,
            r#"{"prompt_tokens":-5,"completion_tokens":10,"total_tokens":5}"#,
            r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":1e400}"#,
            r#"{"prompt_tokens":1,"completion_tokens":-0.5}"#,
            r#"{"prompt_tokens":1,"completion_tokens_details":{"reasoning_tokens":1000000000001}}"#,
            r#"{"input_tokens":1,"cache_read_input_tokens":18446744073709551615}"#,
            r#"{"type":"duration","seconds":-1}"#,
        ] {
            assert_eq!(chat(usage), None, "{usage}");
        }
        // The rest of such an answer is read as ever.
        let body = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"total_tokens":1e400}}"#;
        let summary = summarize_body(body.as_bytes());
        assert_eq!((summary.content.as_str(), summary.usage), ("hi", None));
        let bound = chat(r#"{"prompt_tokens":1000000000000,"completion_tokens":"7"}"#);
        assert_eq!(bound.map(|u| (u.input, u.output)), Some((MAX_COUNT, 0)));
        let float = chat(r#"{"prompt_tokens":12.0,"completion_tokens":3.5}"#);
        assert_eq!(
            float.map(|u| (u.input, u.output, u.total)),
            Some((12, 3, 15))
        );
    }

    #[test]
    fn chat_body_summary() {
        let body = json!({
            "id": "c1", "model": "gpt-4o-2024", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "hi", "reasoning_content": "think",
              "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        });
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(s.model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!(s.content, "hi");
        assert_eq!(s.reasoning, "think");
        assert_eq!(s.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(s.tool_calls[0].name, "f");
        assert_eq!(s.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(s.usage.as_ref().map(|u| u.total), Some(7));
    }

    #[test]
    fn responses_body_summary() {
        let body = json!({"id": "r", "model": "o3", "status": "completed", "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "answer"}]}],
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(
            (s.content.as_str(), s.reasoning.as_str()),
            ("answer", "why")
        );
        assert_eq!(s.usage.map(|u| u.output), Some(2));
    }

    /// Tool calls sent whole without an `index` (Gemini's OpenAI-compatible endpoint) stay
    /// apart, told by their ids; an id-less continuation goes on with the last call. With
    /// `n` = 2, only the first answer is recorded, as of a whole answer, not both mixed.
    #[test]
    fn index_less_tool_calls_stay_apart_and_only_the_first_of_n_answers_is_read() {
        let mut acc = StreamAccumulator::default();
        let events = [
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"function-call-1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"Paris\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"function-call-2","type":"function","function":{"name":"get_time","arguments":"{\"tz\":\"CET\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ];
        for e in events {
            acc.push_data(e.as_bytes());
        }
        let calls = acc.into_summary().tool_calls;
        let got: Vec<(&str, &str, &str)> = calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("function-call-1", "get_weather", r#"{"city":"Paris"}"#),
                ("function-call-2", "get_time", r#"{"tz":"CET"}"#)
            ]
        );

        let mut acc = StreamAccumulator::default();
        for (i, text) in [(0, "A1"), (1, "B1"), (0, "A2"), (1, "B2")] {
            let finish = if text.ends_with('2') {
                r#""stop""#
            } else {
                "null"
            };
            let e = format!(
                r#"{{"choices":[{{"index":{i},"delta":{{"content":"{text}"}},"finish_reason":{finish}}}]}}"#
            );
            acc.push_data(e.as_bytes());
        }
        let s = acc.into_summary();
        assert_eq!(s.content, "A1A2");
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.more_finish_reasons, [(1, "stop".to_owned())]);
    }

    /// Raw control characters are escaped inside strings only, after an escaping backslash
    /// too; white space between tokens and text with none are left alone.
    #[test]
    fn raw_controls_are_escaped_inside_strings_only() {
        for (text, wanted) in [
            ("{\"a\":\"x\ty\"}", Some(r#"{"a":"x\u0009y"}"#)),
            (
                "{\n\t\"a\":\n\"x\u{1}\"}",
                Some("{\n\t\"a\":\n\"x\\u0001\"}"),
            ),
            ("{\"a\":\"x\\\u{1}\"}", Some(r#"{"a":"x\\\u0001"}"#)),
            ("{\"a\":\"\\\"\t\"}", Some(r#"{"a":"\"\u0009"}"#)),
            ("{\n\"a\": 1}", None),
            (r#"{"a":"x\ty"}"#, None),
        ] {
            let fixed = raw_controls_escaped(text);
            assert_eq!(fixed.as_deref(), wanted, "{text:?}");
            if let Some(fixed) = fixed {
                assert!(serde_json::from_str::<Value>(&fixed).is_ok(), "{fixed}");
            }
        }
    }

    /// Calls sent whole, each with its own id, at one index (Ollama; vLLM at times) stay
    /// apart, as do index-less calls whose pieces interleave, told by their ids; pieces
    /// with no id or an empty one go on with their call.
    #[test]
    fn tool_calls_are_told_apart_by_their_ids_whatever_their_index() {
        let assembled = |events: &[&str]| {
            let mut acc = StreamAccumulator::default();
            for e in events {
                acc.push_data(e.as_bytes());
            }
            acc.into_summary()
                .tool_calls
                .into_iter()
                .map(|c| (c.id, c.name, c.arguments))
                .collect::<Vec<_>>()
        };
        let call = |id: &str, name: &str, arguments: &str| {
            (id.to_owned(), name.to_owned(), arguments.to_owned())
        };
        let ollama = assembled(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f1","arguments":"{\"a\":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_2","type":"function","function":{"name":"f2","arguments":"{\"b\":2}"}}]}}]}"#,
        ]);
        assert_eq!(
            ollama,
            [
                call("call_1", "f1", r#"{"a":1}"#),
                call("call_2", "f2", r#"{"b":2}"#)
            ]
        );
        // OpenAI's: two indexes interleaved, the id only in each call's first piece (an empty
        // one after it), the second call's index coming back after a third began.
        let openai = assembled(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"A","function":{"name":"f","arguments":"[1"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"B","function":{"name":"g","arguments":"[2"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"","function":{"arguments":"]"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":2,"id":"C","function":{"name":"h","arguments":"[]"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"]"}}]}}]}"#,
        ]);
        assert_eq!(
            openai,
            [
                call("A", "f", "[1]"),
                call("B", "g", "[2]"),
                call("C", "h", "[]")
            ]
        );
        // Poolside's: the later pieces of one call carry another id; kept under the first.
        let poolside = assembled(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_first","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_other","function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_other","function":{"arguments":"\"Paris\"}"}}]}}]}"#,
        ]);
        assert_eq!(
            poolside,
            [call("call_first", "get_weather", r#"{"city":"Paris"}"#)]
        );
        // Two calls' pieces alternating at one index, each piece with its call's id.
        let alternating = assembled(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"A","function":{"name":"f","arguments":"[1"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"B","function":{"name":"g","arguments":"[2"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"A","function":{"arguments":"]"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"B","function":{"arguments":"]"}}]}}]}"#,
        ]);
        assert_eq!(alternating, [call("A", "f", "[1]"), call("B", "g", "[2]")]);
        // One id for every call (a server that reuses it): told apart by their indexes.
        let one_id = assembled(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"same","function":{"name":"f","arguments":"[]"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"same","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ]);
        assert_eq!(one_id, [call("same", "f", "[]"), call("same", "g", "{}")]);
        let index_less = assembled(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"call_1","function":{"name":"f1","arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"call_2","function":{"name":"f2","arguments":"{\"b\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"call_1","function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"call_2","function":{"arguments":"2}"}}]}}]}"#,
        ]);
        assert_eq!(
            index_less,
            [
                call("call_1", "f1", r#"{"a":1}"#),
                call("call_2", "f2", r#"{"b":2}"#)
            ]
        );
    }

    /// The other choices' finish reasons are kept, a bounded number of them, however many
    /// indices an upstream sends; a whole body's too, by position.
    #[test]
    fn other_choices_finish_reasons_are_kept_bounded() {
        let mut acc = StreamAccumulator::default();
        for i in 1..1000 {
            let e =
                format!(r#"{{"choices":[{{"index":{i},"delta":{{}},"finish_reason":"stop"}}]}}"#);
            acc.push_data(e.as_bytes());
        }
        acc.push_data(br#"{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#);
        let s = acc.into_summary();
        assert_eq!(s.more_finish_reasons.len(), MAX_MORE_FINISH_REASONS);
        assert_eq!(s.more_finish_reasons[0], (1, "length".to_owned()));
        assert_eq!(s.finish_reason, None);

        let body = json!({"choices": [{"message": {"content": "a"}, "finish_reason": "stop"},
            {"message": {"content": "b"}}, {"message": {"content": "c"}, "finish_reason": "length"}]});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.more_finish_reasons, [(2, "length".to_owned())]);
    }

    #[test]
    fn stream_events_assemble_text_tools_and_usage() {
        let mut acc = StreamAccumulator::default();
        let events = [
            r#"{"id":"x","model":"m1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#,
            r#"{"id":"x","model":"m1","choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"id":"x","model":"m1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"x","model":"m1","choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"get","arguments":"{\"q\""}}]}}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        ];
        assert_eq!(acc.push_data(events[0].as_bytes()), EventKind::Other);
        assert!(!acc.saw_output());
        for e in &events[1..] {
            assert_eq!(acc.push_data(e.as_bytes()), EventKind::Other);
        }
        assert!(acc.saw_output());
        let usage = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#;
        assert_eq!(acc.push_data(usage.as_bytes()), EventKind::UsageOnly);
        assert_eq!(acc.push_data(b" [DONE]"), EventKind::Done);
        let s = acc.into_summary();
        assert_eq!(s.content, "Hello");
        assert_eq!(s.reasoning, "hm");
        assert_eq!(
            s.tool_calls,
            vec![ToolCall {
                id: "c".into(),
                kind: "function".into(),
                name: "get".into(),
                arguments: "{\"q\":1}".into()
            }]
        );
        assert_eq!(s.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(s.usage.map(|u| u.total), Some(11));
        assert_eq!(s.model.as_deref(), Some("m1"));
    }

    /// Chat Completions' custom tool calls (`{"type": "custom", "custom": {"name",
    /// "input"}}`) are tool calls of type `custom` whose arguments are the input, whole and
    /// streamed (the input in pieces, beside a function call); the first piece is output.
    #[test]
    fn custom_tool_calls_are_read_whole_and_streamed() {
        let custom = ToolCall {
            id: "call_1".into(),
            kind: "custom".into(),
            name: "code_exec".into(),
            arguments: "print(1)".into(),
        };
        let whole = summarize_body(
            json!({"choices": [{"finish_reason": "tool_calls", "message": {"content": null,
                "tool_calls": [{"id": "call_1", "type": "custom",
                    "custom": {"name": "code_exec", "input": "print(1)"}}]}}]})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(whole.tool_calls, std::slice::from_ref(&custom));
        // Without its `type`, the `custom` object still tells it.
        let untyped = summarize_body(
            br#"{"choices":[{"message":{"tool_calls":[{"id":"call_1","custom":{"name":"code_exec","input":"print(1)"}}]}}]}"#,
        );
        assert_eq!(untyped.tool_calls, std::slice::from_ref(&custom));

        let mut acc = StreamAccumulator::default();
        let events = [
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"custom","custom":{"name":"code_exec","input":"pri"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"custom":{"input":"nt(1)"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"custom":{"name":"g","input":"x"}}]},"finish_reason":"tool_calls"}]}"#,
        ];
        acc.push_data(events[0].as_bytes());
        assert!(acc.saw_output(), "the first piece is output");
        for event in &events[1..] {
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::Other);
        }
        let function = ToolCall {
            id: "call_2".into(),
            kind: "function".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        let untyped = ToolCall {
            kind: "custom".into(),
            name: "g".into(),
            arguments: "x".into(),
            ..Default::default()
        };
        assert_eq!(acc.into_summary().tool_calls, [custom, function, untyped]);
    }

    /// A member of an unexpected type in a stream chunk is skipped, as in a whole answer:
    /// the chunk's usage, finish reason and tool call are still read (bb51).
    #[test]
    fn a_mistyped_member_loses_itself_not_the_chunk() {
        let usage = r#""usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#;
        let delta = |delta: &str| {
            format!(
                r#"{{"id":"c","choices":[{{"index":0,"delta":{delta},"finish_reason":"stop"}}],{usage}}}"#
            )
        };
        let cases = [
            // A tool call's arguments as an object: their JSON text, as a whole answer's.
            delta(
                r#"{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":{"a":1}}}]}"#,
            ),
            format!(
                r#"{{"id":12345,"choices":[{{"index":0,"delta":{{"content":"y"}},"finish_reason":"stop"}}],{usage}}}"#
            ),
            delta(r#"{"content":{"type":"text","text":"y"}}"#),
            format!(
                r#"{{"id":"c","choices":[{{"index":"0","delta":{{"content":"y"}},"finish_reason":"stop"}}],{usage}}}"#
            ),
            delta(r#"{"content":"y","refusal":7,"tool_calls":"no"}"#),
            format!(
                r#"{{"id":"c","model":["m"],"choices":[5,{{"delta":{{"content":"y"}},"finish_reason":"stop"}}],{usage}}}"#
            ),
            delta(r#"{"content":7}"#),
        ];
        for event in &cases {
            let mut acc = StreamAccumulator::default();
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::Other, "{event}");
            let summary = acc.summary();
            assert_eq!(
                summary.usage.as_ref().map(|u| (u.input, u.output)),
                Some((10, 5)),
                "{event}"
            );
            assert_eq!(summary.finish_reason.as_deref(), Some("stop"), "{event}");
        }
        let mut acc = StreamAccumulator::default();
        acc.push_data(cases[0].as_bytes());
        let call = &acc.summary().tool_calls[..];
        assert_eq!(call.len(), 1);
        assert_eq!((call[0].id.as_str(), call[0].name.as_str()), ("c1", "f"));
        assert_eq!(call[0].arguments, r#"{"a":1}"#);
        for (i, event) in cases[1..].iter().enumerate() {
            let mut acc = StreamAccumulator::default();
            acc.push_data(event.as_bytes());
            let content = if i + 2 == cases.len() { "" } else { "y" };
            assert_eq!(acc.summary().content, content, "{event}");
            assert!(acc.summary().id.as_deref() != Some("12345"));
        }
        // A choice's index as a string is its number: choice 1's text stays out of choice 0's.
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"id":"c","choices":[{"index":"1","delta":{"content":"other"},"finish_reason":"length"}],"x":{}}"#);
        assert_eq!(acc.summary().content, "");
        assert_eq!(
            acc.summary().more_finish_reasons,
            vec![(1, "length".to_owned())]
        );
        // The usage-only chunk with a numeric id is still usage-only, for both readers.
        let usage_only = format!(r#"{{"id":12345,"choices":[],{usage}}}"#);
        let mut acc = StreamAccumulator::default();
        assert_eq!(acc.push_data(usage_only.as_bytes()), EventKind::UsageOnly);
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(15));
        assert_eq!(
            classify_event(usage_only.as_bytes(), true),
            EventKind::UsageOnly
        );
        // Not an object at all: nothing to read.
        assert_eq!(
            StreamAccumulator::default().push_data(br#"[{"choices":[]}]"#),
            EventKind::Other
        );
    }

    /// A chat chunk naming its own type (`chat.completion.chunk`) is read as a chat chunk,
    /// not as an event of the Responses API (bb51).
    #[test]
    fn a_chat_chunk_with_a_type_is_read_as_a_chat_chunk() {
        let mut acc = StreamAccumulator::default();
        let events = [
            r#"{"type":"chat.completion.chunk","id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            r#"{"type":"chat.completion.chunk","id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ];
        for event in events {
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::Other);
        }
        let usage_only = r#"{"type":"chat.completion.chunk","id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
        assert_eq!(acc.push_data(usage_only.as_bytes()), EventKind::UsageOnly);
        assert_eq!(
            classify_event(usage_only.as_bytes(), true),
            EventKind::UsageOnly
        );
        assert!(acc.saw_output());
        let summary = acc.into_summary();
        assert_eq!(summary.content, "a");
        assert_eq!(summary.finish_reason.as_deref(), Some("stop"));
        assert_eq!(summary.usage.map(|u| u.total), Some(15));
        // A Responses API event is still one, `choices` or not.
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.output_text.delta","delta":"r","choices":[]}"#);
        assert_eq!(acc.summary().content, "r");
    }

    /// A usage object, or its details, sent as a list is no usage (no details), on every
    /// path: serde's derived structs read a list by position (bb51).
    #[test]
    fn a_usage_list_is_no_usage() {
        let raw = |text: &str| serde_json::from_str::<&RawValue>(text).map(Usage::from_raw);
        assert_eq!(raw("[10, 5]").ok(), Some(None));
        assert_eq!(raw(r#"[10, 5, 15, 1, 1]"#).ok(), Some(None));
        let details = raw(r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":[7],"completion_tokens_details":[2]}"#)
            .ok()
            .flatten()
            .expect("usage");
        assert_eq!((details.cached_input, details.reasoning), (0, 0));
        for usage in [
            json!([10, 5]),
            json!({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": [7]}),
        ] {
            let body = json!({"choices": [{"message": {"content": "x"}}], "usage": usage});
            let summary = summarize_body(body.to_string().as_bytes());
            let expected = (!usage.is_array()).then_some((10, 5, 0));
            assert_eq!(
                summary.usage.map(|u| (u.input, u.output, u.cached_input)),
                expected,
                "{body}"
            );
            let event = json!({"choices": [], "usage": usage}).to_string();
            let mut acc = StreamAccumulator::default();
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::UsageOnly);
            assert_eq!(
                acc.summary()
                    .usage
                    .as_ref()
                    .map(|u| (u.input, u.output, u.cached_input)),
                expected,
                "{event}"
            );
        }
    }

    /// Groq's `x_groq.usage` is read when the top-level `usage` is a list, which is no usage:
    /// as when it is absent or null (before, a list there kept Groq's from being read), in a
    /// stream's chunk and in a whole answer.
    #[test]
    fn groqs_usage_is_read_when_the_top_level_one_is_a_list() {
        let groq = json!({"id": "req_1", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
        for listed in [json!([1, 2, 3]), json!([]), json!(7), json!("usage")] {
            let chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": listed, "x_groq": groq});
            let mut acc = StreamAccumulator::default();
            assert_eq!(
                acc.push_data(chunk.to_string().as_bytes()),
                EventKind::Other
            );
            assert_eq!(
                acc.summary()
                    .usage
                    .as_ref()
                    .map(|u| (u.input, u.output, u.total)),
                Some((10, 5, 15)),
                "{chunk}"
            );
            // The usage-only chunk stays one: its `usage` member is what makes it so.
            let usage_only = json!({"id": "c", "choices": [], "usage": listed, "x_groq": groq});
            let mut acc = StreamAccumulator::default();
            assert_eq!(
                acc.push_data(usage_only.to_string().as_bytes()),
                EventKind::UsageOnly
            );
            assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(15));
            let body = json!({"id": "c", "model": "m", "usage": listed, "x_groq": groq,
                "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]});
            let summary = summarize_body(body.to_string().as_bytes());
            assert_eq!(summary.usage.map(|u| u.total), Some(15), "{body}");
            assert_eq!(summary.content, "x");
        }
    }

    /// Groq's `x_groq.usage` is read when there is no top-level usage, in a stream's chunk
    /// and in a whole answer; never in place of a top-level one (bb51).
    #[test]
    fn groqs_usage_is_read_when_there_is_no_other() {
        let groq = json!({"id": "req_1", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "queue_time": 0.01}});
        let top = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3});
        let chunk = |usage: Option<&Value>| {
            let mut chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "x_groq": groq});
            if let Some(usage) = usage {
                chunk["usage"] = usage.clone();
            }
            chunk.to_string()
        };
        let mut acc = StreamAccumulator::default();
        assert_eq!(acc.push_data(chunk(None).as_bytes()), EventKind::Other);
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(15));
        let mut acc = StreamAccumulator::default();
        acc.push_data(chunk(Some(&Value::Null)).as_bytes());
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(15));
        let mut acc = StreamAccumulator::default();
        acc.push_data(chunk(Some(&top)).as_bytes());
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(3));
        // A top-level usage read before stays; one after replaces Groq's.
        let usage_only = json!({"id": "c", "choices": [], "usage": top}).to_string();
        let mut acc = StreamAccumulator::default();
        assert_eq!(acc.push_data(usage_only.as_bytes()), EventKind::UsageOnly);
        acc.push_data(chunk(None).as_bytes());
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(3));
        let mut acc = StreamAccumulator::default();
        acc.push_data(chunk(None).as_bytes());
        acc.push_data(usage_only.as_bytes());
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(3));
        // Only under `x_groq` in a chunk with no choices: not the usage-only chunk.
        let bare = json!({"id": "c", "choices": [], "x_groq": groq}).to_string();
        assert_eq!(
            StreamAccumulator::default().push_data(bare.as_bytes()),
            EventKind::Other
        );
        // A whole answer.
        let body = |usage: Option<&Value>| {
            let mut body = json!({"id": "c", "model": "m", "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "x_groq": groq});
            if let Some(usage) = usage {
                body["usage"] = usage.clone();
            }
            summarize_body(body.to_string().as_bytes())
        };
        assert_eq!(body(None).usage.map(|u| u.total), Some(15));
        assert_eq!(body(Some(&Value::Null)).usage.map(|u| u.total), Some(15));
        assert_eq!(body(Some(&top)).usage.map(|u| u.total), Some(3));
        assert_eq!(body(None).content, "x");
        // An `x_groq` that is not an object holds no usage.
        let listed = json!({"choices": [{"message": {"content": "x"}}], "x_groq": [groq["usage"]]});
        assert_eq!(summarize_body(listed.to_string().as_bytes()).usage, None);
    }

    /// A stream event, or an object inside one (a choice, a delta, a tool call, its
    /// function, a content part, an Anthropic message or block, a Responses API item), sent
    /// as a list is not read by position as that object: serde's derived structs take a list
    /// member by member, so `["c", "m", [...]]` was a chunk with an id, a model and choices.
    /// The list is skipped; what is beside it is still read.
    #[test]
    fn a_list_is_never_read_as_an_event_or_an_object_in_one() {
        let read = |event: &Value| {
            let mut acc = StreamAccumulator::default();
            let kind = acc.push_data(event.to_string().as_bytes());
            (kind, acc.into_summary())
        };
        let usage = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3});
        // The whole chunk: id, model, choices, usage by position.
        let (kind, summary) =
            read(&json!(["c", "m", [{"index": 0, "delta": {"content": "x"}}], usage]));
        assert_eq!(kind, EventKind::Other);
        assert_eq!(summary, ResponseSummary::default());
        let (kind, summary) = read(&json!(["c", "m", [], usage]));
        assert_eq!(kind, EventKind::Other);
        assert_eq!(summary.usage, None);
        // A choice (index, delta, text, finish_reason) beside a real one.
        let (_, summary) = read(&json!({"id": "c", "choices": [
            [0, {"content": "x"}, "t", "stop"],
            {"index": 0, "delta": {"content": "y"}}]}));
        assert_eq!(
            (summary.content.as_str(), summary.finish_reason),
            ("y", None)
        );
        assert_eq!(summary.id.as_deref(), Some("c"));
        // A delta (content first), a tool call (index, id, type, function), a function
        // (name, arguments), the legacy call, a content part (type, text).
        for delta in [
            json!(["x"]),
            json!({"tool_calls": [[0, "c1", "function", {"name": "f", "arguments": "{}"}]]}),
            json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": ["f", "{}"]}]}),
            json!({"tool_calls": [{"index": 0, "id": "c1", "type": "custom", "custom": ["f", "{}"]}]}),
            json!({"function_call": ["f", "{}"]}),
            json!({"content": [["text", "x"], {"type": "text", "text": "y"}]}),
        ] {
            let event = json!({"choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}], "usage": usage});
            let (_, summary) = read(&event);
            assert!(!summary.content.contains('x'), "{event}");
            assert!(
                summary.tool_calls.iter().all(|call| call.name.is_empty()),
                "{event}: {:?}",
                summary.tool_calls
            );
            assert_eq!(summary.finish_reason.as_deref(), Some("stop"), "{event}");
            assert_eq!(summary.usage.map(|u| u.total), Some(3), "{event}");
        }
        // Anthropic's message (id, model, usage) and content block (type, text).
        let (_, summary) = read(&json!({"type": "message_start",
            "message": ["msg_1", "claude", {"input_tokens": 5, "output_tokens": 1}]}));
        assert_eq!((summary.id, summary.model), (None, None));
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"content_block_start","index":0,"content_block":["tool_use","hi","","","id1","f"]}"#);
        acc.push_data(br#"{"type":"content_block_start","index":1,"content_block":["text","hi"]}"#);
        assert_eq!(acc.summary().content, "");
        assert!(acc.summary().tool_calls.is_empty());
        // A Responses API tool call item (type, call_id, name, arguments).
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.output_item.added","output_index":0,"item":["function_call","c1","f","{}"]}"#);
        assert!(acc.summary().tool_calls.is_empty());
        // Nor for the forwarding decision with every sink off.
        let listed = json!(["c", "m", [], usage]).to_string();
        assert_eq!(classify_event(listed.as_bytes(), true), EventKind::Other);
    }

    /// A whole answer, or an object in it (a choice, its message, a content part, an
    /// Anthropic block, an embedding or image, a moderation result), sent as a list is not
    /// read by position as that object, on the fast path or the lenient one.
    #[test]
    fn a_list_is_never_read_as_an_answer_or_an_object_in_one() {
        // id, model, choices.
        let listed = json!(["c", "m", [{"message": {"content": "x"}}]]).to_string();
        assert_eq!(
            summarize_json_body(listed.as_bytes(), &CutGuard::default()),
            None
        );
        assert_eq!(
            summarize_json_body(b"  [\"c\"]", &CutGuard::default()),
            None
        );
        for body in [
            // A choice (message, text, finish_reason).
            json!({"choices": [[{"content": "x"}, "x", "stop"]]}),
            // A message (content first).
            json!({"choices": [{"message": ["x"], "finish_reason": "stop"}]}),
            // A content part (type, text).
            json!({"choices": [{"message": {"content": [["text", "x"]]}, "finish_reason": "stop"}]}),
            json!({"choices": [{"message": {"content": ["text", "x"]}, "finish_reason": "stop"}]}),
            // An Anthropic content block (type, text).
            json!({"type": "message", "content": [["text", "x"]], "stop_reason": "end_turn"}),
        ] {
            let summary = summarize_body(body.to_string().as_bytes());
            assert_eq!(summary.content, "", "{body}");
            assert!(summary.tool_calls.is_empty(), "{body}");
        }
        // Embeddings or images (embedding, b64_json, url), moderations (flagged).
        let images = json!({"created": 1, "data": [[null, null, "https://x/1.png"]]});
        assert!(
            !summarize_body(images.to_string().as_bytes())
                .content
                .contains("https://x")
        );
        let moderation = json!({"id": "m", "results": [[true, {"violence": true}]]});
        assert!(
            !summarize_body(moderation.to_string().as_bytes())
                .content
                .contains("moderation")
        );
    }

    /// A delta's `content` sent as one part, not in a list (`{"type": "text", "text": ...}`),
    /// is read as a list of that part is: its text is the answer's (before, it was skipped
    /// as mistyped), a thinking part its reasoning. A whole answer's `message.content` the
    /// same, on both of its paths.
    #[test]
    fn a_content_part_alone_is_read_as_a_list_of_it() {
        let mut acc = StreamAccumulator::default();
        for delta in [
            json!({"content": {"type": "thinking", "thinking": "hmm"}}),
            json!({"content": {"type": "text", "text": "hi"}}),
            json!({"content": [{"type": "text", "text": " there"}]}),
            json!({"content": "!"}),
        ] {
            let event = json!({"id": "c", "choices": [{"index": 0, "delta": delta}]});
            assert_eq!(
                acc.push_data(event.to_string().as_bytes()),
                EventKind::Other
            );
        }
        assert!(acc.saw_output());
        let summary = acc.into_summary();
        assert_eq!(summary.content, "hi there!");
        assert_eq!(summary.reasoning, "hmm");
        // With another member mistyped beside it, read on the second pass.
        let mut acc = StreamAccumulator::default();
        acc.push_data(
            br#"{"id":7,"choices":[{"index":0,"delta":{"content":{"type":"text","text":"hi"}}}]}"#,
        );
        assert_eq!(acc.summary().content, "hi");
        let body = json!({"choices": [{"message": {"content": {"type": "text", "text": "hi"}}}]});
        assert_eq!(summarize_body(body.to_string().as_bytes()).content, "hi");
        let body = json!({"model": 1, "choices": [{"message": {"content": {"type": "text", "text": "hi"}}}]});
        assert_eq!(summarize_body(body.to_string().as_bytes()).content, "hi");
    }

    #[test]
    fn usage_on_a_content_chunk_is_not_usage_only() {
        let mut acc = StreamAccumulator::default();
        let e = r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        assert_eq!(acc.push_data(e.as_bytes()), EventKind::Other);
        assert_eq!(acc.summary().usage.as_ref().map(|u| u.total), Some(2));
    }

    #[test]
    fn responses_stream_events() {
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.output_text.delta","delta":"Hi"}"#);
        acc.push_data(br#"{"type":"response.completed","response":{"model":"o4","status":"completed","usage":{"input_tokens":2,"output_tokens":1,"total_tokens":3}}}"#);
        let s = acc.into_summary();
        assert_eq!(s.content, "Hi");
        assert_eq!(s.model.as_deref(), Some("o4"));
        assert_eq!(s.usage.map(|u| u.total), Some(3));
    }

    /// A Responses API stream's tool calls, assembled from their items' events before
    /// `response.completed` (a stream cut there keeps them): a function call's argument pieces,
    /// a custom tool call's input given whole in its `.done` event alone; the first item is
    /// the first token.
    #[test]
    fn responses_stream_tool_calls_are_assembled_from_their_events() {
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","content":[]}}"#);
        assert!(!acc.saw_output(), "a message item is no output yet");
        let events = [
            r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"call_F","name":"get_w","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{\"c\":"}"#,
            r#"{"type":"response.output_item.added","output_index":2,"item":{"type":"custom_tool_call","call_id":"call_C","name":"code_exec","input":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"1}"}"#,
            r#"{"type":"response.function_call_arguments.done","output_index":1,"arguments":"{\"c\":1}"}"#,
            r#"{"type":"response.custom_tool_call_input.done","output_index":2,"input":"print(1)"}"#,
            r#"{"type":"response.output_item.done","output_index":2,"item":{"type":"custom_tool_call","call_id":"call_C","name":"code_exec","input":"print(1)"}}"#,
        ];
        for event in events {
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::Other);
            assert!(acc.saw_output(), "{event}");
        }
        let calls: Vec<(String, String, String, String)> = acc
            .into_summary()
            .tool_calls
            .into_iter()
            .map(|c| (c.id, c.kind, c.name, c.arguments))
            .collect();
        let call = |id: &str, kind: &str, name: &str, arguments: &str| {
            (
                id.to_owned(),
                kind.to_owned(),
                name.to_owned(),
                arguments.to_owned(),
            )
        };
        assert_eq!(
            calls,
            [
                call("call_F", "function", "get_w", r#"{"c":1}"#),
                call("call_C", "custom", "code_exec", "print(1)")
            ]
        );
    }

    /// Anthropic's Messages stream: input and cache counts come in `message_start`, the
    /// output count in `message_delta`; text, thinking and tool calls in content blocks; the
    /// stream ends with `message_stop` (no `[DONE]`).
    #[test]
    fn anthropic_stream_events_assemble_usage_text_and_tool_calls() {
        let mut acc = StreamAccumulator::default();
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-r","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":100,"cache_creation_input_tokens":50}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Bon"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"jour"}}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
            r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_2","name":"get_time","input":{}}}"#,
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}"#,
        ];
        for (i, e) in events.iter().enumerate() {
            assert_eq!(acc.push_data(e.as_bytes()), EventKind::Other, "{e}");
            assert_eq!(acc.saw_output(), i >= 3, "{e}");
            assert!(
                acc.summary().usage.is_none(),
                "provisional until message_delta"
            );
        }
        assert!(!acc.saw_end());
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#;
        assert_eq!(acc.push_data(delta.as_bytes()), EventKind::Other);
        assert_eq!(
            acc.push_data(br#"{"type":"message_stop"}"#),
            EventKind::Other,
            "forwarded as any event"
        );
        assert!(acc.saw_end());
        let s = acc.into_summary();
        assert_eq!(s.id.as_deref(), Some("msg_1"));
        assert_eq!(s.model.as_deref(), Some("claude-r"));
        assert_eq!(
            (s.content.as_str(), s.reasoning.as_str()),
            ("Bonjour", "hm")
        );
        assert_eq!(s.finish_reason.as_deref(), Some("tool_use"));
        let calls: Vec<(&str, &str, &str)> = s
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("toolu_1", "get_weather", r#"{"city":"Paris"}"#),
                ("toolu_2", "get_time", "{}")
            ]
        );
        assert_eq!(
            s.usage,
            Some(Usage {
                input: 162,
                output: 42,
                total: 204,
                cached_input: 100,
                cache_creation_input: 50,
                reasoning: 0,
                cost: None,
                audio_seconds: None,
            })
        );
    }

    /// A `message_delta` that repeats the counts (newer API versions) or says 0 for the input
    /// (some compatible upstreams) leaves `message_start`'s input; a stream cut before
    /// `message_delta` has no usage (unknown, not its provisional output count); one that
    /// ends with `message_stop` without a `message_delta` usage keeps `message_start`'s.
    #[test]
    fn anthropic_usage_takes_the_largest_count_and_only_once_it_is_final() {
        let start = r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":100}}}"#;
        for (delta, input, output) in [
            (
                r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":12,"cache_read_input_tokens":100,"output_tokens":7}}"#,
                112,
                7,
            ),
            (
                r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":0,"output_tokens":7}}"#,
                112,
                7,
            ),
            (
                r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":null,"output_tokens":"x"}}"#,
                112,
                1,
            ),
        ] {
            let mut acc = StreamAccumulator::default();
            acc.push_data(start.as_bytes());
            acc.push_data(delta.as_bytes());
            let usage = acc.into_summary().usage.expect("usage");
            assert_eq!((usage.input, usage.output), (input, output), "{delta}");
        }
        let mut cut = StreamAccumulator::default();
        cut.push_data(start.as_bytes());
        cut.push_data(
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}"#,
        );
        assert!(!cut.saw_end());
        assert_eq!(cut.into_summary().usage, None);
        let mut ended = StreamAccumulator::default();
        ended.push_data(start.as_bytes());
        ended.push_data(br#"{"type":"message_stop"}"#);
        assert_eq!(ended.into_summary().usage.map(|u| u.input), Some(112));
    }

    /// An Anthropic stream's usage keeps only the fields [`Usage`] reads, each of 1 KiB at
    /// most: an upstream sending a new key in every event (or one huge value) grew what the
    /// record held, and what every `message_delta` re-read, with the stream (bb48: 444 MiB
    /// for a 100 MB stream, quadratic CPU). The counts are read as before.
    #[test]
    fn anthropic_usage_keeps_only_the_fields_read() {
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":12,"output_tokens":1,"service_tier":"standard"}}}"#);
        let huge = "x".repeat(MAX_ANTHROPIC_USAGE_VALUE + 1);
        for n in 0..200 {
            let delta = json!({"type": "message_delta", "delta": {},
                "usage": {format!("junk_{n}"): n, "output_tokens": n, "cost": huge}});
            acc.push_data(delta.to_string().as_bytes());
        }
        let kept = acc.anthropic_usage.as_ref().expect("usage seen");
        let mut keys: Vec<&str> = kept.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["input_tokens", "output_tokens"]);
        let usage = acc.into_summary().usage.expect("usage");
        assert_eq!((usage.input, usage.output, usage.cost), (12, 199, None));
    }

    /// A whole Anthropic message: text, thinking and tool_use content blocks, `stop_reason`.
    #[test]
    fn anthropic_body_summary() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-r",
            "content": [
                {"type": "thinking", "thinking": "let me see", "signature": "s"},
                {"type": "redacted_thinking", "data": "xx"},
                {"type": "text", "text": "Bon"},
                {"type": "text", "text": "jour"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
                "not a block"
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 12, "output_tokens": 42, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50}});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(s.id.as_deref(), Some("msg_1"));
        assert_eq!(s.model.as_deref(), Some("claude-r"));
        assert_eq!(
            (s.content.as_str(), s.reasoning.as_str()),
            ("Bonjour", "let me see")
        );
        assert_eq!(s.finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(
            s.tool_calls,
            vec![
                ToolCall {
                    id: "toolu_1".into(),
                    kind: "function".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                ToolCall {
                    id: "toolu_2".into(),
                    kind: "function".into(),
                    name: "now".into(),
                    arguments: "{}".into()
                }
            ]
        );
        assert_eq!(s.usage.map(|u| (u.input, u.output)), Some((162, 42)));
        // With usage in OpenAI's names (a compatible gateway), the fast path hands it on.
        let body = json!({"model": "c", "content": [{"type": "text", "text": "hi"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
        assert_eq!(summarize_body(body.to_string().as_bytes()).content, "hi");
    }

    /// A refusal is the answer: read from a whole body (chat, Responses API) and from stream
    /// deltas, where its first piece is the first token.
    #[test]
    fn refusals_are_read_whole_and_streamed() {
        let body = json!({"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "I cannot help with that."}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(
            (s.content.as_str(), s.refusal.as_str()),
            ("", "I cannot help with that.")
        );
        let body = json!({"output": [{"type": "message", "content": [
            {"type": "refusal", "refusal": "No."}]}], "status": "completed"});
        assert_eq!(summarize_body(body.to_string().as_bytes()).refusal, "No.");

        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""}}]}"#);
        assert!(!acc.saw_output());
        acc.push_data(br#"{"choices":[{"index":0,"delta":{"refusal":"I cannot "}}]}"#);
        assert!(
            acc.saw_output(),
            "the refusal's first piece is the first token"
        );
        acc.push_data(
            br#"{"choices":[{"index":0,"delta":{"refusal":"help."},"finish_reason":"stop"}]}"#,
        );
        let s = acc.into_summary();
        assert_eq!(
            (s.content.as_str(), s.refusal.as_str()),
            ("", "I cannot help.")
        );

        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.refusal.delta","delta":"No"}"#);
        assert!(acc.saw_output());
        assert_eq!(acc.into_summary().refusal, "No");
    }

    /// A Responses API stream whose answer comes only in `response.completed` (no delta
    /// events): its text and reasoning are read from the final `output`, which is then the
    /// first token; the id comes from `response.created`. Text that came as deltas is kept
    /// as it came.
    #[test]
    fn a_responses_stream_answered_only_in_its_last_event() {
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.created","response":{"id":"resp_1","model":"o4","status":"in_progress","output":[]}}"#);
        assert!(!acc.saw_output());
        assert_eq!(acc.summary().id.as_deref(), Some("resp_1"));
        let completed =
            json!({"type": "response.completed", "response": {"id": "resp_1", "model": "o4",
            "status": "completed", "output": [
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
                {"type": "message", "content": [{"type": "output_text", "text": "Final text"}]}],
            "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}}})
            .to_string();
        acc.push_data(completed.as_bytes());
        assert!(acc.saw_output() && acc.saw_end());
        let s = acc.into_summary();
        assert_eq!(
            (s.content.as_str(), s.reasoning.as_str()),
            ("Final text", "why")
        );
        assert_eq!(s.id.as_deref(), Some("resp_1"));
        assert_eq!(s.finish_reason.as_deref(), Some("completed"));
        assert_eq!(s.usage.map(|u| u.total), Some(8));

        // Deltas came: they stay; the reasoning only the last event had is added.
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"response.output_text.delta","delta":"Fin"}"#);
        acc.push_data(completed.as_bytes());
        let s = acc.into_summary();
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("Fin", "why"));
        assert_eq!(s.id.as_deref(), Some("resp_1"), "from response.completed");
    }

    /// OpenAI's speech event stream: the audio is counted, never kept; `speech.audio.done`
    /// (there is no `[DONE]`) ends it with its usage. An error event in it is read as in any
    /// stream.
    #[test]
    fn a_speech_stream_is_counted_and_ends_with_its_done_event() {
        let mut acc = StreamAccumulator::default();
        // "AAAA" decodes to 3 bytes, "AAE=" to 2, "AA\/A" (a slash JSON-escaped) to 3.
        for audio in ["AAAA", "AAE=", r"AA\/A"] {
            let event = format!(r#"{{"type":"speech.audio.delta","audio":"{audio}"}}"#);
            assert_eq!(acc.push_data(event.as_bytes()), EventKind::Other);
        }
        assert!(acc.saw_output() && !acc.saw_end());
        assert_eq!(acc.summary().content, "", "no audio in the text");
        acc.push_data(br#"{"type":"speech.audio.done","usage":{"input_tokens":3,"output_tokens":9,"total_tokens":12}}"#);
        assert!(acc.saw_end());
        let s = acc.into_summary();
        assert_eq!(s.content, "<speech audio, 8 bytes in 3 deltas>");
        let usage = s.usage.expect("usage");
        assert_eq!((usage.input, usage.output, usage.total), (3, 9, 12));

        // Cut before its end: no usage, not ended; an error event is the upstream's error.
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"speech.audio.delta","audio":"AAAA"}"#);
        acc.push_data(br#"{"type":"error","error":{"message":"tts failed"}}"#);
        assert!(!acc.saw_end());
        let s = acc.into_summary();
        assert_eq!(s.content, "<speech audio, 3 bytes in 1 delta>");
        assert_eq!(s.error.as_deref(), Some("tts failed"));
        assert!(s.usage.is_none());
    }

    /// OpenAI's transcription event stream: the text deltas are the content, and
    /// `transcript.text.done` ends it with its usage (and its whole text, when no delta came).
    /// An image stream's record content is a note of its completed images and their
    /// decoded size; one cut before any completed says what partial images it had. The
    /// base64 is never kept, and the completed event's usage is read.
    #[test]
    fn an_image_stream_is_a_note_of_its_images() {
        let event = |kind: &str, b64: &str| {
            json!({"type": kind, "b64_json": b64, "usage": {"input_tokens": 3,
                "output_tokens": 9, "total_tokens": 12}})
            .to_string()
        };
        let mut acc = StreamAccumulator::default();
        for kind in ["image_edit.partial_image", "image_edit.partial_image"] {
            acc.push_data(event(kind, &"AAAA".repeat(100_000)).as_bytes());
        }
        acc.push_data(event("image_edit.completed", &"AAAA".repeat(500_000)).as_bytes());
        let summary = acc.into_summary();
        assert_eq!(summary.content, "<1 image (b64_json, 1.5 MB)>");
        assert_eq!(summary.usage.map(|u| u.total), Some(12));

        let mut cut = StreamAccumulator::default();
        for kind in [
            "image_generation.partial_image",
            "image_generation.partial_image",
        ] {
            cut.push_data(event(kind, &"AAAA".repeat(50)).as_bytes());
        }
        assert_eq!(
            cut.into_summary().content,
            "<no image completed; 2 partial images (b64_json, 300 bytes)>"
        );
    }

    #[test]
    fn a_transcription_stream_assembles_its_text_and_usage() {
        let done = br#"{"type":"transcript.text.done","text":"Hello world","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":4,"total_tokens":18}}"#;
        let mut acc = StreamAccumulator::default();
        acc.push_data(br#"{"type":"transcript.text.delta","delta":"Hello","logprobs":[]}"#);
        assert!(acc.saw_output());
        acc.push_data(br#"{"type":"transcript.text.delta","delta":" world"}"#);
        acc.push_data(done);
        assert!(acc.saw_end());
        let s = acc.into_summary();
        assert_eq!(s.content, "Hello world");
        assert_eq!(
            s.usage.map(|u| (u.input, u.output, u.total)),
            Some((14, 4, 18))
        );

        let mut acc = StreamAccumulator::default();
        acc.push_data(done);
        assert!(acc.saw_output() && acc.saw_end());
        assert_eq!(acc.into_summary().content, "Hello world", "from done alone");
    }

    /// Embeddings: a note of how many and how long, never the vectors (numbers or base64);
    /// their `prompt_tokens` / `total_tokens` are the usage. The note stands for the body.
    #[test]
    fn embeddings_are_a_note_of_their_count_and_dimensions() {
        let body = json!({"object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 3e-5]},
                     {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(s.content, "<2 embeddings, 3 dimensions>");
        assert!(s.body_noted);
        assert_eq!(s.model.as_deref(), Some("text-embedding-3-small"));
        let u = s.usage.expect("usage");
        assert_eq!((u.input, u.output, u.total), (8, 0, 8));

        // base64: 4 float32s are 16 bytes, 24 base64 characters (one JSON-escaped `/`).
        let b64 = json!({"data": [{"embedding": "AAAAAAAAAAAAAAAAAAA/AAAA"}]}).to_string();
        assert_eq!(
            summarize_body(b64.replace('/', "\\/").as_bytes()).content,
            "<1 embedding, 4 dimensions, base64>"
        );
        let empty = json!({"data": [{"embedding": []}]}).to_string();
        assert_eq!(
            summarize_body(empty.as_bytes()).content,
            "<1 embedding, 0 dimensions>"
        );
    }

    /// Images: a note of how many, and for base64 ones their decoded size, never the base64;
    /// URLs and revised prompts are kept. gpt-image-1's usage is read.
    #[test]
    fn images_are_a_note_with_their_urls_and_revised_prompts() {
        let body = json!({"created": 1, "data": [
                {"b64_json": "A".repeat(1_600_000), "revised_prompt": "a red cat"},
                {"b64_json": "AAAA"}],
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                "input_tokens_details": {"text_tokens": 40, "image_tokens": 10}}});
        let s = summarize_body(body.to_string().as_bytes());
        assert_eq!(
            s.content,
            "<2 images (b64_json, 1.2 MB)>\nimage 1 revised prompt: a red cat"
        );
        assert!(s.body_noted);
        let u = s.usage.expect("usage");
        assert_eq!((u.input, u.output, u.total), (50, 4160, 4210));

        let urls = json!({"created": 1, "data": [
            {"url": "https://img.example/1.png", "revised_prompt": "a cat"},
            {"url": "https://img.example/2.png"}]});
        let s = summarize_body(urls.to_string().as_bytes());
        assert_eq!(
            s.content,
            "<2 images (url)>\nimage 1: https://img.example/1.png\nimage 1 revised prompt: a cat\nimage 2: https://img.example/2.png"
        );
        assert!(!s.body_noted, "a few URLs: the body is small");
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(34_500), "34.5 kB");
    }

    /// A transcription's (or translation's) `text` is the content, in `json` and
    /// `verbose_json` alike; its usage in tokens or in seconds is read.
    #[test]
    fn a_transcription_body_has_its_text_and_usage() {
        let tokens = json!({"text": "Hello world", "usage": {"type": "tokens",
            "input_tokens": 14, "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
            "output_tokens": 4, "total_tokens": 18}});
        let s = summarize_body(tokens.to_string().as_bytes());
        assert_eq!(s.content, "Hello world");
        assert!(!s.body_noted);
        let u = s.usage.expect("usage");
        assert_eq!(
            (u.input, u.output, u.total, u.audio_seconds),
            (14, 4, 18, None)
        );

        let verbose = json!({"task": "transcribe", "language": "english", "duration": 8.47,
            "text": "The beach was a popular spot.", "segments": [{"id": 0, "start": 0.0,
            "end": 3.3, "text": "The beach was a popular spot.", "tokens": [50364, 440]}],
            "usage": {"type": "duration", "seconds": 9}});
        let s = summarize_body(verbose.to_string().as_bytes());
        assert_eq!(s.content, "The beach was a popular spot.");
        let u = s.usage.expect("a duration is usage");
        assert_eq!(
            (u.input, u.output, u.total, u.audio_seconds),
            (0, 0, 0, Some(9.0))
        );
        // A fraction is kept, and written with it; a whole number is written without one.
        let fraction = json!({"text": "f", "usage": {"type": "duration", "seconds": 9.7}});
        let u = summarize_body(fraction.to_string().as_bytes())
            .usage
            .expect("usage");
        assert_eq!(u.audio_seconds, Some(9.7));
        assert_eq!(
            serde_json::to_value(&u).expect("json")["audio_seconds"],
            json!(9.7)
        );
        let whole = Usage {
            audio_seconds: Some(9.0),
            ..Usage::default()
        };
        assert_eq!(
            serde_json::to_string(&whole)
                .expect("json")
                .matches("\"audio_seconds\":9}")
                .count(),
            1
        );
        assert_eq!(seconds_number(0.1 + 0.2).to_string(), "0.3");
    }

    /// Moderations: whether each input was flagged and for what, not the scores.
    #[test]
    fn moderations_are_a_note_of_what_was_flagged() {
        let result = |flagged: bool, categories: Value| {
            json!({"flagged": flagged, "categories": categories,
                "category_scores": {"violence": 0.9, "harassment": 0.1}})
        };
        let one =
            |r: Value| json!({"id": "modr-1", "model": "omni-moderation-latest", "results": [r]});
        let cases = [
            (
                one(result(false, json!({"violence": false}))),
                "<moderation: not flagged>",
            ),
            (
                one(result(
                    true,
                    json!({"violence": true, "harassment/threatening": true, "sexual": false}),
                )),
                "<moderation: flagged (harassment/threatening, violence)>",
            ),
            (
                json!({"results": [result(true, json!({"violence": true})),
                    result(false, json!({"violence": false})),
                    result(true, json!({"violence": true, "hate": true}))]}),
                "<moderation of 3 inputs: 2 flagged (hate, violence)>",
            ),
            (
                json!({"results": [result(false, json!({})), result(false, json!({}))]}),
                "<moderation of 2 inputs: none flagged>",
            ),
        ];
        for (body, note) in cases {
            let s = summarize_body(body.to_string().as_bytes());
            assert_eq!(s.content, note, "{body}");
            assert!(!s.body_noted);
        }
    }

    /// A JSON answer of no known shape: a note of its top-level keys, never their values
    /// (bounded in number and length); none for an error under a 200.
    #[test]
    fn an_unknown_answer_is_a_note_of_its_keys() {
        let rerank = json!({"id": "r1", "results": [{"index": 0, "relevance_score": 0.9}],
            "usage": {"total_tokens": 5}});
        let s = summarize_body(rerank.to_string().as_bytes());
        assert_eq!(s.content, "<JSON answer with keys: id, results, usage>");
        assert_eq!(s.usage.map(|u| u.total), Some(5));
        // In the body's order.
        let secret = br#"{"object":"realtime.session","client_secret":{"value":"ek_abc123secret"},"id":"sess_1"}"#;
        let s = summarize_body(secret);
        assert_eq!(
            s.content,
            "<JSON answer with keys: object, client_secret, id>"
        );
        assert!(!s.content.contains("ek_abc"));
        let mut many = serde_json::Map::new();
        for i in 0..20 {
            many.insert(format!("k{i:02}{}", "x".repeat(100)), json!(i));
        }
        let s = summarize_body(Value::Object(many).to_string().as_bytes());
        assert!(s.content.ends_with(", ...>"), "{}", s.content);
        assert!(s.content.len() < 16 * 70 + 40, "{}", s.content.len());
        assert_eq!(
            summarize_body(b"{}").content,
            "<JSON answer: an empty object>"
        );
        let error = summarize_body(br#"{"error": {"message": "boom"}}"#);
        assert_eq!(
            (error.content.as_str(), error.error.as_deref()),
            ("", Some("boom"))
        );
        // An empty `data` list is no known shape.
        let s = summarize_body(br#"{"object":"list","data":[]}"#);
        assert_eq!(s.content, "<JSON answer with keys: object, data>");
        assert!(!s.body_noted);
    }

    /// A cost no request can have (`1e300`, beyond [`MAX_COST`]) is unknown, as a negative
    /// one is, on both paths, and the tokens are kept: it was stored as is, printed as a
    /// 300-digit cell, and two of them summed to an infinite total.
    #[test]
    fn an_implausible_cost_is_unknown_and_the_tokens_stay() {
        for cost in [
            json!(1e300),
            json!(1.7e308),
            json!(-0.5),
            json!(1_000_000.5),
        ] {
            let usage = json!({"prompt_tokens": 3, "completion_tokens": 4, "cost": cost});
            let lenient = Usage::from_json(&usage).expect("usage");
            assert_eq!(
                (lenient.input, lenient.output, lenient.cost),
                (3, 4, None),
                "{cost}"
            );
            let body = json!({"model": "m", "choices": [], "usage": usage}).to_string();
            let fast = serde_json::from_slice::<FastBody<'_>>(body.as_bytes())
                .ok()
                .and_then(|fast| fast.into_summary(&mut Gather::whole()))
                .and_then(|summary| summary.usage)
                .expect("the fast path reads it");
            assert_eq!((fast.input, fast.output, fast.cost), (3, 4, None), "{cost}");
        }
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 4, "cost": 1_000_000});
        assert_eq!(
            Usage::from_json(&usage).and_then(|u| u.cost),
            Some(MAX_COST)
        );
    }

    #[test]
    fn the_fast_path_agrees_with_the_lenient_one() {
        let bodies = [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi \"there\"", "reasoning_content": "r",
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 2}, "cost": 0.5}}),
            json!({"choices": [{"text": "completion", "finish_reason": "length"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
            json!({"model": "m", "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}], "usage": {"prompt_tokens": 1, "prompt_cache_hit_tokens": 1}}),
            json!({"model": "m", "choices": [], "usage": null}),
            json!({"model": "m", "choices": [{"message": {"content": null, "reasoning": "only"}}]}),
            json!({"model": "m", "choices": [{"message": {"content": null, "refusal": "no"}}]}),
            json!({"model": "m", "choices": [{"message": {"content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "t"}]}, "skipped",
                {"type": "text", "text": "a"}]}}]}),
            json!({"model": "m", "choices": [{"finish_reason": "function_call", "message": {
                "content": null, "function_call": {"name": "f", "arguments": "{}"}}}]}),
            json!({"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {
                "content": null, "tool_calls": [{"id": "c", "type": "custom",
                "custom": {"name": "code_exec", "input": "print(1)"}}]}}]}),
            json!({"model": "m", "choices": [{"message": {"content": {"type": "text", "text": "a"}}}]}),
        ];
        for body in bodies {
            let text = body.to_string();
            let fast = serde_json::from_slice::<FastBody<'_>>(text.as_bytes())
                .ok()
                .and_then(|fast| fast.into_summary(&mut Gather::whole()))
                .expect("the fast path takes these");
            assert_eq!(
                Some(fast),
                summarize_leniently(text.as_bytes(), &mut Gather::whole()),
                "{text}"
            );
        }
        // Vendor shapes are left to the lenient path, and still read.
        let vendor =
            json!({"usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 5}})
                .to_string();
        assert!(
            serde_json::from_slice::<FastBody<'_>>(vendor.as_bytes())
                .ok()
                .and_then(|fast| fast.into_summary(&mut Gather::whole()))
                .is_none()
        );
        assert_eq!(
            summarize_body(vendor.as_bytes()).usage.map(|u| u.input),
            Some(6)
        );
        // So are answers with no `choices` and no `data` (transcriptions, moderations, ...).
        let transcription =
            json!({"text": "hi", "usage": {"type": "duration", "seconds": 3}}).to_string();
        assert!(
            serde_json::from_slice::<FastBody<'_>>(transcription.as_bytes())
                .ok()
                .and_then(|fast| fast.into_summary(&mut Gather::whole()))
                .is_none()
        );
        assert_eq!(
            summarize_body(transcription.as_bytes())
                .usage
                .and_then(|u| u.audio_seconds),
            Some(3.0)
        );
        let odd = json!({"model": 42, "choices": [{"message": {"content": "x"}}]}).to_string();
        assert_eq!(summarize_body(odd.as_bytes()).content, "x");
    }

    /// Embeddings and images are read in the fast path's one pass over the body (a big
    /// embeddings answer was read three times: the fast pass, the lenient one, and its `data`
    /// once more), with the same result as the lenient path, which still reads what the fast
    /// one leaves to it.
    #[test]
    fn embeddings_and_images_are_read_in_one_pass_as_the_lenient_path_reads_them() {
        let fast = |text: &str| {
            std::str::from_utf8(text.as_bytes())
                .ok()
                .and_then(|t| serde_json::from_str::<FastBody<'_>>(t).ok())
                .and_then(|fast| fast.into_summary(&mut Gather::whole()))
        };
        let one_pass = [
            json!({"object": "list", "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 3e-5]},
                         {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]}],
                "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
            json!({"id": "e", "data": [{"embedding": "AAAAAAAAAAAAAAAAAAA/AAAA"}]}),
            json!({"data": [{"embedding": []}], "usage": null}),
            json!({"data": [{"embedding": [ 1 , 2 ]}, {"embedding": null}], "error": null}),
            json!({"created": 1, "data": [{"b64_json": "iVBORw0K", "revised_prompt": "a cat"},
                {"b64_json": "AAAA"}], "usage": {"prompt_tokens": 2}}),
            json!({"created": 1, "data": [{"url": "https://img.example/1.png"},
                {"url": "https://img.example/2.png", "revised_prompt": "two"}]}),
            json!({"data": [{"b64_json": "AAAA"}], "usage": {"total_tokens": 4, "cost": 0.25}}),
        ];
        for body in one_pass {
            let text = body.to_string();
            let read = fast(&text).unwrap_or_else(|| panic!("one pass: {text}"));
            assert!(read.body_noted || read.content.contains("(url)"), "{text}");
            assert_eq!(
                Some(&read),
                summarize_leniently(text.as_bytes(), &mut Gather::whole()).as_ref(),
                "{text}"
            );
            assert_eq!(read, summarize_body(text.as_bytes()), "{text}");
        }
        // Left to the lenient path, and read there as before.
        let lenient = [
            // gpt-image-1's usage in input/output tokens.
            json!({"data": [{"b64_json": "AAAA"}], "usage": {"input_tokens": 5, "output_tokens": 9}}),
            json!({"text": "hi", "data": [{"embedding": [1]}]}),
            json!({"data": [{"object": "model", "id": "m"}]}),
            json!({"data": {"embedding": [1]}}),
            json!({"data": [1, 2]}),
            json!({"data": [{"embedding": [1]}], "error": {"message": "half"}}),
            json!({"model": 3, "data": [{"embedding": [1]}]}),
        ];
        for body in lenient {
            let text = body.to_string();
            assert_eq!(fast(&text), None, "{text}");
            assert_eq!(
                Some(summarize_body(text.as_bytes())),
                summarize_leniently(text.as_bytes(), &mut Gather::whole()),
                "{text}"
            );
        }
        assert_eq!(
            summarize_body(br#"{"data": [{"b64_json": "AAAA"}], "usage": {"input_tokens": 5, "output_tokens": 9}}"#)
                .usage
                .map(|u| u.total),
            Some(14)
        );
    }

    /// `null` means the upstream did not say: a count sent as `null` reads exactly as one left
    /// out, on the fast path, the lenient one (a vendor field sends a body there) and in a
    /// stream. No count at all is no usage (unknown, not zero).
    #[test]
    fn a_null_count_reads_as_a_missing_one() {
        let pairs = [
            (
                json!({"prompt_tokens": null, "completion_tokens": null, "total_tokens": null}),
                json!({}),
            ),
            (
                json!({"prompt_tokens": null, "completion_tokens": 5, "total_tokens": null}),
                json!({"completion_tokens": 5}),
            ),
            (
                json!({"prompt_tokens": 7, "completion_tokens": null, "cost": null,
                    "prompt_tokens_details": {"cached_tokens": null},
                    "completion_tokens_details": null}),
                json!({"prompt_tokens": 7}),
            ),
            (
                json!({"input_tokens": null, "output_tokens": 3, "cache_read_input_tokens": null}),
                json!({"output_tokens": 3}),
            ),
        ];
        for (with_null, without) in pairs {
            let summary = |usage: &Value| {
                let body = json!({"model": "m", "choices": [{"message": {"content": "x"}}], "usage": usage});
                let text = body.to_string();
                let fast = serde_json::from_str::<FastBody<'_>>(&text)
                    .ok()
                    .and_then(|fast| fast.into_summary(&mut Gather::whole()))
                    .map(|s| s.usage);
                let lenient =
                    summarize_leniently(text.as_bytes(), &mut Gather::whole()).map(|s| s.usage);
                let mut stream = StreamAccumulator::default();
                stream.push_data(
                    json!({"choices": [], "usage": usage})
                        .to_string()
                        .as_bytes(),
                );
                (fast, lenient, stream.into_summary().usage)
            };
            let (fast, lenient, streamed) = summary(&with_null);
            assert_eq!(
                (&fast, &lenient, &streamed),
                (
                    &summary(&without).0,
                    &summary(&without).1,
                    &summary(&without).2
                ),
                "{with_null}"
            );
            if let Some(fast) = &fast {
                assert_eq!(Some(fast), lenient.as_ref(), "{with_null}");
            }
            assert_eq!(lenient.flatten(), streamed, "{with_null}");
        }
        let none = json!({"prompt_tokens": null, "completion_tokens": null, "total_tokens": null});
        assert_eq!(Usage::from_json(&none), None, "no count at all: no usage");
    }

    proptest! {
        #[test]
        fn fast_and_lenient_agree_on_generated_bodies(
            content in ".{0,40}",
            prompt in 0u64..100_000,
            completion in proptest::option::of(0u64..100_000),
            cached in proptest::option::of(0u64..100),
            reasoning in proptest::option::of(0u64..100),
        ) {
            let mut usage = json!({"prompt_tokens": prompt});
            if let Some(c) = completion { usage["completion_tokens"] = json!(c); }
            if let Some(c) = cached { usage["prompt_tokens_details"] = json!({"cached_tokens": c}); }
            if let Some(r) = reasoning { usage["completion_tokens_details"] = json!({"reasoning_tokens": r}); }
            let body = json!({"id": "x", "model": "m", "choices": [{"message": {"content": content}, "finish_reason": "stop"}], "usage": usage}).to_string();
            prop_assert_eq!(Some(summarize_body(body.as_bytes())), summarize_leniently(body.as_bytes(), &mut Gather::whole()));
        }

        /// Generated embeddings answers (numbers or base64, any count and length) read the
        /// same in the fast path's one pass as on the lenient path.
        #[test]
        fn embeddings_read_the_same_in_one_pass(
            n in 1usize..5,
            dims in 0usize..40,
            base64 in any::<bool>(),
            prompt in proptest::option::of(0u64..1000),
        ) {
            let vector = if base64 {
                json!("A".repeat(dims * 4))
            } else {
                json!((0..dims).map(|i| i as f64 * 0.25 - 1.0).collect::<Vec<_>>())
            };
            let data: Vec<Value> = (0..n).map(|i| json!({"index": i, "embedding": vector})).collect();
            let mut body = json!({"object": "list", "model": "e", "data": data});
            if let Some(p) = prompt {
                body["usage"] = json!({"prompt_tokens": p, "total_tokens": p});
            }
            let text = body.to_string();
            let fast = serde_json::from_str::<FastBody<'_>>(&text)
                .ok()
                .and_then(|fast| fast.into_summary(&mut Gather::whole()));
            prop_assert!(fast.is_some());
            prop_assert_eq!(fast, summarize_leniently(text.as_bytes(), &mut Gather::whole()));
        }

        /// Whichever counts are numbers, `null` or left out: the fast path agrees with the
        /// lenient one, and a `null` reads as left out, in a whole body and in a stream.
        #[test]
        fn null_and_missing_counts_agree_on_every_path(
            kinds in proptest::collection::vec(0u8..3, 7),
        ) {
            const NAMES: [&str; 7] = [
                "prompt_tokens", "completion_tokens", "total_tokens", "input_tokens",
                "output_tokens", "cache_read_input_tokens", "prompt_cache_hit_tokens",
            ];
            let mut with_nulls = serde_json::Map::new();
            let mut without = serde_json::Map::new();
            for (i, (name, kind)) in NAMES.iter().zip(&kinds).enumerate() {
                match kind {
                    0 => {}
                    1 => { with_nulls.insert((*name).to_owned(), Value::Null); }
                    _ => {
                        with_nulls.insert((*name).to_owned(), json!(10 * (i + 1)));
                        without.insert((*name).to_owned(), json!(10 * (i + 1)));
                    }
                }
            }
            let body = |usage: &serde_json::Map<String, Value>| {
                json!({"model": "m", "choices": [{"message": {"content": "x"}}], "usage": usage})
                    .to_string()
            };
            let streamed = |usage: &serde_json::Map<String, Value>| {
                let mut acc = StreamAccumulator::default();
                acc.push_data(json!({"choices": [], "usage": usage}).to_string().as_bytes());
                acc.into_summary().usage
            };
            let (a, b) = (body(&with_nulls), body(&without));
            let whole = summarize_body(a.as_bytes());
            prop_assert_eq!(Some(whole.clone()), summarize_leniently(a.as_bytes(), &mut Gather::whole()));
            prop_assert_eq!(&whole, &summarize_body(b.as_bytes()));
            prop_assert_eq!(&whole.usage, &streamed(&with_nulls));
            prop_assert_eq!(streamed(&with_nulls), streamed(&without));
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut acc = StreamAccumulator::default();
            let _ = acc.push_data(&data);
            let _ = summarize_body(&data);
        }

        #[test]
        fn huge_counts_are_unknown_usage_without_overflowing(p in (MAX_COUNT + 1)..=u64::MAX, c in 0u64..100) {
            let body = json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}}).to_string();
            prop_assert_eq!(summarize_body(body.as_bytes()).usage, None);
            let vendor = json!({"usage": {"input_tokens": p, "cache_read_input_tokens": p, "cache_creation_input_tokens": c}}).to_string();
            prop_assert_eq!(summarize_body(vendor.as_bytes()).usage, None);
            // Counts within the bound whose sum is beyond it: no overflow, unknown too.
            let sum = json!({"usage": {"input_tokens": MAX_COUNT, "cache_read_input_tokens": MAX_COUNT, "output_tokens": c}}).to_string();
            prop_assert_eq!(summarize_body(sum.as_bytes()).usage, None);
        }

        #[test]
        fn usage_parser_takes_any_numbers(p in 0u64..1_000_000, c in 0u64..1_000_000) {
            let u = Usage::from_json(&json!({"prompt_tokens": p, "completion_tokens": c})).expect("usage");
            prop_assert_eq!(u.total, p + c);
        }
    }
}

//! The generation view of one record: what Langfuse (and any OTLP backend) is told about a
//! request — input messages and tools, output message, model parameters, usage in Langfuse's
//! keys, level and status — as redacted, size-capped strings ready to become span attributes.
//!
//! Pure: no I/O, no clock. The request body is read here (top level only, values kept as raw
//! JSON text), off the request path; the proxy never parses it for this.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::proxy::body::JsonKey;
use crate::record::{Outcome, RequestRecord};
use crate::sinks::redact::{Redactor, RequestRedactor};
use crate::usage::{ResponseSummary, ToolCall, Usage};

/// The trace and generation name, as the Python version's traces were named.
pub const GENERATION_NAME: &str = "OpenAI-generation";

/// Appended to an input or output cut to fit the per-span cap.
pub const TRUNCATION_MARKER: &str = "…[truncated by llmsrouter]";

/// Longest status message kept (an upstream may answer with a whole HTML page).
const MAX_STATUS_MESSAGE: usize = 4096;

/// A model parameter whose raw JSON is longer than this is replaced by a short note.
const MAX_PARAMETER_BYTES: usize = 2048;

/// Longest text of any span attribute but input, output and the model parameters (a model
/// name, a user id, a response id, the metadata's requested model, a stop sequence list):
/// each comes from a client or an upstream, and one request's 2 MB model name made a span,
/// and with it a whole export batch of other users' spans, too big for the endpoint (Langfuse
/// Cloud refuses more than 5 MB, and such a refusal is not retried). A longer text is cut
/// and ends with [`TRUNCATION_MARKER`].
pub const MAX_ATTRIBUTE_BYTES: usize = 2048;

/// Longest `model.parameters` JSON: each value is cut at [`MAX_PARAMETER_BYTES`], and a
/// request with thousands of keys still gives a bounded object (the rest counted under
/// [`OMITTED_PARAMETERS_KEY`]).
const MAX_PARAMETERS_BYTES: usize = 8192;

/// The key under which `model.parameters` counts the parameters left out to fit
/// [`MAX_PARAMETERS_BYTES`].
pub const OMITTED_PARAMETERS_KEY: &str = "[omitted by llmsrouter]";

/// Top-level request keys that are content or plumbing, not model parameters.
const NOT_PARAMETERS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "functions",
    "prompt",
    "input",
    "instructions",
    "system",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "prediction",
];

/// Langfuse's observation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Default,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
        }
    }
}

/// A `gen_ai.request.*` value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Strings(Vec<String>),
}

/// Everything the span says beyond the record's plain fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// `gen_ai.operation.name`: `chat`, `text_completion`, `embeddings`, ...
    pub operation: Cow<'static, str>,
    /// The model to show and price: the upstream's responded model, else the name sent up;
    /// redacted and cut to [`MAX_ATTRIBUTE_BYTES`].
    pub model: String,
    /// JSON: the messages, or `{"tools": .., "messages": ..}` when tools were offered.
    pub input: Option<String>,
    /// JSON: the assistant message (content, reasoning, tool calls; a whole text answer as
    /// its content; a note for embeddings, images, moderations), or the upstream's error
    /// body.
    pub output: Option<String>,
    /// JSON object of the request's model parameters (temperature, max_tokens, ...).
    pub parameters: Option<String>,
    /// The well-known parameters as `(gen_ai.request.<name>, value)`.
    pub request_attributes: Vec<(&'static str, ParamValue)>,
    /// JSON object in Langfuse's usage keys.
    pub usage_details: Option<String>,
    /// JSON object of USD amounts, only when the upstream reported a cost.
    pub cost_details: Option<String>,
    pub level: Level,
    pub status_message: Option<String>,
    /// Who the client says the end user is: OpenAI's `user` field, else Anthropic's
    /// `metadata.user_id` (Claude Code sends one); redacted and bounded.
    pub client_user: Option<String>,
    /// The client's `metadata.session_id`, which groups traces into a Langfuse session;
    /// redacted and bounded.
    pub session_id: Option<String>,
}

/// Builds the generation view of `record`. Input plus output are cut to `max_io_bytes`
/// together; every string that came from the request or the upstream is redacted.
/// Input and output of a record whose bodies were left out (a JSON string, as Langfuse
/// shows it), the request log's `"bodies": "left out: ..."` in Langfuse's terms.
pub const BODIES_LEFT_OUT: &str =
    "\"[left out by llmsrouter: telemetry was too far behind to hold this request's bodies]\"";

pub fn build(record: &RequestRecord, redactor: &Redactor, max_io_bytes: usize) -> Generation {
    build_with(record, &redactor.for_record(&record.secrets), max_io_bytes)
}

/// [`build`] with the record's redaction already prepared.
pub fn build_with(
    record: &RequestRecord,
    redactor: &RequestRedactor<'_>,
    max_io_bytes: usize,
) -> Generation {
    let request = match &record.request_layout {
        Some(layout) => RequestFields::from_layout(&record.request_body, layout)
            .or_else(|| RequestFields::parse(&record.request_body)),
        None => RequestFields::parse(&record.request_body),
    };
    let form = record.request_is_form;
    // Borrowed from the request body as far as it can be, and copied only once cut to
    // `max_io_bytes`: a 20 MiB prompt (a base64 image) is not held a second time whole.
    let input_text = |limit: usize, elide: bool| {
        if form {
            // The form's description is the whole input: its text fields (a prompt, a
            // language) and an outline of each file.
            std::str::from_utf8(&record.request_body)
                .ok()
                .filter(|body| !body.is_empty())
                .map(|body| prefix(body, limit))
        } else {
            request.as_ref().and_then(|r| r.input(limit, elide))
        }
    };
    let output = output_of(record, max_io_bytes).map(|s| redactor.redact_owned(s));
    // An input that would be cut (screenshots a coding agent sent, each a base64 image of
    // hundreds of KiB) is read again with the images' base64 left out: else the cut kept
    // the first images and lost every message after them, the newest question among them.
    let room = max_io_bytes.saturating_add(REDACTION_ROOM);
    let output_len = output.as_ref().map_or(0, String::len);
    let mut elide = false;
    let mut read = input_text(room, elide);
    if let Some((_, whole)) = &read {
        if whole.saturating_add(output_len) > max_io_bytes && !form {
            elide = true;
            read = input_text(room, elide);
        }
    }
    let input = read.map(|(text, whole)| {
        let read = text.len();
        let redacted = redacted_cow(redactor, text);
        if read < whole && read - redacted.len().min(read) > REDACTION_ROOM / 2 {
            // Keys by the thousand in the prompt: read whole, as the cut may need more.
            let (text, _) = input_text(usize::MAX, elide).unwrap_or_default();
            return redacted_cow(redactor, text);
        }
        redacted
    });
    let (input, output) = if record.bodies_dropped {
        // Left out to bound memory (see `record::BODY_BUDGET`): said so, rather than an empty
        // prompt and an empty answer that read as what the model was sent and said.
        (
            Some(BODIES_LEFT_OUT.to_owned()),
            Some(BODIES_LEFT_OUT.to_owned()),
        )
    } else {
        fit_io(input, output, max_io_bytes)
    };
    let parameters = request
        .as_ref()
        .and_then(|r| r.parameters(form))
        .map(|s| redactor.redact_owned(s));
    let request_attributes = request
        .as_ref()
        .map(|r| r.request_attributes(form))
        .unwrap_or_default();
    let usage = record.response.usage.as_ref();
    let (level, status_message) = level_of(record);
    let fields = request.as_ref().filter(|_| !form);
    let shown = |text: String| bounded(redactor.redact_owned(text));
    let client_user = fields.and_then(|r| r.client_user()).map(shown);
    let session_id = fields.and_then(|r| r.session_id()).map(shown);
    Generation {
        // A custom operation is the path, which may hold a key (`/threads/<key>/runs`).
        operation: bounded_cow(match operation_of(&record.endpoint) {
            Cow::Owned(path) => Cow::Owned(redactor.redact_path(&path).into_owned()),
            known => known,
        }),
        model: bounded(
            redactor.redact_owned(
                record
                    .response
                    .model
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| record.upstream_model.clone()),
            ),
        ),
        input,
        output,
        parameters,
        request_attributes,
        usage_details: usage.map(usage_details),
        cost_details: usage.and_then(|u| u.cost).map(cost_details),
        level,
        status_message: status_message
            .map(|m| clip(&redactor.redact(&m), MAX_STATUS_MESSAGE).into_owned()),
        client_user,
        session_id,
    }
}

/// The request body's top level in order, keys borrowed from the body where they can be,
/// values as raw JSON text. A request has a dozen keys at most: a list beats a hash map.
struct RequestFields<'a> {
    fields: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'de> Deserialize<'de> for RequestFields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RequestFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<JsonKey<'de>>()? {
                    fields.push((key.0, map.next_value::<&'de RawValue>()?.get()));
                }
                Ok(RequestFields { fields })
            }
        }
        d.deserialize_map(Fields)
    }
}

/// A name a client gave (its end user, its session) as a span shows it: without control
/// characters (a NUL a store may refuse, a line break that splits it), invisible ones (a
/// zero-width space, a direction override: see [`crate::hidden`]) and the white space around
/// it; `None` when nothing is left. Cleaned before redaction: taken out after it, they could
/// join the halves of a key into one, and left in, they hid a key from it while it showed
/// whole.
fn identity(text: &str) -> Option<String> {
    let clean: String = text.chars().filter(|c| !crate::hidden(*c)).collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| clean.to_owned())
}

impl<'a> RequestFields<'a> {
    fn parse(body: &'a [u8]) -> Option<Self> {
        // One UTF-8 check of the whole body, not one per key and raw value (see
        // `proxy::body::top_level_members`). The proxy parsed this body: it is valid JSON.
        serde_json::from_str(std::str::from_utf8(body).ok()?).ok()
    }

    /// The fields at the places the proxy found them when it read the body: no second
    /// parse. `None` (then [`Self::parse`]) if a range does not fit the body.
    fn from_layout(body: &'a [u8], layout: &crate::record::BodyLayout) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let at = |r: &std::ops::Range<u32>| {
            text.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?)
        };
        let fields = layout
            .iter()
            .map(|(key, value)| Some((Cow::Borrowed(at(key)?), at(value)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { fields })
    }

    /// OpenAI's `user` ("a unique identifier representing your end-user"), else Anthropic's
    /// `metadata.user_id`: a non-blank string, else none.
    fn client_user(&self) -> Option<String> {
        self.text("user").or_else(|| self.metadata_text("user_id"))
    }

    /// `metadata.session_id`: a non-blank string, else none.
    fn session_id(&self) -> Option<String> {
        self.metadata_text("session_id")
    }

    /// The string value of `key`, as [`identity`] shows it, when it is a string.
    fn text(&self, key: &str) -> Option<String> {
        identity(&serde_json::from_str::<String>(self.raw(key)?).ok()?)
    }

    /// The string value of `metadata.<key>`, as [`identity`] shows it, when `metadata` is an
    /// object and it a string.
    fn metadata_text(&self, key: &str) -> Option<String> {
        let metadata: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(self.raw("metadata")?).ok()?;
        match metadata.get(key)? {
            serde_json::Value::String(text) => identity(text),
            _ => None,
        }
    }

    /// The value of `key` (the last one, as JSON parsers do), unless it is `null`.
    fn raw(&self, key: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| *v != "null")
    }

    /// As the Langfuse OpenAI integration shows it: the messages, or, when the request had
    /// more of the prompt beside them, an object with those parts and the messages
    /// (`{"system": .., "tools": .., "messages": ..}`: Anthropic's top-level `system` prompt,
    /// the tools offered); `prompt` for completions; a Responses API request's `input`, with
    /// its `instructions` and `tools` beside it the same way. Those parts are the prompt
    /// (and a system prompt is often many KiB): never model parameters, which are cut at
    /// [`MAX_PARAMETER_BYTES`].
    ///
    /// Its first `limit` bytes (on a character boundary), with the length of the whole.
    ///
    /// With `elide`, each long base64 string in it has its payload replaced by a note (see
    /// [`push_elided`]), and the text is then always a copy.
    fn input(&self, limit: usize, elide: bool) -> Option<(Cow<'a, str>, usize)> {
        if let Some(messages) = self.raw("messages") {
            return Some(self.with_context(
                &["system", "tools", "functions"],
                ("messages", messages),
                limit,
                elide,
            ));
        }
        if let Some(prompt) = self.raw("prompt") {
            return Some(value_prefix(prompt, limit, elide));
        }
        let input = self.raw("input")?;
        Some(self.with_context(&["instructions", "tools"], ("input", input), limit, elide))
    }

    /// `main` as is when the request has none of `context`, else one object of the present
    /// `context` members followed by `main` under `main_key`.
    /// Its first `limit` bytes, with the length of the whole: a prompt of megabytes is
    /// not joined whole to be cut to the span's 1 MiB.
    fn with_context(
        &self,
        context: &[&str],
        (main_key, main): (&str, &'a str),
        limit: usize,
        elide: bool,
    ) -> (Cow<'a, str>, usize) {
        let extras: Vec<(&str, &str)> = context
            .iter()
            .filter_map(|k| self.raw(k).map(|v| (*k, v)))
            .collect();
        if extras.is_empty() {
            return value_prefix(main, limit, elide);
        }
        // Each piece, and whether it is a JSON value (which `elide` reads).
        let mut pieces: Vec<(&str, bool)> = vec![("{", false)];
        for (k, v) in &extras {
            pieces.extend([
                ("\"", false),
                (k, false),
                ("\":", false),
                (v, true),
                (",", false),
            ]);
        }
        pieces.extend([
            ("\"", false),
            (main_key, false),
            ("\":", false),
            (main, true),
            ("}", false),
        ]);
        let mut out =
            String::with_capacity(pieces.iter().map(|p| p.0.len()).sum::<usize>().min(limit));
        let (mut whole, mut cut) = (0, false);
        for (piece, value) in pieces {
            // Once cut, nothing more is kept (a short piece after a character the cut split
            // would fit), but an elided length is still counted.
            let room = if cut { out.len() } else { limit };
            let before = out.len();
            let len = if elide && value {
                push_elided(&mut out, piece, room)
            } else {
                let (kept, len) = prefix(piece, room - out.len());
                out.push_str(&kept);
                len
            };
            whole += len;
            cut |= out.len() - before < len;
        }
        (Cow::Owned(out), whole)
    }

    /// The model parameters: every member that is not content or plumbing. Of a form's
    /// description (`form`), the text fields only: a file's outline (an object, or a list of
    /// them) is input.
    ///
    /// At most about [`MAX_PARAMETERS_BYTES`]: the members that do not fit (a request may
    /// have thousands, or a key of megabytes) are left out and counted, under
    /// [`OMITTED_PARAMETERS_KEY`].
    fn parameters(&self, form: bool) -> Option<String> {
        let mut out = String::with_capacity(128);
        out.push('{');
        let (mut omitted, mut omitted_bytes) = (0usize, 0usize);
        for (key, value) in &self.fields {
            if NOT_PARAMETERS.contains(&key.as_ref()) {
                continue;
            }
            if form && (value.starts_with('{') || value.starts_with("[{")) {
                continue;
            }
            let raw = value.trim();
            let value_len = raw.len().min(MAX_PARAMETER_BYTES);
            // The key is written escaped: at most 6 bytes for each of its bytes.
            if out.len() + key.len() * 6 + value_len + 4 > MAX_PARAMETERS_BYTES {
                omitted += 1;
                omitted_bytes += key.len() + raw.len();
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            push_json_string(&mut out, key);
            out.push(':');
            if raw.len() > MAX_PARAMETER_BYTES {
                let _ = write!(out, "\"[omitted: {} bytes]\"", raw.len());
            } else {
                out.push_str(raw);
            }
        }
        if omitted > 0 {
            if out.len() > 1 {
                out.push(',');
            }
            let _ = write!(
                out,
                "\"{OMITTED_PARAMETERS_KEY}\":\"{omitted} more parameters, {omitted_bytes} bytes\""
            );
        }
        out.push('}');
        (out.len() > 2).then_some(out)
    }

    /// `form`: the values are a form's text fields, so a number is in quotes (`"0.2"`).
    fn request_attributes(&self, form: bool) -> Vec<(&'static str, ParamValue)> {
        let mut out = Vec::new();
        let number = |k: &str| {
            let raw = self.raw(k)?;
            Some(if form { raw.trim_matches('"') } else { raw })
        };
        let float = |k: &str| {
            number(k)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|f| f.is_finite())
        };
        let int = |k: &str| number(k).and_then(|v| v.parse::<i64>().ok());
        for (attr, key) in [
            ("gen_ai.request.temperature", "temperature"),
            ("gen_ai.request.top_p", "top_p"),
            ("gen_ai.request.top_k", "top_k"),
            ("gen_ai.request.frequency_penalty", "frequency_penalty"),
            ("gen_ai.request.presence_penalty", "presence_penalty"),
        ] {
            if let Some(v) = float(key) {
                out.push((attr, ParamValue::Float(v)));
            }
        }
        if let Some(v) = int("max_tokens")
            .or_else(|| int("max_completion_tokens"))
            .or_else(|| int("max_output_tokens"))
        {
            out.push(("gen_ai.request.max_tokens", ParamValue::Int(v)));
        }
        if let Some(v) = int("seed") {
            out.push(("gen_ai.request.seed", ParamValue::Int(v)));
        }
        if let Some(v) = int("n") {
            out.push(("gen_ai.request.choice.count", ParamValue::Int(v)));
        }
        // OpenAI's `stop`, Anthropic's `stop_sequences`.
        if let Some(stop) = self.raw("stop").or_else(|| self.raw("stop_sequences")) {
            // Cut as the parameter is (one request's 6 MB of stop sequences made its span
            // too big to export).
            if stop.len() > MAX_PARAMETER_BYTES {
                out.push((
                    "gen_ai.request.stop_sequences",
                    ParamValue::Strings(vec![format!("[omitted: {} bytes]", stop.len())]),
                ));
                return out;
            }
            let stops = serde_json::from_str::<Vec<String>>(stop)
                .ok()
                .or_else(|| serde_json::from_str::<String>(stop).ok().map(|s| vec![s]));
            if let Some(stops) = stops {
                out.push(("gen_ai.request.stop_sequences", ParamValue::Strings(stops)));
            }
        }
        out
    }
}

fn push_json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// The OpenAI chat message shape, so Langfuse renders it as a chat turn.
#[derive(Serialize)]
struct OutputMessage<'a> {
    role: &'static str,
    /// `null` in a tool-call answer without text, as in OpenAI's message; an empty string
    /// otherwise (next to a refusal, or an answer with nothing in it).
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    reasoning_content: &'a str,
    /// OpenAI's message has the refusal next to an empty content.
    #[serde(skip_serializing_if = "str::is_empty")]
    refusal: &'a str,
    #[serde(skip_serializing_if = "<[ToolCall]>::is_empty")]
    tool_calls: &'a [ToolCall],
    /// The upstream's own error event that ended the stream, its message, type and code
    /// (see [`crate::usage::ResponseSummary::error_detail`]): the span's status message
    /// has only the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a serde_json::Value>,
}

fn has_message(summary: &ResponseSummary) -> bool {
    !summary.content.is_empty()
        || summary.text_answer
        || !summary.reasoning.is_empty()
        || !summary.refusal.is_empty()
        || !summary.tool_calls.is_empty()
        || summary.finish_reason.is_some()
}

/// The assistant message as far as it was seen (also for cut streams; a note for answers
/// whose bulk is not shown: embeddings, images, audio), else the upstream's error body, else
/// a whole answer that is text (a transcription as `text`, `srt` or `vtt`) as the message's
/// content, else nothing (router errors). `max_bytes` bounds the text taken from such an
/// answer before it is copied; [`fit_io`] cuts the result as any output.
fn output_of(record: &RequestRecord, max_bytes: usize) -> Option<String> {
    let summary = &record.response;
    let text_answer = if has_message(summary) {
        None
    } else {
        text_answer(record, max_bytes)
    };
    if has_message(summary) || text_answer.is_some() {
        let message = OutputMessage {
            role: "assistant",
            content: match text_answer {
                Some(text) => Some(text),
                None => summary.message_content(),
            },
            reasoning_content: &summary.reasoning,
            refusal: &summary.refusal,
            tool_calls: &summary.tool_calls,
            error: summary.error_detail.as_ref(),
        };
        // Sized for the texts plus the JSON around them: no regrowth while writing.
        let texts = summary.content.len() + summary.reasoning.len() + summary.refusal.len();
        let mut out = Vec::with_capacity(texts + texts / 8 + 96 + 128 * summary.tool_calls.len());
        serde_json::to_writer(&mut out, &message).ok()?;
        // serde_json writes only valid UTF-8.
        return String::from_utf8(out).ok();
    }
    if record.outcome == Outcome::UpstreamError {
        // A stream the upstream ended with its own error event before any answer: that
        // error, as a late error of the router's own shows its event.
        let Some(body) = record.response_body.as_deref() else {
            let detail = summary.error_detail.as_ref()?;
            return serde_json::to_string(detail).ok();
        };
        if serde_json::from_slice::<&RawValue>(body).is_ok() {
            return Some(String::from_utf8_lossy(body).into_owned());
        }
        return serde_json::to_string(&String::from_utf8_lossy(body)).ok();
    }
    None
}

/// A successful whole answer kept as text (the recorder keeps a 2xx body that is neither
/// JSON nor binary as it came: a transcription asked for as `text`, `srt` or `vtt`), its
/// first `max_bytes` at most, on a character boundary. A longer one is cut by [`fit_io`],
/// which then marks it.
fn text_answer(record: &RequestRecord, max_bytes: usize) -> Option<&str> {
    if record.outcome != Outcome::Success
        || record.response_is_json
        || record.response_encoding.is_some()
    {
        return None;
    }
    let body = record.response_body.as_deref()?;
    // One byte more than the cap, so `fit_io` sees it is over and marks the cut.
    let head = &body[..body.len().min(max_bytes.saturating_add(1))];
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // A character the head's end cuts in two: left out.
        Err(e) if e.error_len().is_none() && head.len() < body.len() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Cuts input and output so together they fit `cap` bytes. The output keeps at least half
/// the cap when both are large (the answer is usually what one looks for); a cut string ends
/// with [`TRUNCATION_MARKER`] and is then plain text, not JSON.
pub fn fit_io(
    input: Option<Cow<'_, str>>,
    output: Option<String>,
    cap: usize,
) -> (Option<String>, Option<String>) {
    let in_len = input.as_ref().map_or(0, |s| s.len());
    let out_len = output.as_ref().map_or(0, String::len);
    if in_len + out_len <= cap {
        return (input.map(Cow::into_owned), output);
    }
    let out_budget = out_len.min((cap / 2).max(cap.saturating_sub(in_len)));
    let in_budget = cap - out_budget;
    (
        input.map(|s| truncate_cow(s, in_budget)),
        output.map(|s| truncate(s, out_budget)),
    )
}

/// [`truncate`] that copies only what it keeps of borrowed text.
fn truncate_cow(s: Cow<'_, str>, budget: usize) -> String {
    match s {
        Cow::Owned(s) => truncate(s, budget),
        Cow::Borrowed(s) if s.len() <= budget => s.to_owned(),
        Cow::Borrowed(s) => {
            // Copied a character past the budget, so `truncate` still sees it is over and
            // marks the cut.
            let mut end = budget.saturating_add(1).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            truncate(s[..end].to_owned(), budget)
        }
    }
}

/// How much more than a span keeps of its input is read of it: room for redaction to
/// shorten it (a key replaced by the shorter `[redacted]`) and still leave more than the cut
/// takes, so the cut falls where it would in the whole, redacted text, and is marked.
const REDACTION_ROOM: usize = if cfg!(test) { 64 } else { 64 * 1024 };

/// The first `limit` bytes of `text` (on a character boundary), with the length of all of it.
fn prefix(text: &str, limit: usize) -> (Cow<'_, str>, usize) {
    if text.len() <= limit {
        return (Cow::Borrowed(text), text.len());
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (Cow::Borrowed(&text[..end]), text.len())
}

/// The shortest base64 payload [`push_elided`] leaves out: an image of a few KiB is kept.
const MIN_ELIDED_BASE64: usize = if cfg!(test) { 64 } else { 4096 };

/// How a base64 payload left out of a span's input reads in its place.
fn elided_note(bytes: usize) -> String {
    format!("[{bytes} bytes of base64 left out by llmsrouter]")
}

/// [`prefix`] of a JSON value, or with `elide` its [`push_elided`] copy.
fn value_prefix(value: &str, limit: usize, elide: bool) -> (Cow<'_, str>, usize) {
    if !elide {
        return prefix(value, limit);
    }
    let mut out = String::with_capacity(limit.min(value.len()));
    let whole = push_elided(&mut out, value, limit);
    (Cow::Owned(out), whole)
}

/// Appends the JSON `value` to `out`, `out` growing to `limit` bytes at most (cut on a
/// character boundary), with the payload of each string that is, or ends in, base64 of
/// [`MIN_ELIDED_BASE64`] bytes or more (a `data:image/png;base64,...` URL, Anthropic's
/// `source.data`, `input_audio.data`) replaced by [`elided_note`]: the string stays a
/// string, so the input stays JSON, and a `data:` URL keeps its media type. Returns the
/// length of all of `value` so elided, kept or not.
fn push_elided(out: &mut String, value: &str, limit: usize) -> usize {
    let (mut whole, mut full) = (0, false);
    let mut push = |out: &mut String, piece: &str| {
        whole += piece.len();
        if full {
            // After a cut nothing more is kept, not even a piece that would fit.
            return;
        }
        let (kept, _) = prefix(piece, limit.saturating_sub(out.len()));
        full = kept.len() < piece.len();
        out.push_str(&kept);
    };
    let bytes = value.as_bytes();
    let mut at = 0;
    while let Some(found) = memchr::memchr(b'"', &bytes[at..]) {
        let open = at + found + 1;
        let close = string_end(bytes, open);
        push(out, &value[at..open]);
        let text = &value[open..close];
        // An object's key (a string before `:`) is never left out: keys made one would clash.
        let is_key = bytes
            .get(close + 1..)
            .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
            == Some(&b':');
        match base64_payload(text).filter(|_| !is_key) {
            Some(start) => {
                push(out, &text[..start]);
                push(out, &elided_note(text.len() - start));
            }
            None => push(out, text),
        }
        at = close;
        if at >= bytes.len() {
            return whole;
        }
        // The closing quote goes out with what follows it.
        push(out, "\"");
        at += 1;
    }
    push(out, &value[at..]);
    whole
}

/// Where the JSON string whose text begins at `open` ends: its closing quote's index, or the
/// end of `bytes` when it has none.
fn string_end(bytes: &[u8], open: usize) -> usize {
    let mut at = open;
    while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) {
        let i = at + found;
        if bytes[i] == b'"' {
            return i;
        }
        at = (i + 2).min(bytes.len());
    }
    bytes.len()
}

/// Where the base64 payload of a string's text (as written in the JSON) begins, when the
/// text is base64 of [`MIN_ELIDED_BASE64`] bytes or more, bare or after a
/// `data:<type>;base64,` head (any case, as RFC 2397 allows). The JSON escapes a writer may
/// put in base64 count as base64: `\/` (PHP's `json_encode` writes every `/` so) and the
/// `\n`, `\r` of MIME's line breaks.
fn base64_payload(text: &str) -> Option<usize> {
    if text.len() < MIN_ELIDED_BASE64 {
        return None;
    }
    let bytes = text.as_bytes();
    let start = if bytes[..5].eq_ignore_ascii_case(b"data:") {
        let head = &bytes[..bytes.len().min(512)];
        let comma = head.iter().position(|b| *b == b',')?;
        let media = &head[..comma];
        let base64 = media.len() >= 7 && media[media.len() - 7..].eq_ignore_ascii_case(b";base64");
        if !base64 {
            return None;
        }
        comma + 1
    } else {
        0
    };
    let payload = &bytes[start..];
    let mut at = 0;
    while at < payload.len() {
        match payload[at] {
            b if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_') => {
                at += 1;
            }
            b'\\' if matches!(payload.get(at + 1), Some(b'/' | b'n' | b'r')) => at += 2,
            _ => return None,
        }
    }
    (payload.len() >= MIN_ELIDED_BASE64).then_some(start)
}

/// `text` with the request's secrets taken out: borrowed when it holds none.
fn redacted_cow<'t>(redactor: &RequestRedactor<'_>, text: Cow<'t, str>) -> Cow<'t, str> {
    match text {
        Cow::Borrowed(text) => redactor.redact(text),
        Cow::Owned(text) => Cow::Owned(redactor.redact_owned(text)),
    }
}

/// `s` cut to at most `budget` bytes including the marker, on a character boundary.
pub fn truncate(mut s: String, budget: usize) -> String {
    if s.len() <= budget {
        return s;
    }
    // A budget too small for the marker (never with the env minimum) gets a bare cut.
    let marker = if budget >= TRUNCATION_MARKER.len() * 2 {
        TRUNCATION_MARKER
    } else {
        ""
    };
    let mut keep = budget - marker.len();
    while keep > 0 && !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    s.push_str(marker);
    s
}

/// `s` cut to [`MAX_ATTRIBUTE_BYTES`] (see there). Redact before: a cut could leave half a
/// secret that the redactor no longer recognises.
pub fn bounded(s: String) -> String {
    truncate(s, MAX_ATTRIBUTE_BYTES)
}

/// [`bounded`] for borrowed text: copies only what is too long.
pub fn bounded_str(s: &str) -> Cow<'_, str> {
    clip(s, MAX_ATTRIBUTE_BYTES)
}

fn bounded_cow(s: Cow<'static, str>) -> Cow<'static, str> {
    match s {
        Cow::Owned(s) => Cow::Owned(bounded(s)),
        borrowed => borrowed,
    }
}

/// `items` as far as they fit [`MAX_ATTRIBUTE_BYTES`] together, each cut to it; when some
/// are left out, a last item says how many (`[omitted: 3 more]`).
pub fn bounded_list(items: Vec<String>) -> Vec<String> {
    let mut total = 0;
    let mut out = Vec::with_capacity(items.len().min(16));
    let count = items.len();
    for item in items {
        let item = bounded(item);
        if total + item.len() > MAX_ATTRIBUTE_BYTES && !out.is_empty() {
            out.push(format!("[omitted: {} more]", count - out.len()));
            return out;
        }
        total += item.len();
        out.push(item);
    }
    out
}

fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    Cow::Owned(truncate(s.to_owned(), max))
}

/// Langfuse's usage keys. `input` and `output` are the parts not already counted in the
/// cached / reasoning keys (Langfuse prices each key separately, as it does for OpenAI's
/// usage itself); `total` is everything. A transcription billed by duration adds its
/// `audio_seconds` and `audio_milliseconds` (Langfuse's keys are free-form: a model price may
/// name either). Langfuse takes whole counts only: a fraction in any key makes it drop the
/// usage details whole. So the seconds are whole, rounded up (a part of a second is not
/// free), and the milliseconds keep the fraction.
pub fn usage_details(usage: &Usage) -> String {
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "{{\"input\":{},\"output\":{},\"total\":{},\"input_cached_tokens\":{},\"output_reasoning_tokens\":{}",
        usage
            .input
            .saturating_sub(usage.cached_input)
            .saturating_sub(usage.cache_creation_input),
        usage.output.saturating_sub(usage.reasoning),
        usage.total,
        usage.cached_input,
        usage.reasoning,
    );
    if usage.cache_creation_input > 0 {
        let _ = write!(
            out,
            ",\"input_cache_creation\":{}",
            usage.cache_creation_input
        );
    }
    if let Some(seconds) = usage.audio_seconds {
        // Within 0..=MAX_COUNT (see `Usage::checked`): the casts are exact.
        let _ = write!(
            out,
            ",\"audio_seconds\":{},\"audio_milliseconds\":{}",
            seconds.ceil() as u64,
            (seconds * 1000.0).round() as u64
        );
    }
    out.push('}');
    out
}

fn cost_details(cost: f64) -> String {
    format!(
        "{{\"total\":{}}}",
        serde_json::to_string(&cost).unwrap_or_else(|_| "0".to_owned())
    )
}

fn level_of(record: &RequestRecord) -> (Level, Option<String>) {
    let error = || {
        record.error.clone().unwrap_or_else(|| match record.status {
            Some(status) => format!("HTTP {status}"),
            None => record.outcome.as_str().to_owned(),
        })
    };
    match record.outcome {
        // The upstream answered nothing (an empty body, an event stream without an event):
        // relayed as it came, but no answer; its error says so.
        Outcome::Success if record.empty_answer => (Level::Warning, Some(error())),
        // Every byte reached the client, but what the request cost is unknown.
        Outcome::Success if record.usage_partial() => (
            Level::Warning,
            Some(crate::record::unterminated(&record.endpoint)),
        ),
        Outcome::Success => (Level::Default, None),
        // The client chose to leave; nothing failed upstream or in the router.
        Outcome::ClientDisconnected => (Level::Warning, Some(error())),
        Outcome::UpstreamError | Outcome::RouterError | Outcome::StreamFailed => {
            (Level::Error, Some(error()))
        }
    }
}

/// `gen_ai.operation.name`: the OpenTelemetry GenAI value where one fits ("If one of them
/// applies, then that value MUST be used"): `chat` for OpenAI's chat completions, the
/// Responses API and Anthropic's `/messages` (each a model answering a conversation);
/// `text_completion` for OpenAI's `/completions` and Anthropic's legacy `/complete`;
/// `embeddings`. Other endpoints have no such value: the path, as a custom one
/// (`images/generations`, `audio/transcriptions`, `GET files`).
fn operation_of(endpoint: &str) -> Cow<'static, str> {
    match endpoint {
        "/chat/completions" | "/responses" | "/messages" => Cow::Borrowed("chat"),
        "/completions" | "/complete" => Cow::Borrowed("text_completion"),
        "/embeddings" => Cow::Borrowed("embeddings"),
        other => Cow::Owned(other.trim_start_matches('/').to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteMode;
    use crate::secret::Secret;
    use crate::usage::{ToolCall, summarize_body};
    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::time::SystemTime;

    fn record(body: Value) -> RequestRecord {
        RequestRecord {
            request_id: "0190c3b1a2b37c4d8e9f000000000001".into(),
            user: None,
            provider: "openai".into(),
            alias: Some("openai".into()),
            mode: RouteMode::Alias,
            endpoint: "/chat/completions".into(),
            requested_model: "[openai]gpt-4o".into(),
            upstream_model: "gpt-4o".into(),
            stream: false,
            request_body: Bytes::from(body.to_string()),
            request_layout: None,
            request_is_form: false,
            started_at: SystemTime::now(),
            started_mono: std::time::Instant::now(),
            response_started_at: None,
            first_token_at: None,
            ended_at: SystemTime::now(),
            status: Some(200),
            outcome: Outcome::Success,
            error: None,
            response_body: None,
            response_is_json: false,
            response_encoding: None,
            response_decoded: None,
            response: ResponseSummary::default(),
            complete: true,
            secrets: Default::default(),
            keys: Default::default(),
            answered_whole: false,
            empty_answer: false,
            upstream_had_request: false,
            bodies_dropped: false,
            usage_uncounted: false,
            body_ticket: Default::default(),
        }
    }

    fn json_of(s: &Option<String>) -> Value {
        serde_json::from_str(s.as_deref().expect("present")).expect("valid JSON")
    }

    /// A record whose bodies were left out (records in flight over their memory budget) says
    /// so in Langfuse, as in the request log: before, it had no input and an empty answer,
    /// which read as what the model was sent and said. Usage is still there.
    #[test]
    fn bodies_left_out_are_said_to_be_left_out() {
        let mut r = record(json!({}));
        r.request_body = Bytes::new();
        r.bodies_dropped = true;
        r.response.usage = Some(crate::usage::Usage {
            input: 3,
            output: 2,
            total: 5,
            ..Default::default()
        });
        let g = build(&r, &Redactor::default(), 1 << 20);
        let marker = json!(
            "[left out by llmsrouter: telemetry was too far behind to hold this request's bodies]"
        );
        assert_eq!(json_of(&g.input), marker);
        assert_eq!(json_of(&g.output), marker);
        assert_eq!(json_of(&g.usage_details)["total"], 5);
    }

    #[test]
    fn chat_input_parameters_and_output() {
        let mut r = record(json!({
            "model": "[openai]gpt-4o", "temperature": 0.2, "max_completion_tokens": 50,
            "top_p": 1, "stop": ["\n"], "stream": false, "user": "u1",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]
        }));
        r.response = summarize_body(
            json!({"model": "gpt-4o-2024-08-06", "choices": [{"message": {"content": "yo",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                    "prompt_tokens_details": {"cached_tokens": 60},
                    "completion_tokens_details": {"reasoning_tokens": 10}, "cost": 0.5}})
            .to_string()
            .as_bytes(),
        );
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.operation, "chat");
        assert_eq!(g.model, "gpt-4o-2024-08-06");
        assert_eq!(
            json_of(&g.input),
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "messages": [{"role": "user", "content": "hi"}]})
        );
        assert_eq!(
            json_of(&g.parameters),
            json!({"temperature": 0.2, "max_completion_tokens": 50, "top_p": 1, "stop": ["\n"]})
        );
        assert_eq!(
            json_of(&g.output),
            json!({"role": "assistant", "content": "yo", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        assert_eq!(
            json_of(&g.usage_details),
            json!({"input": 40, "output": 20, "total": 130, "input_cached_tokens": 60,
                "output_reasoning_tokens": 10})
        );
        assert_eq!(json_of(&g.cost_details), json!({"total": 0.5}));
        assert!(
            g.request_attributes
                .contains(&("gen_ai.request.max_tokens", ParamValue::Int(50)))
        );
        assert!(
            g.request_attributes
                .contains(&("gen_ai.request.temperature", ParamValue::Float(0.2)))
        );
        assert!(g.request_attributes.contains(&(
            "gen_ai.request.stop_sequences",
            ParamValue::Strings(vec!["\n".into()])
        )));
        assert_eq!((g.level, g.status_message), (Level::Default, None));
    }

    #[test]
    fn plain_messages_and_stream_output_with_reasoning() {
        let mut r = record(json!({"model": "m", "messages": [{"role": "user", "content": "q"}]}));
        r.response.content = "answer".into();
        r.response.reasoning = "thinking".into();
        r.response.tool_calls = vec![ToolCall {
            id: "t".into(),
            kind: "function".into(),
            name: "get".into(),
            arguments: "{\"a\":1}".into(),
        }];
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(json_of(&g.input), json!([{"role": "user", "content": "q"}]));
        assert_eq!(g.parameters, None);
        assert_eq!(json_of(&g.output)["reasoning_content"], json!("thinking"));
        assert_eq!(g.model, "gpt-4o", "falls back to the upstream model name");
    }

    /// A refusal is the output, in OpenAI's message shape: next to the (empty) content.
    #[test]
    fn a_refusal_is_the_output() {
        let mut r = record(json!({"model": "m", "messages": []}));
        r.response = summarize_body(
            json!({"choices": [{"message": {"role": "assistant", "content": null,
                "refusal": "I cannot help with that."}, "finish_reason": "stop"}]})
            .to_string()
            .as_bytes(),
        );
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(
            json_of(&g.output),
            json!({"role": "assistant", "content": "", "refusal": "I cannot help with that."})
        );
    }

    #[test]
    fn upstream_error_keeps_the_body_and_is_an_error() {
        let mut r = record(json!({"model": "m", "messages": []}));
        r.outcome = Outcome::UpstreamError;
        r.status = Some(500);
        r.error = Some("boom with sk-configured-123456".into());
        r.response_body = Some(Bytes::from_static(
            br#"{"error":{"message":"boom with sk-configured-123456"}}"#,
        ));
        let key = Secret::new("sk-configured-123456");
        let g = build(&r, &Redactor::new([&key]), 1 << 20);
        assert_eq!(g.level, Level::Error);
        assert_eq!(g.status_message.as_deref(), Some("boom with [redacted]"));
        assert_eq!(
            json_of(&g.output),
            json!({"error": {"message": "boom with [redacted]"}})
        );
        assert_eq!(g.usage_details, None);
    }

    #[test]
    fn disconnect_is_a_warning_and_the_client_key_is_redacted() {
        let mut r = record(
            json!({"model": "m", "messages": [{"role": "user", "content": "my key is client-secret-999"}]}),
        );
        r.outcome = Outcome::ClientDisconnected;
        r.error = Some("client disconnected".into());
        r.secrets = vec![Secret::new("client-secret-999")].into();
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.level, Level::Warning);
        assert!(
            !g.input
                .as_deref()
                .unwrap_or_default()
                .contains("client-secret-999")
        );
        assert!(
            g.input
                .as_deref()
                .unwrap_or_default()
                .contains("[redacted]")
        );
    }

    #[test]
    fn a_stream_closed_before_done_is_a_warning_only_without_usage() {
        let mut r = record(json!({"model": "m", "messages": []}));
        r.stream = true;
        r.complete = false;
        r.first_token_at = Some(SystemTime::now());
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.level, Level::Warning);
        assert_eq!(
            g.status_message.as_deref(),
            Some(
                "the upstream closed the stream before data: [DONE] and its usage; token counts unknown"
            )
        );
        for (endpoint, marker) in [
            ("/messages", "message_stop"),
            ("/complete", "a stop_reason"),
            ("/responses", "response.completed"),
        ] {
            r.endpoint = endpoint.into();
            let g = build(&r, &Redactor::default(), 1 << 20);
            let message = g.status_message.expect("a warning");
            assert!(
                message.contains(&format!(" before {marker} and its usage")),
                "{message}"
            );
            assert!(!message.contains("[DONE]"), "{message}");
        }
        r.response.usage = Some(Default::default());
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.level, Level::Default, "its usage came: nothing unknown");
        assert_eq!(g.status_message, None);
    }

    #[test]
    fn other_endpoints() {
        let mut r = record(json!({"model": "e", "input": ["a", "b"]}));
        r.endpoint = "/embeddings".into();
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.operation, "embeddings");
        assert_eq!(json_of(&g.input), json!(["a", "b"]));
        assert_eq!(g.output, None);
        let mut r = record(json!({"model": "o", "instructions": "be brief", "input": "hi"}));
        r.endpoint = "/responses".into();
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(
            json_of(&g.input),
            json!({"instructions": "be brief", "input": "hi"})
        );
        for (endpoint, operation) in [
            ("/completions", "text_completion"),
            ("/complete", "text_completion"),
            ("/messages", "chat"),
            ("/responses", "chat"),
            ("/images/generations", "images/generations"),
        ] {
            let mut r = record(json!({"model": "c", "prompt": "once upon"}));
            r.endpoint = endpoint.into();
            let g = build(&r, &Redactor::default(), 1 << 20);
            assert_eq!(g.operation, operation, "{endpoint}");
        }
    }

    /// A form's record (a transcription): its description is the input, its text fields
    /// the parameters (numbers read from their text), a file's outline no parameter.
    #[test]
    fn a_forms_description_is_the_input_and_its_text_fields_the_parameters() {
        let description = json!({"model": "[openai]whisper-1",
            "file": {"filename": "a.wav", "content_type": "audio/wav", "size_bytes": 9},
            "image[]": [{"filename": "b.png", "content_type": "image/png", "size_bytes": 3}],
            "language": "en", "temperature": "0.2", "prompt": "names: Ann"});
        let mut r = record(description.clone());
        r.endpoint = "/audio/transcriptions".into();
        r.request_is_form = true;
        r.response = summarize_body(
            json!({"text": "hello", "usage": {"type": "tokens", "input_tokens": 14,
                "output_tokens": 45, "total_tokens": 59}})
            .to_string()
            .as_bytes(),
        );
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(g.operation, "audio/transcriptions");
        assert_eq!(json_of(&g.input), description);
        assert_eq!(
            json_of(&g.parameters),
            json!({"language": "en", "temperature": "0.2"})
        );
        assert_eq!(
            g.request_attributes,
            vec![("gen_ai.request.temperature", ParamValue::Float(0.2))]
        );
        assert_eq!(
            json_of(&g.usage_details),
            json!({"input": 14, "output": 45, "total": 59, "input_cached_tokens": 0,
                "output_reasoning_tokens": 0})
        );
    }

    /// Every part of the prompt is in the input, however long: Anthropic's top-level
    /// `system`, a Responses API request's `tools` (beside its `instructions`); none of them
    /// is a model parameter.
    #[test]
    fn system_prompts_and_responses_tools_are_input() {
        let system = format!("You are terse. {}", "Follow the rules. ".repeat(200));
        let mut r = record(json!({"model": "c", "max_tokens": 10, "system": system,
            "messages": [{"role": "user", "content": "hi"}]}));
        r.endpoint = "/messages".into();
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(
            json_of(&g.input),
            json!({"system": system, "messages": [{"role": "user", "content": "hi"}]})
        );
        assert_eq!(json_of(&g.parameters), json!({"max_tokens": 10}));

        let blocks =
            json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]);
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let r = record(json!({"model": "c", "system": blocks, "tools": tools, "messages": []}));
        let g = build(&r, &Redactor::default(), 1 << 20);
        assert_eq!(
            json_of(&g.input),
            json!({"system": blocks, "tools": tools, "messages": []})
        );

        let tools =
            json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
        for (body, expected, parameters) in [
            (
                json!({"model": "o", "input": "weather?", "instructions": "be brief", "tools": tools, "tool_choice": "auto"}),
                json!({"instructions": "be brief", "tools": tools, "input": "weather?"}),
                Some(json!({"tool_choice": "auto"})),
            ),
            (
                json!({"model": "o", "input": [{"role": "user", "content": "weather?"}], "tools": tools}),
                json!({"tools": tools, "input": [{"role": "user", "content": "weather?"}]}),
                None,
            ),
        ] {
            let mut r = record(body);
            r.endpoint = "/responses".into();
            let g = build(&r, &Redactor::default(), 1 << 20);
            assert_eq!(json_of(&g.input), expected);
            let got = g
                .parameters
                .as_deref()
                .map(|p| serde_json::from_str::<Value>(p).expect("parameters are JSON"));
            assert_eq!(got, parameters);
        }
    }

    #[test]
    fn huge_io_is_cut_with_a_marker() {
        let big = "é".repeat(10_000);
        let r = record(json!({"model": "m", "messages": [{"role": "user", "content": big}]}));
        let mut r = r;
        r.response.content = "x".repeat(50_000);
        let g = build(&r, &Redactor::default(), 8192);
        let input = g.input.expect("input");
        let output = g.output.expect("output");
        assert!(input.len() + output.len() <= 8192);
        assert!(input.ends_with(TRUNCATION_MARKER) && output.ends_with(TRUNCATION_MARKER));
        assert!(output.len() >= 4096 - TRUNCATION_MARKER.len());
    }

    /// An input over the cap is read with its long base64 strings left out, so the messages
    /// after a big image (the newest question) are kept; one under the cap keeps them whole.
    #[test]
    fn base64_is_left_out_of_an_input_over_the_cap() {
        let image = "iVBORw0KGgo".repeat(2000);
        let audio = "UklGRg==".repeat(1000);
        let body = json!({"model": "m", "system": "be brief", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}},
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]},
            {"role": "user", "content": "what is in the image? \"quoted\" \\ é"}]});
        let g = build(&record(body.clone()), &Redactor::default(), 8192);
        let input: Value = serde_json::from_str(&g.input.expect("input")).expect("still JSON");
        let parts = &input["messages"][0]["content"];
        assert_eq!(
            parts[1]["image_url"]["url"],
            format!("data:image/png;base64,{}", elided_note(image.len()))
        );
        assert_eq!(parts[2]["input_audio"]["data"], elided_note(audio.len()));
        assert_eq!(input["messages"][1], body["messages"][1]);
        assert_eq!(input["system"], "be brief");

        let g = build(&record(body.clone()), &Redactor::default(), 1 << 20);
        let input: Value = serde_json::from_str(&g.input.expect("input")).expect("JSON");
        assert_eq!(
            input["messages"], body["messages"],
            "under the cap: as sent"
        );
        // Written with JSON escapes (PHP's `\/`, MIME's `\n`), under an upper-case head: left
        // out too. An object's key never is.
        let escaped = format!(
            r#"{{"a":"DATA:image/png;BASE64,{}","{}":1}}"#,
            r"iVBOR\/w0K\n".repeat(100),
            "k".repeat(100)
        );
        let mut out = String::new();
        push_elided(&mut out, &escaped, usize::MAX);
        assert_eq!(
            out,
            format!(
                r#"{{"a":"DATA:image/png;BASE64,{}","{}":1}}"#,
                elided_note(1200),
                "k".repeat(100)
            )
        );
        // Plain text, short base64 and a base64 look-alike with a space are never left out.
        for text in ["a b".repeat(100), "QUJD".to_owned()] {
            let mut out = String::new();
            let value = serde_json::to_string(&text).expect("json");
            assert_eq!(push_elided(&mut out, &value, usize::MAX), value.len());
            assert_eq!(out, value);
        }
    }

    proptest! {
        /// Any text, any limit: what is kept is the start of the whole elided copy, within
        /// the limit, and the whole length counted is that copy's.
        #[test]
        fn an_elided_copy_cut_is_the_start_of_the_whole(
            value in "(\"|\\\\|\\\"|data:a;base64,|[A-Za-z0-9+/]{1,90}|é| ){0,60}",
            limit in 0usize..400,
        ) {
            let mut whole = String::new();
            let len = push_elided(&mut whole, &value, usize::MAX);
            prop_assert_eq!(len, whole.len());
            let mut cut = String::new();
            prop_assert_eq!(push_elided(&mut cut, &value, limit), len);
            prop_assert!(cut.len() <= limit);
            prop_assert!(whole.starts_with(&cut));
            prop_assert!(cut.len() + 4 > limit.min(whole.len()), "stopped short");
        }

        #[test]
        fn fit_io_respects_the_cap(a in 0usize..5000, b in 0usize..5000, cap in 64usize..6000) {
            let (i, o) = fit_io(Some("a".repeat(a).into()), Some("ü".repeat(b / 2)), cap);
            let total = i.as_ref().map_or(0, String::len) + o.as_ref().map_or(0, String::len);
            if a + (b / 2) * 2 <= cap {
                prop_assert_eq!(i.map(|s| s.len()), Some(a));
            } else {
                prop_assert!(total <= cap, "{} > {}", total, cap);
            }
        }

        /// Borrowed text is cut as owned text is: the same bytes, the same marker.
        #[test]
        fn borrowed_text_is_cut_as_owned_text(text in "\\PC{0,300}", budget in 0usize..400) {
            prop_assert_eq!(
                truncate_cow(Cow::Borrowed(&text), budget),
                truncate(text.clone(), budget)
            );
        }

        /// The input read only as far as its cut needs is the input cut whole: the same
        /// bytes, the same marker, keys redacted alike (those across the early cut too).
        #[test]
        fn the_input_read_up_to_its_cut_is_the_input_cut_whole(
            system in "(é|ab|\\n|sk-cut-key-0123456789|[redacted]){0,120}",
            content in "(é|ab|\\n|sk-cut-key-0123456789|日本){0,200}",
            with_system in any::<bool>(),
            cap in 1024usize..1400,
        ) {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
            if with_system {
                body["system"] = json!(system);
            }
            let mut r = record(body);
            r.secrets = vec![Secret::new("sk-cut-key-0123456789")].into();
            let redactor = Redactor::default();
            let g = build(&r, &redactor, cap);
            let request = RequestFields::parse(&r.request_body).expect("fields");
            let output = output_of(&r, cap);
            let (whole, _) = request.input(usize::MAX, false).expect("input");
            // Over the cap, read again with base64 left out ("abab..." is base64).
            let elide = whole.len() + output.as_ref().map_or(0, String::len) > cap;
            let (whole, _) = request.input(usize::MAX, elide).expect("input");
            let redacted = redactor.for_record(&r.secrets).redact(&whole).into_owned();
            let (expected, _) = fit_io(Some(Cow::Owned(redacted)), output, cap);
            prop_assert_eq!(g.input, expected);
        }

        /// The fields found at the proxy's layout are the fields a parse finds; the whole
        /// generation view is the same either way.
        #[test]
        fn the_layout_gives_what_a_parse_gives(
            members in proptest::collection::vec(
                (
                    "[a-z_]{1,8}|[a-z]{1,4}\\\\n|é[a-z]{0,3}",
                    prop_oneof![
                        Just("null".to_owned()),
                        "-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?",
                        "\"[a-zé ]{0,6}(\\\\n|\\\\\")?[a-z]{0,3}\"",
                        Just("[{\"role\":\"user\",\"content\":\"hi\"}]".to_owned()),
                        Just("{\"include_usage\": true}".to_owned()),
                    ],
                ),
                0..8,
            ),
            space in "[ \n]{0,2}",
        ) {
            let mut body = format!("{{{space}\"model\":{space}\"m\"");
            for (key, value) in &members {
                body.push_str(&format!(",{space}\"{key}\":{space}{value}{space}"));
            }
            body.push('}');
            let view = crate::proxy::body::RequestView::parse_keeping_layout(body.as_bytes(), true)
                .expect("a valid request");
            let escaped_key = members.iter().any(|(k, _)| k.contains('\\'));
            prop_assert_eq!(view.layout.is_none(), escaped_key);
            let parsed = RequestFields::parse(body.as_bytes()).expect("parses");
            if let Some(layout) = &view.layout {
                let laid = RequestFields::from_layout(body.as_bytes(), layout).expect("fits");
                prop_assert_eq!(&laid.fields, &parsed.fields);
            }
            let mut with = record(json!({}));
            with.request_body = Bytes::from(body.clone());
            with.request_layout = view.layout;
            let mut without = with.clone();
            without.request_layout = None;
            prop_assert_eq!(
                build(&with, &Redactor::default(), 1 << 20),
                build(&without, &Redactor::default(), 1 << 20)
            );
        }

        #[test]
        fn any_body_builds(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = record(json!({}));
            r.request_body = Bytes::from(body);
            let _ = build(&r, &Redactor::default(), 1024);
        }
    }
}

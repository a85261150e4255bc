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
}

impl Usage {
    /// Normalises a `usage` object; `None` when it holds no token count at all.
    pub fn from_json(usage: &Value) -> Option<Self> {
        let obj = usage.as_object()?;
        let int = |v: Option<&Value>| v.and_then(as_count);
        let at = |path: &[&str]| -> Option<u64> {
            let mut cur = usage;
            for key in path {
                cur = cur.get(key)?;
            }
            as_count(cur)
        };
        let input = int(obj.get("prompt_tokens")).or(int(obj.get("input_tokens")));
        let output = int(obj.get("completion_tokens")).or(int(obj.get("output_tokens")));
        if input.is_none() && output.is_none() && int(obj.get("total_tokens")).is_none() {
            return None;
        }
        let cache_read = at(&["prompt_tokens_details", "cached_tokens"])
            .or(at(&["input_tokens_details", "cached_tokens"]))
            .or(int(obj.get("prompt_cache_hit_tokens")))
            .or(int(obj.get("cache_read_input_tokens")))
            .unwrap_or(0);
        let cache_creation = int(obj.get("cache_creation_input_tokens"))
            .or(at(&["prompt_tokens_details", "cache_write_tokens"]))
            .unwrap_or(0);
        let reasoning = at(&["completion_tokens_details", "reasoning_tokens"])
            .or(at(&["output_tokens_details", "reasoning_tokens"]))
            .unwrap_or(0);
        let mut input = input.unwrap_or(0);
        // Anthropic-style counts leave cache reads and writes out of input_tokens.
        if obj.contains_key("cache_read_input_tokens") && !obj.contains_key("prompt_tokens") {
            input += cache_read + cache_creation;
        }
        let output = output.unwrap_or(0);
        let total = int(obj.get("total_tokens")).unwrap_or(input + output);
        let cost = obj
            .get("cost")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0);
        Some(Self {
            input,
            output,
            total,
            cached_input: cache_read,
            cache_creation_input: cache_creation,
            reasoning,
            cost,
        })
    }
}

fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// One tool call, assembled from stream deltas or read whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub arguments: String,
}

/// What the response said, as far as it was seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseSummary {
    pub id: Option<String>,
    /// The model the upstream says answered.
    pub model: Option<String>,
    pub finish_reason: Option<String>,
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Option<Usage>,
}

// ---- whole bodies ------------------------------------------------------------------------

/// Reads a non-stream JSON response body (chat, completions, embeddings, responses).
pub fn summarize_body(body: &[u8]) -> ResponseSummary {
    // The top level and the first choice are read as borrowed raw JSON, so the (possibly
    // long) message text is copied once and nothing else is allocated; only the small
    // `usage` object and the rare Responses API `output` become `Value`s. A field of an
    // unexpected type is skipped, not fatal.
    let Ok(top) = serde_json::from_slice::<BodyTop<'_>>(body) else {
        return ResponseSummary::default();
    };
    let mut out = ResponseSummary {
        id: raw_str(top.id),
        model: raw_str(top.model),
        ..Default::default()
    };
    if let Some(usage) = top
        .usage
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    {
        out.usage = Usage::from_json(&usage);
    }
    let first_choice = top
        .choices
        .and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
        .and_then(|choices| choices.first().copied())
        .and_then(|raw| serde_json::from_str::<ChoiceRaw<'_>>(raw.get()).ok());
    if let Some(choice) = first_choice {
        out.finish_reason = raw_str(choice.finish_reason);
        if let Some(message) = choice
            .message
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        {
            out.content = text_of(message.get("content"));
            out.reasoning = reasoning_of(&message);
            out.tool_calls = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| calls.iter().map(tool_call_of).collect())
                .unwrap_or_default();
        } else if let Some(text) = raw_str(choice.text) {
            out.content = text;
        }
    } else if let Some(output) = top
        .output
        .and_then(|raw| serde_json::from_str::<Vec<Value>>(raw.get()).ok())
    {
        read_responses_output(&output, &mut out);
        out.finish_reason = raw_str(top.status);
    }
    out
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

/// A raw JSON value read as a string, when it is one.
fn raw_str(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// `content` is a string, or (multimodal / some vendors) a list of parts with `text`.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn reasoning_of(message: &Value) -> String {
    for key in ["reasoning_content", "reasoning"] {
        if let Some(text) = message.get(key).and_then(Value::as_str) {
            return text.to_owned();
        }
    }
    String::new()
}

fn tool_call_of(call: &Value) -> ToolCall {
    let function = call.get("function");
    ToolCall {
        id: str_field(call, "id").unwrap_or_default(),
        kind: str_field(call, "type").unwrap_or_else(|| "function".to_owned()),
        name: function
            .and_then(|f| str_field(f, "name"))
            .unwrap_or_default(),
        arguments: function
            .and_then(|f| f.get("arguments"))
            .map(|a| match a {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default(),
    }
}

/// The Responses API: `output` is a list of items; messages hold `output_text` parts.
fn read_responses_output(output: &[Value], out: &mut ResponseSummary) {
    for item in output {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let Some(parts) = item.get("content").and_then(Value::as_array) {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            out.content.push_str(text);
                        }
                    }
                }
            }
            Some("reasoning") => {
                if let Some(parts) = item.get("summary").and_then(Value::as_array) {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            out.reasoning.push_str(text);
                        }
                    }
                }
            }
            Some("function_call") => out.tool_calls.push(ToolCall {
                id: str_field(item, "call_id").unwrap_or_default(),
                kind: "function".to_owned(),
                name: str_field(item, "name").unwrap_or_default(),
                arguments: str_field(item, "arguments").unwrap_or_default(),
            }),
            _ => {}
        }
    }
}

// ---- streams -----------------------------------------------------------------------------

/// What one stream event was, for the forwarding decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `data: [DONE]`
    Done,
    /// A chunk with `choices: []` and a usage object: the reply to `include_usage`.
    UsageOnly,
    /// Anything else: forwarded as is.
    Other,
}

/// Builds a [`ResponseSummary`] from stream events, one `data:` payload at a time.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    summary: ResponseSummary,
    /// Set once an event carried text, reasoning or a tool call.
    saw_output: bool,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    /// Responses API events.
    #[serde(rename = "type", borrow, default)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(default)]
    response: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<std::borrow::Cow<'a, str>>,
}

impl StreamAccumulator {
    /// Reads one event's `data` payload (the text after `data:`, lines joined). Returns what
    /// kind of event it was; malformed JSON is `Other` and is forwarded untouched.
    pub fn push_data(&mut self, data: &[u8]) -> EventKind {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            return EventKind::Done;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(trimmed) else {
            return EventKind::Other;
        };
        if self.summary.id.is_none() {
            self.summary.id = chunk.id.as_deref().map(str::to_owned);
        }
        if let Some(model) = chunk.model.as_deref() {
            if self.summary.model.as_deref() != Some(model) {
                self.summary.model = Some(model.to_owned());
            }
        }
        if let Some(error) = chunk.error.as_ref() {
            self.summary.finish_reason = Some("error".to_owned());
            let _ = error;
        }
        let has_usage = match chunk.usage.as_ref() {
            Some(usage) if !usage.is_null() => {
                if let Some(parsed) = Usage::from_json(usage) {
                    self.summary.usage = Some(parsed);
                }
                true
            }
            _ => false,
        };
        if let Some(kind) = chunk.event_type.as_deref() {
            self.push_responses_event(kind, chunk.delta, chunk.response.as_ref());
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

    fn push_choice(&mut self, choice: ChunkChoice<'_>) {
        if let Some(reason) = choice.finish_reason {
            self.summary.finish_reason = Some(reason.into_owned());
        }
        if let Some(text) = choice.text {
            self.note_output(!text.is_empty());
            self.summary.content.push_str(&text);
        }
        let Some(delta) = choice.delta else { return };
        if let Some(text) = delta.content {
            self.note_output(!text.is_empty());
            self.summary.content.push_str(&text);
        }
        if let Some(text) = delta.reasoning_content.or(delta.reasoning) {
            self.note_output(!text.is_empty());
            self.summary.reasoning.push_str(&text);
        }
        for call in delta.tool_calls.unwrap_or_default() {
            self.note_output(true);
            let index = call
                .index
                .unwrap_or(self.summary.tool_calls.len().saturating_sub(1));
            // An index far beyond what was seen would make us allocate for nothing.
            if index > self.summary.tool_calls.len() + 64 {
                continue;
            }
            while self.summary.tool_calls.len() <= index {
                self.summary.tool_calls.push(ToolCall {
                    kind: "function".to_owned(),
                    ..Default::default()
                });
            }
            let slot = &mut self.summary.tool_calls[index];
            if let Some(id) = call.id {
                slot.id = id.into_owned();
            }
            if let Some(kind) = call.kind {
                slot.kind = kind.into_owned();
            }
            if let Some(function) = call.function {
                if let Some(name) = function.name {
                    slot.name.push_str(&name);
                }
                if let Some(args) = function.arguments {
                    slot.arguments.push_str(&args);
                }
            }
        }
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
                    self.summary.content.push_str(&text);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = delta_text() {
                    self.note_output(!text.is_empty());
                    self.summary.reasoning.push_str(&text);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(response) = response {
                    if let Some(usage) = response.get("usage") {
                        if let Some(parsed) = Usage::from_json(usage) {
                            self.summary.usage = Some(parsed);
                        }
                    }
                    if let Some(model) = str_field(response, "model") {
                        self.summary.model = Some(model);
                    }
                    if let Some(output) = response.get("output").and_then(Value::as_array) {
                        let mut whole = ResponseSummary::default();
                        read_responses_output(output, &mut whole);
                        self.summary.tool_calls = whole.tool_calls;
                    }
                    self.summary.finish_reason = str_field(response, "status");
                }
            }
            _ => {}
        }
    }

    fn note_output(&mut self, nonempty: bool) {
        self.saw_output |= nonempty;
    }

    /// True once the stream carried any generated text, reasoning or tool call; the first
    /// such event marks the completion start (time to first token).
    pub fn saw_output(&self) -> bool {
        self.saw_output
    }

    pub fn summary(&self) -> &ResponseSummary {
        &self.summary
    }

    pub fn into_summary(self) -> ResponseSummary {
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

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
                cost: None
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

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut acc = StreamAccumulator::default();
            let _ = acc.push_data(&data);
            let _ = summarize_body(&data);
        }

        #[test]
        fn usage_parser_takes_any_numbers(p in 0u64..1_000_000, c in 0u64..1_000_000) {
            let u = Usage::from_json(&json!({"prompt_tokens": p, "completion_tokens": c})).expect("usage");
            prop_assert_eq!(u.total, p + c);
        }
    }
}

//! A whole chat or text completion as the events of a stream. A stream the router opened
//! before its upstream answered ([`super::early`]) has already told the client "event
//! stream"; when the upstream, ignoring `"stream": true`, then answers one whole completion,
//! the client gets it as the chunks a streaming upstream would have sent, which any chat
//! client assembles into the same message. A whole chat or text completion that comes before that
//! head goes the same way (`super::whole_as_stream`): the openai SDKs read a stream
//! request's answer as events whatever its label, and found none in the JSON.
//!
//! Both paths read the answer through [`read_whole`], which owns how large an answer may be
//! made into events and on which thread it is read, so the two cannot drift apart.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::error::sse_event;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The largest whole JSON answer (decoded) made into events. Read into a tree it takes
/// several times its size (a 60 MB object of tiny members took 570 MB and stalled every
/// connection on its thread: bb36), and an SSE reader cuts an event past 16 MiB anyway. A
/// larger one goes as it came before the router's head (`super::whole_as_stream`); after it
/// the stream ends with the router's error saying so ([`super::early`]).
pub const MAX_EVENTS_FROM_WHOLE: usize = 16 * 1024 * 1024;

/// Past this a whole answer is read on a blocking thread, not on the one that serves its
/// connection and every other connection there.
const READ_ASIDE: usize = 256 * 1024;

/// Why [`read_whole`] made nothing of an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Unread {
    /// Over [`MAX_EVENTS_FROM_WHOLE`]: not read.
    TooLarge,
    /// Its read on a blocking thread did not finish (it panicked, or the runtime is
    /// shutting down).
    Lost,
}

/// A whole JSON answer to a stream request (decoded) read into a tree and handed to `make`
/// (`None` when it is not JSON), which makes of it what its path needs: the events, or why
/// there are none. One over [`MAX_EVENTS_FROM_WHOLE`] is not read. One over 256 KiB is read,
/// `make` run and the tree dropped (itself a free for each of millions of members) on a
/// blocking thread.
pub async fn read_whole<T, F>(json: Bytes, make: F) -> Result<T, Unread>
where
    T: Send + 'static,
    F: FnOnce(Option<Value>) -> T + Send + 'static,
{
    if json.len() > MAX_EVENTS_FROM_WHOLE {
        return Err(Unread::TooLarge);
    }
    let large = json.len() > READ_ASIDE;
    let read = move || make(serde_json::from_slice::<Value>(&json).ok());
    if !large {
        return Ok(read());
    }
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| Unread::Lost)
}

/// The events that stand for `answer`: one chunk per choice, carrying the whole message as
/// its delta (or, for a text completion, the whole text) and its `finish_reason`; then the
/// usage-only chunk when `with_usage` (the client asked for `stream_options.include_usage`)
/// and the answer has usage; then `data: [DONE]`. `None` when `answer` is neither a chat
/// completion (`object: "chat.completion"`) nor a text completion (`"text_completion"`)
/// with a list of choices, each an object (a chat choice with a `message` object).
///
/// An answer without `"object"` is a chat completion when it has choices and every one has
/// a `message` object: some OpenAI-compatible servers leave `object` out, and that shape is
/// the chat completion's alone (a text completion's choices have `text`, the Responses and
/// Anthropic answers no `choices`), so refusing it would fail a stream whose answer is
/// plain. An `object` naming anything else, or no choices to tell by, is still `None`.
pub fn as_events(answer: &Value, with_usage: bool) -> Option<Bytes> {
    let choices = answer.get("choices")?.as_array()?;
    let (object, chat) = match answer.get("object") {
        Some(object) => match object.as_str()? {
            "chat.completion" => ("chat.completion.chunk", true),
            "text_completion" => ("text_completion", false),
            _ => return None,
        },
        None if !choices.is_empty() && choices.iter().all(has_message) => {
            ("chat.completion.chunk", true)
        }
        None => return None,
    };
    let mut out = BytesMut::new();
    for (i, choice) in choices.iter().enumerate() {
        let choice = if chat {
            chat_choice(choice, i)?
        } else {
            text_choice(choice, i)?
        };
        push(&mut out, &chunk(answer, object, choice, None));
    }
    let usage = answer.get("usage").filter(|usage| usage.is_object());
    if let Some(usage) = usage.filter(|_| with_usage) {
        push(&mut out, &chunk(answer, object, Value::Null, Some(usage)));
    }
    out.extend_from_slice(DONE);
    Some(out.freeze())
}

fn has_message(choice: &Value) -> bool {
    choice.get("message").is_some_and(Value::is_object)
}

fn push(out: &mut BytesMut, chunk: &Value) {
    // A `Value` always serialises (its keys are strings).
    let data = serde_json::to_vec(chunk).unwrap_or_default();
    out.extend_from_slice(&sse_event(None, &data));
}

/// One chunk: the answer's `id`, `created`, `model`, `system_fingerprint` and `service_tier`
/// (each streamed chunk carries them), with `choice` as its one choice (none for the usage
/// chunk, which carries `usage`).
fn chunk(answer: &Value, object: &str, choice: Value, usage: Option<&Value>) -> Value {
    let mut chunk = Map::new();
    if let Some(id) = answer.get("id") {
        chunk.insert("id".into(), id.clone());
    }
    chunk.insert("object".into(), object.into());
    for key in ["created", "model", "system_fingerprint", "service_tier"] {
        if let Some(value) = answer.get(key) {
            chunk.insert(key.into(), value.clone());
        }
    }
    let choices = match choice {
        Value::Null => Vec::new(),
        choice => vec![choice],
    };
    chunk.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = usage {
        chunk.insert("usage".into(), usage.clone());
    }
    Value::Object(chunk)
}

/// A chat choice as a chunk's: its whole `message` (role, content, reasoning, refusal, tool
/// calls, whatever the upstream put in it) as the `delta`, each tool call given the `index`
/// a stream delta needs to be assembled; its `index`, `logprobs` and `finish_reason` kept.
fn chat_choice(choice: &Value, position: usize) -> Option<Value> {
    let mut delta = choice.get("message")?.as_object()?.clone();
    if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
        for (i, call) in calls.iter_mut().enumerate() {
            if let Some(call) = call.as_object_mut() {
                call.entry("index").or_insert_with(|| i.into());
            }
        }
    }
    let mut out = Map::new();
    out.insert("index".into(), index_of(choice, position));
    out.insert("delta".into(), Value::Object(delta));
    if let Some(logprobs) = choice.get("logprobs") {
        out.insert("logprobs".into(), logprobs.clone());
    }
    let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
    out.insert("finish_reason".into(), finish);
    Some(Value::Object(out))
}

/// A text completion's choice is already a chunk's (`text`, `index`, `logprobs`,
/// `finish_reason`): kept whole, with an `index` if it had none.
fn text_choice(choice: &Value, position: usize) -> Option<Value> {
    let mut out = choice.as_object()?.clone();
    out.entry("index")
        .or_insert_with(|| index_of(choice, position));
    Some(Value::Object(out))
}

fn index_of(choice: &Value, position: usize) -> Value {
    choice
        .get("index")
        .filter(|index| index.is_u64())
        .cloned()
        .unwrap_or_else(|| position.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(bytes: &Bytes) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).expect("utf8");
        let body = text.strip_suffix("data: [DONE]\n\n").expect("[DONE] last");
        body.split_terminator("\n\n")
            .map(|event| {
                let data = event.strip_prefix("data: ").expect("one data line");
                assert!(!data.contains('\n'), "{event:?}");
                serde_json::from_str(data).expect("json")
            })
            .collect()
    }

    #[test]
    fn a_chat_completion_is_one_chunk_per_choice_and_usage_when_asked() {
        let answer = json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp", "service_tier": "default",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a",
                    "reasoning_content": "r"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "t", "type": "function",
                        "function": {"name": "f", "arguments": "{}"}}]},
                    "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let head = json!({"id": "c1", "object": "chat.completion.chunk", "created": 7,
            "model": "m", "system_fingerprint": "fp", "service_tier": "default"});
        let with = |extra: Value| {
            let mut chunk = head.clone();
            for (key, value) in extra.as_object().expect("object") {
                chunk[key] = value.clone();
            }
            chunk
        };
        let first = with(
            json!({"choices": [{"index": 0, "delta": {"role": "assistant",
            "content": "a", "reasoning_content": "r"}, "finish_reason": "stop"}]}),
        );
        let second = with(
            json!({"choices": [{"index": 1, "delta": {"role": "assistant",
            "content": null, "tool_calls": [{"index": 0, "id": "t", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}),
        );
        let usage = with(json!({"choices": [], "usage": answer["usage"]}));
        let all = as_events(&answer, true).expect("a chat completion");
        assert_eq!(events(&all), [first.clone(), second.clone(), usage]);
        let without = as_events(&answer, false).expect("a chat completion");
        assert_eq!(events(&without), [first, second]);
    }

    #[test]
    fn a_text_completion_keeps_its_choices() {
        let answer = json!({"id": "t1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"text": "hi", "index": 0, "logprobs": null, "finish_reason": "length"}]});
        let got = events(&as_events(&answer, false).expect("a text completion"));
        assert_eq!(
            got,
            [
                json!({"id": "t1", "object": "text_completion", "created": 7, "model": "m",
                "choices": [answer["choices"][0].clone()]})
            ]
        );
    }

    /// No `object`, but choices with a `message`: the chat completion's shape alone.
    #[test]
    fn a_chat_completion_without_object_is_told_by_its_messages() {
        let answer = json!({"id": "c2", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                "finish_reason": "stop"}]});
        let got = events(&as_events(&answer, false).expect("a chat completion"));
        assert_eq!(
            got,
            [
                json!({"id": "c2", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"},
                    "finish_reason": "stop"}]})
            ]
        );
    }

    #[test]
    fn other_shapes_are_not_made_into_events() {
        for answer in [
            json!({"id": "resp_1", "object": "response", "output": []}),
            json!({"type": "message", "content": [{"type": "text", "text": "hi"}]}),
            json!({"object": "chat.completion"}),
            json!({"object": "chat.completion", "choices": [{"text": "no message"}]}),
            json!({"choices": []}),
            json!({"choices": [{"text": "no object, no message"}]}),
            json!({"choices": [{"message": {"content": "a"}}, {"text": "b"}]}),
            json!({"object": "response", "choices": [{"message": {"content": "a"}}]}),
            json!([1, 2]),
        ] {
            assert!(as_events(&answer, true).is_none(), "{answer}");
        }
    }

    /// A small answer is read where it is asked for; one over 256 KiB on another thread
    /// (a blocking one), not the one serving the connection; one over 16 MiB not at all.
    #[tokio::test]
    async fn a_large_answer_is_read_aside_and_a_huge_one_not_read() {
        let here = std::thread::current().id();
        let answer = |size: usize| Bytes::from(json!({"text": "x".repeat(size)}).to_string());
        let where_read = |json: Bytes| {
            read_whole(json, move |value| {
                assert!(value.is_some(), "read as JSON");
                std::thread::current().id()
            })
        };
        assert_eq!(where_read(answer(1024)).await, Ok(here));
        let aside = where_read(answer(300 * 1024)).await.expect("read");
        assert_ne!(aside, here, "read on a blocking thread");
        let huge = answer(MAX_EVENTS_FROM_WHOLE);
        let made = read_whole(huge, |_| panic!("not read")).await;
        assert_eq!(made, Err::<(), _>(Unread::TooLarge));
        let not_json = read_whole(Bytes::from_static(b"data: {}"), |value| value.is_none());
        assert_eq!(not_json.await, Ok(true));
    }
}

//! OTLP `Span` messages written straight into protobuf wire format.
//!
//! The exporter used to build each span as `opentelemetry-proto` structs and let prost encode
//! them: about thirty `KeyValue`s, each with an owned key and value, then a second pass to
//! measure every nested length. Writing the same bytes directly from borrowed text halves
//! what a span costs (see README "Observability"). The layout follows OTLP's `trace.proto`
//! and `common.proto`; the tests decode what this writes with `opentelemetry-proto` and
//! compare it with the message prost would have sent.

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

// `Span` fields.
const SPAN_TRACE_ID: u8 = 1;
const SPAN_SPAN_ID: u8 = 2;
const SPAN_NAME: u8 = 5;
const SPAN_KIND: u8 = 6;
const SPAN_START: u8 = 7;
const SPAN_END: u8 = 8;
const SPAN_ATTRIBUTES: u8 = 9;
const SPAN_STATUS: u8 = 15;
// `Status` fields (1 is reserved).
const STATUS_MESSAGE: u8 = 2;
const STATUS_CODE: u8 = 3;
// `KeyValue` fields.
const KV_KEY: u8 = 1;
const KV_VALUE: u8 = 2;
// `AnyValue` fields.
const ANY_STRING: u8 = 1;
const ANY_INT: u8 = 3;
const ANY_DOUBLE: u8 = 4;
const ANY_ARRAY: u8 = 5;
// `ArrayValue` fields.
const ARRAY_VALUES: u8 = 1;

/// `Span.SpanKind.SPAN_KIND_CLIENT`.
pub const KIND_CLIENT: u64 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
pub const STATUS_ERROR: u64 = 2;

/// The longest a varint gets (a negative int64).
const MAX_VARINT: usize = 10;

const fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

/// Bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    // One byte per started group of 7 bits; zero takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Size of a length-delimited field (one-byte tag) holding `len` bytes.
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_len_header(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(tag(field, LEN));
    put_varint(out, len as u64);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_len_header(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// A plain (non-`oneof`) string field: proto3 leaves out an empty one, as prost does.
fn put_string_field(out: &mut Vec<u8>, field: u8, text: &str) {
    if !text.is_empty() {
        put_bytes_field(out, field, text.as_bytes());
    }
}

/// Size of [`put_string_field`]'s output.
fn string_field(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        len_field(text.len())
    }
}

/// Writes the fields of one `Span` message (without its own tag and length) into a buffer
/// that starts with room for them: [`SpanWriter::finish`] then returns the span framed as
/// `ScopeSpans.spans`, without copying its body.
pub struct SpanWriter<'a> {
    out: &'a mut Vec<u8>,
}

/// Room left at the front of the buffer for the frame: a one-byte tag and a varint length.
const FRAME_ROOM: usize = 1 + MAX_VARINT;

impl<'a> SpanWriter<'a> {
    /// Clears `out` and starts a span in it.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.resize(FRAME_ROOM, 0);
        Self { out }
    }

    pub fn ids(&mut self, trace_id: [u8; 16], span_id: [u8; 8]) {
        put_bytes_field(self.out, SPAN_TRACE_ID, &trace_id);
        put_bytes_field(self.out, SPAN_SPAN_ID, &span_id);
    }

    pub fn name(&mut self, name: &str) {
        put_string_field(self.out, SPAN_NAME, name);
    }

    pub fn kind(&mut self, kind: u64) {
        self.out.push(tag(SPAN_KIND, VARINT));
        put_varint(self.out, kind);
    }

    pub fn times(&mut self, start_unix_nanos: u64, end_unix_nanos: u64) {
        self.out.push(tag(SPAN_START, FIXED64));
        self.out.extend_from_slice(&start_unix_nanos.to_le_bytes());
        self.out.push(tag(SPAN_END, FIXED64));
        self.out.extend_from_slice(&end_unix_nanos.to_le_bytes());
    }

    /// An attribute whose `AnyValue` is `any_len` bytes, the caller writing them next.
    fn attribute_header(&mut self, key: &str, any_len: usize) {
        let kv_len = string_field(key) + len_field(any_len);
        put_len_header(self.out, SPAN_ATTRIBUTES, kv_len);
        put_string_field(self.out, KV_KEY, key);
        put_len_header(self.out, KV_VALUE, any_len);
    }

    pub fn str(&mut self, key: &str, value: &str) {
        self.attribute_header(key, len_field(value.len()));
        put_bytes_field(self.out, ANY_STRING, value.as_bytes());
    }

    pub fn int(&mut self, key: &str, value: i64) {
        // int64 is written as the varint of its two's complement.
        let value = value as u64;
        self.attribute_header(key, 1 + varint_len(value));
        self.out.push(tag(ANY_INT, VARINT));
        put_varint(self.out, value);
    }

    pub fn double(&mut self, key: &str, value: f64) {
        self.attribute_header(key, 1 + 8);
        self.out.push(tag(ANY_DOUBLE, FIXED64));
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(&mut self, key: &str, values: &[S]) {
        let array_len: usize = values
            .iter()
            .map(|v| len_field(len_field(v.as_ref().len())))
            .sum();
        self.attribute_header(key, len_field(array_len));
        put_len_header(self.out, ANY_ARRAY, array_len);
        for value in values {
            let value = value.as_ref().as_bytes();
            put_len_header(self.out, ARRAY_VALUES, len_field(value.len()));
            put_bytes_field(self.out, ANY_STRING, value);
        }
    }

    /// `Status { message, code }`; `None` writes the empty (unset) status.
    pub fn status(&mut self, error: Option<&str>) {
        match error {
            None => put_len_header(self.out, SPAN_STATUS, 0),
            Some(message) => {
                let len = string_field(message) + 1 + varint_len(STATUS_ERROR);
                put_len_header(self.out, SPAN_STATUS, len);
                put_string_field(self.out, STATUS_MESSAGE, message);
                self.out.push(tag(STATUS_CODE, VARINT));
                put_varint(self.out, STATUS_ERROR);
            }
        }
    }

    /// The span as one `ScopeSpans.spans` field (field 2): tag, length, body.
    pub fn finish(self) -> &'a [u8] {
        let body = self.out.len() - FRAME_ROOM;
        let start = FRAME_ROOM - (1 + varint_len(body as u64));
        // Written in place into the room left in front of the body.
        let mut at = start;
        self.out[at] = tag(2, LEN);
        at += 1;
        let mut value = body as u64;
        while value >= 0x80 {
            self.out[at] = (value as u8) | 0x80;
            value >>= 7;
            at += 1;
        }
        self.out[at] = value as u8;
        &self.out[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};
    use proptest::prelude::*;
    use prost::Message as _;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// Writes a span with every kind of field and checks that it decodes to the message
    /// prost would have encoded for it.
    fn round_trip(key: &str, text: &str, int: i64, double: f64, error: Option<&str>) {
        let mut buf = Vec::new();
        let mut w = SpanWriter::new(&mut buf);
        w.ids([7; 16], [9; 8]);
        w.name("OpenAI-generation");
        w.kind(KIND_CLIENT);
        w.times(1_700_000_000_000_000_000, 1_700_000_000_500_000_000);
        w.str(key, text);
        w.int("n", int);
        w.double("d", double);
        w.strs("tags", &[text, "b"]);
        w.strs::<&str>("none", &[]);
        w.status(error);
        let framed = w.finish().to_vec();

        assert_eq!(framed[0], tag(2, LEN));
        let decoded = Span::decode_length_delimited(&framed[1..]).expect("valid Span");
        let strings = |values: &[&str]| {
            any_value::Value::ArrayValue(ArrayValue {
                values: values
                    .iter()
                    .map(|v| AnyValue {
                        value: Some(any_value::Value::StringValue((*v).to_owned())),
                    })
                    .collect(),
            })
        };
        let expected = Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: "OpenAI-generation".to_owned(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![
                kv(key, any_value::Value::StringValue(text.to_owned())),
                kv("n", any_value::Value::IntValue(int)),
                kv("d", any_value::Value::DoubleValue(double)),
                kv("tags", strings(&[text, "b"])),
                kv("none", strings(&[])),
            ],
            status: Some(match error {
                None => Status::default(),
                Some(m) => Status {
                    message: m.to_owned(),
                    code: status::StatusCode::Error as i32,
                },
            }),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        // Byte for byte what prost writes for the same message.
        assert_eq!(framed[1..], expected.encode_length_delimited_to_vec());
    }

    #[test]
    fn spans_decode_as_otlp() {
        round_trip("k", "v", 7, 0.5, None);
        round_trip(
            "langfuse.observation.input",
            &"x".repeat(300),
            -1,
            -2.25,
            None,
        );
        round_trip("e", "", i64::MIN, f64::MAX, Some("upstream said 500"));
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    proptest! {
        #[test]
        fn any_attribute_round_trips(
            key in ".{0,40}",
            text in ".{0,3000}",
            int in any::<i64>(),
            double in -1e300f64..1e300,
            error in proptest::option::of(".{0,200}"),
        ) {
            round_trip(&key, &text, int, double, error.as_deref());
        }
    }
}

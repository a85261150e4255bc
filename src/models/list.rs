//! Model lists as data: reading one upstream's `/models` answer, and merging every server's
//! list into the one list `/v1/models` serves.
//!
//! Pure: bytes and config values in, lists out; no I/O, no clock. Merging happens once per
//! refresh, so serving the list (or looking a model's owner up) later costs no JSON work.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::filter::Filter;

/// One model as an upstream listed it.
#[derive(Debug, Clone)]
pub struct UpstreamModel {
    pub id: String,
    /// Every other field, as raw JSON in the upstream's order: kept as the upstream sent them
    /// (context_length, pricing, ...), since clients read them.
    pub fields: Vec<(String, Box<RawValue>)>,
}

impl UpstreamModel {
    /// A model known only by its id, as in a list of plain strings.
    pub fn bare(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            fields: Vec::new(),
        }
    }
}

/// Why an upstream's answer is not a model list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("its answer is not JSON ({0})")]
    NotJson(String),
    #[error("its answer is not a model list (expected {{\"data\": [...]}} or [...])")]
    NotAList,
    #[error("{}", no_ids(*.0))]
    NoIds(usize),
}

fn no_ids(entries: usize) -> String {
    if entries == 1 {
        "the one entry of its list has no usable \"id\" (a string not blank)".to_owned()
    } else {
        format!(
            "none of the {entries} entries of its list has a usable \"id\" (a string not blank)"
        )
    }
}

/// An upstream's list, and how many of its entries had no usable id and were skipped.
#[derive(Debug)]
pub struct Parsed {
    pub models: Vec<UpstreamModel>,
    pub skipped: usize,
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Reads the shapes seen in the wild: `{"data": [objects]}` (OpenAI), `{"data": [strings]}`,
/// and a bare array of either, after a byte-order mark or not. An entry without a string
/// `id` that is not blank (all white space routes nowhere, see [`MergedList::push`]) is
/// skipped and counted; a non-empty list where no entry has one is an error, so the server
/// counts as failed.
pub fn parse_listing(body: &[u8]) -> Result<Parsed, ParseError> {
    // A UTF-8 byte-order mark before the JSON (a list saved by a Windows editor and served
    // as a file), which RFC 8259 lets a parser ignore.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let array = match first_byte(raw) {
        b'[' => raw,
        b'{' => serde_json::from_str::<Wrapped<'_>>(raw.get())
            .ok()
            .and_then(|w| w.data)
            .filter(|data| first_byte(data) == b'[')
            .ok_or(ParseError::NotAList)?,
        _ => return Err(ParseError::NotAList),
    };
    let items: Vec<&RawValue> =
        serde_json::from_str(array.get()).map_err(|_| ParseError::NotAList)?;
    let total = items.len();
    let models: Vec<UpstreamModel> = items.into_iter().filter_map(parse_entry).collect();
    if total > 0 && models.is_empty() {
        return Err(ParseError::NoIds(total));
    }
    Ok(Parsed {
        skipped: total - models.len(),
        models,
    })
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get().trim_start().bytes().next().unwrap_or(b' ')
}

fn parse_entry(item: &RawValue) -> Option<UpstreamModel> {
    match first_byte(item) {
        b'"' => serde_json::from_str::<String>(item.get())
            .ok()
            .filter(|id| !is_blank(id))
            .map(UpstreamModel::bare),
        b'{' => {
            let object: IndexMap<String, Box<RawValue>> = serde_json::from_str(item.get()).ok()?;
            let mut id = None;
            let mut fields = Vec::with_capacity(object.len().saturating_sub(1));
            for (key, value) in object {
                if key == "id" {
                    id = serde_json::from_str::<String>(value.get()).ok();
                } else {
                    fields.push((key, value));
                }
            }
            let id = id.filter(|id| !is_blank(id))?;
            Some(UpstreamModel { id, fields })
        }
        _ => None,
    }
}

/// An id that names no model: `[alias]` with nothing (or white space) after it routes nowhere.
fn is_blank(id: &str) -> bool {
    id.trim().is_empty()
}

/// Where one server's models come from in a merge.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `override` in config.yaml: replaces the upstream's list, never filtered.
    Override(&'a [String]),
    /// The upstream's answer (this refresh's, or its last good one): filtered.
    Upstream(&'a [UpstreamModel]),
    /// Nothing: the server failed and never answered.
    Nothing,
}

/// One server's part of a merge, in config order.
#[derive(Debug, Clone, Copy)]
pub struct ServerInput<'a> {
    pub alias: &'a str,
    pub source: Source<'a>,
    pub filter: &'a Filter,
    /// Added after the (filtered) list, unfiltered.
    pub append: &'a [String],
}

/// One entry of the merged list.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position of its server in [`MergedList::aliases`].
    pub server: usize,
    /// `[alias]id`.
    pub id: Box<str>,
    /// The entry as served: one JSON object.
    pub json: Bytes,
}

/// The merged model list, with the indexes that serve it without further work.
#[derive(Debug, Default)]
pub struct MergedList {
    aliases: Vec<String>,
    entries: Vec<Entry>,
    /// `[alias]id` → position in `entries`.
    by_id: HashMap<Box<str>, usize>,
    /// Upstream id (no prefix) → the servers listing it, in config order.
    owners: HashMap<Box<str>, Vec<usize>>,
    /// `{"object":"list","data":[...]}` with every entry: what a caller who may use every
    /// provider gets, built once.
    body_all: Bytes,
}

impl MergedList {
    /// Merges servers in config order. Ids are `[alias]id`; within a server the first entry
    /// with an id wins (an upstream listing an id twice, or `append` repeating one).
    pub fn merge(servers: &[ServerInput<'_>]) -> Self {
        let mut list = Self {
            aliases: servers.iter().map(|s| s.alias.to_owned()).collect(),
            ..Self::default()
        };
        for (position, server) in servers.iter().enumerate() {
            match server.source {
                Source::Override(ids) => {
                    for id in ids {
                        list.push(position, server.alias, id, &[]);
                    }
                }
                Source::Upstream(models) => {
                    for model in models.iter().filter(|m| server.filter.matches(&m.id)) {
                        list.push(position, server.alias, &model.id, &model.fields);
                    }
                }
                Source::Nothing => {}
            }
            for id in server.append {
                list.push(position, server.alias, id, &[]);
            }
        }
        list.body_all = list_body(list.entries.iter());
        list
    }

    /// Adds `[alias]id`, unless `id` is blank: `[alias]` or `[alias]  ` routes nowhere (a
    /// request naming it has no model name), so a blank `override` or `append` entry, or an
    /// upstream's blank id, is not listed.
    fn push(&mut self, server: usize, alias: &str, id: &str, fields: &[(String, Box<RawValue>)]) {
        if is_blank(id) {
            return;
        }
        let prefixed: Box<str> = format!("[{alias}]{id}").into_boxed_str();
        let MapEntry::Vacant(slot) = self.by_id.entry(prefixed.clone()) else {
            return;
        };
        slot.insert(self.entries.len());
        self.entries.push(Entry {
            server,
            json: entry_json(alias, &prefixed, fields),
            id: prefixed,
        });
        let owners = self.owners.entry(id.into()).or_default();
        if owners.last() != Some(&server) {
            owners.push(server);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn alias_of(&self, entry: &Entry) -> &str {
        self.aliases.get(entry.server).map_or("", String::as_str)
    }

    /// Every server alias, in config order.
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// The `/v1/models` body for a caller who may use the aliases `visible` accepts. A caller
    /// who may use them all gets the body built at merge time, with no work per request.
    pub fn body(&self, visible: impl Fn(&str) -> bool) -> Bytes {
        if self.aliases.iter().all(|alias| visible(alias)) {
            return self.body_all.clone();
        }
        list_body(
            self.entries
                .iter()
                .filter(|entry| visible(self.alias_of(entry))),
        )
    }

    /// The entry `[alias]id`, if its alias is visible.
    pub fn get(&self, prefixed_id: &str, visible: impl Fn(&str) -> bool) -> Option<&Entry> {
        let entry = self.entries.get(*self.by_id.get(prefixed_id)?)?;
        visible(self.alias_of(entry)).then_some(entry)
    }

    /// The alias of the first server (config order) whose list holds exactly `id` and that
    /// `visible` accepts. A hash lookup: nothing is allocated.
    pub fn owner(&self, id: &str, visible: impl Fn(&str) -> bool) -> Option<&str> {
        self.owners
            .get(id)?
            .iter()
            .filter_map(|&server| self.aliases.get(server))
            .map(String::as_str)
            .find(|alias| visible(alias))
    }
}

/// `{"object":"list","data":[...]}` over `entries`.
fn list_body<'a>(entries: impl Iterator<Item = &'a Entry> + Clone) -> Bytes {
    let size: usize = entries.clone().map(|e| e.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 32);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, entry) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&entry.json);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// One served entry: `id` is `[alias]id`, `object` is `"model"`, `created` is the upstream's
/// number (0 when it has none), `owned_by` the upstream's text (the alias when it has none);
/// every other upstream field follows unchanged, in the upstream's order.
fn entry_json(alias: &str, prefixed_id: &str, fields: &[(String, Box<RawValue>)]) -> Bytes {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    };
    let created = field("created")
        .filter(|v| serde_json::from_str::<serde_json::Number>(v.get()).is_ok())
        .map_or("0", RawValue::get);
    let owned_by = field("owned_by")
        .filter(|v| serde_json::from_str::<String>(v.get()).is_ok_and(|s| !s.is_empty()))
        .map_or_else(|| json_string(alias), |v| v.get().to_owned());
    let mut out = String::with_capacity(64 + prefixed_id.len());
    out.push_str("{\"id\":");
    out.push_str(&json_string(prefixed_id));
    out.push_str(",\"object\":\"model\",\"created\":");
    out.push_str(created);
    out.push_str(",\"owned_by\":");
    out.push_str(&owned_by);
    for (key, value) in fields {
        if matches!(key.as_str(), "object" | "created" | "owned_by") {
            continue;
        }
        out.push(',');
        out.push_str(&json_string(key));
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Bytes::from(out)
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ids(parsed: &Parsed) -> Vec<&str> {
        parsed.models.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn reads_every_shape_seen_in_the_wild() {
        let openai = br#"{"object":"list","data":[{"id":"a","object":"model","created":1,"owned_by":"x"},{"id":"b"}]}"#;
        assert_eq!(ids(&parse_listing(openai).expect("openai")), ["a", "b"]);
        let strings = br#"{"data":["a","b"]}"#;
        assert_eq!(ids(&parse_listing(strings).expect("strings")), ["a", "b"]);
        let bare_objects = br#" [{"id":"a"},{"id":"b"}] "#;
        assert_eq!(ids(&parse_listing(bare_objects).expect("bare")), ["a", "b"]);
        let bare_strings = br#"["a","b"]"#;
        assert_eq!(ids(&parse_listing(bare_strings).expect("bare")), ["a", "b"]);
        let bom = b"\xEF\xBB\xBF{\"data\":[{\"id\":\"bom-model\"}]}";
        assert_eq!(ids(&parse_listing(bom).expect("bom")), ["bom-model"]);
        let empty = br#"{"data":[]}"#;
        assert!(parse_listing(empty).expect("empty").models.is_empty());
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(matches!(
            parse_listing(b"<html>oops"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(parse_listing(b""), Err(ParseError::NotJson(_))));
        for not_a_list in [
            &br#"{"data":5}"#[..],
            br#"{"data":{"id":"a"}}"#,
            br#"{"models":["a"]}"#,
            br#""a""#,
            b"42",
            b"null",
        ] {
            assert_eq!(
                parse_listing(not_a_list).expect_err("not a list"),
                ParseError::NotAList,
                "{}",
                String::from_utf8_lossy(not_a_list)
            );
        }
        assert_eq!(
            parse_listing(br#"{"data":[{"name":"a"},{"id":7},{"id":""},null,3]}"#)
                .expect_err("no ids"),
            ParseError::NoIds(5)
        );
        assert_eq!(
            parse_listing(br#"[{"id":" "}]"#)
                .expect_err("no ids")
                .to_string(),
            "the one entry of its list has no usable \"id\" (a string not blank)"
        );
        assert_eq!(
            ParseError::NoIds(2).to_string(),
            "none of the 2 entries of its list has a usable \"id\" (a string not blank)"
        );
    }

    #[test]
    fn entries_without_an_id_are_skipped_and_counted() {
        let parsed = parse_listing(
            br#"[{"id":"a"},{"name":"b"},"c",{"id":null},[],{"id":"  "},"\t",{"id":""}]"#,
        )
        .expect("partly good");
        assert_eq!(ids(&parsed), ["a", "c"]);
        assert_eq!(parsed.skipped, 6, "blank ids are counted as empty ones are");
    }

    fn merged(servers: &[ServerInput<'_>]) -> (MergedList, Vec<Value>) {
        let list = MergedList::merge(servers);
        let body: Value = serde_json::from_slice(&list.body(|_| true)).expect("json");
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().expect("data").clone();
        (list, data)
    }

    #[test]
    fn entries_keep_upstream_fields_and_always_have_the_required_ones() {
        let parsed = parse_listing(
            br#"{"data":[
                {"id":"m1","object":"engine","created":1700000000,"owned_by":"acme","context_length":8192,"pricing":{"prompt":"0"}},
                {"id":"m2","created":"yesterday","owned_by":""},
                "m3"
            ]}"#,
        )
        .expect("parsed");
        let no_filter = Filter::parse("");
        let (_, data) = merged(&[ServerInput {
            alias: "or",
            source: Source::Upstream(&parsed.models),
            filter: &no_filter,
            append: &[],
        }]);
        assert_eq!(
            data[0],
            json!({"id": "[or]m1", "object": "model", "created": 1700000000, "owned_by": "acme",
                   "context_length": 8192, "pricing": {"prompt": "0"}})
        );
        assert_eq!(
            data[1],
            json!({"id": "[or]m2", "object": "model", "created": 0, "owned_by": "or"})
        );
        assert_eq!(
            data[2],
            json!({"id": "[or]m3", "object": "model", "created": 0, "owned_by": "or"})
        );
    }

    #[test]
    fn blank_ids_are_not_listed() {
        let upstream = parse_listing(br#"["m", " ", ""]"#).expect("parsed").models;
        let none = Filter::parse("");
        let blanks = [
            "a".to_owned(),
            String::new(),
            "  ".to_owned(),
            "\t".to_owned(),
        ];
        let (_, data) = merged(&[
            ServerInput {
                alias: "ov",
                source: Source::Override(&blanks),
                filter: &none,
                append: &blanks,
            },
            ServerInput {
                alias: "up",
                source: Source::Upstream(&upstream),
                filter: &none,
                append: &[],
            },
        ]);
        let ids: Vec<&str> = data.iter().map(|e| e["id"].as_str().expect("id")).collect();
        assert_eq!(ids, ["[ov]a", "[up]m"]);
    }

    #[test]
    fn filter_override_append_and_unique_ids() {
        let upstream = parse_listing(br#"["gpt-4o","gpt-4o","o1","gpt-free","claude:free"]"#)
            .expect("parsed")
            .models;
        let gpt = Filter::parse("gpt*");
        let none = Filter::parse("");
        let append = ["o1".to_owned(), "extra".to_owned(), "extra".to_owned()];
        let override_ids = ["x".to_owned(), "y".to_owned()];
        let (list, data) = merged(&[
            ServerInput {
                alias: "a",
                source: Source::Upstream(&upstream),
                filter: &gpt,
                append: &append,
            },
            ServerInput {
                alias: "b",
                source: Source::Override(&override_ids),
                filter: &gpt,
                append: &["z".to_owned()],
            },
            ServerInput {
                alias: "c",
                source: Source::Nothing,
                filter: &none,
                append: &["gpt-4o".to_owned()],
            },
        ]);
        let ids: Vec<&str> = data.iter().map(|e| e["id"].as_str().expect("id")).collect();
        assert_eq!(
            ids,
            [
                "[a]gpt-4o",
                "[a]gpt-free",
                "[a]o1",
                "[a]extra",
                "[b]x",
                "[b]y",
                "[b]z",
                "[c]gpt-4o"
            ]
        );
        assert_eq!(list.len(), 8);
        assert_eq!(list.owner("gpt-4o", |_| true), Some("a"));
        assert_eq!(list.owner("gpt-4o", |a| a != "a"), Some("c"));
        assert_eq!(list.owner("claude:free", |_| true), None, "filtered out");
        assert_eq!(
            list.owner("[a]gpt-4o", |_| true),
            None,
            "owners are raw ids"
        );
        assert!(list.get("[b]y", |_| true).is_some());
        assert!(list.get("[b]y", |a| a != "b").is_none());
    }

    #[test]
    fn a_narrowed_body_holds_only_visible_servers() {
        let none = Filter::parse("");
        let list = MergedList::merge(&[
            ServerInput {
                alias: "a",
                source: Source::Override(&["1".to_owned()]),
                filter: &none,
                append: &[],
            },
            ServerInput {
                alias: "b",
                source: Source::Override(&["2".to_owned()]),
                filter: &none,
                append: &[],
            },
        ]);
        let body: Value = serde_json::from_slice(&list.body(|a| a == "b")).expect("json");
        assert_eq!(
            body,
            json!({"object": "list", "data": [
                {"id": "[b]2", "object": "model", "created": 0, "owned_by": "b"}
            ]})
        );
        let body: Value = serde_json::from_slice(&list.body(|_| false)).expect("json");
        assert_eq!(body, json!({"object": "list", "data": []}));
    }

    #[test]
    fn odd_ids_stay_valid_json() {
        let upstream = parse_listing(br#"[{"id":"a\"b\\c\u00e9","weird key\"":1}]"#)
            .expect("parsed")
            .models;
        let none = Filter::parse("");
        let (_, data) = merged(&[ServerInput {
            alias: "s",
            source: Source::Upstream(&upstream),
            filter: &none,
            append: &[],
        }]);
        assert_eq!(data[0]["id"], "[s]a\"b\\cé");
        assert_eq!(data[0]["weird key\""], 1);
    }
}

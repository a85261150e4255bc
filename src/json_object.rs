//! JSON objects read as objects only, for every struct read from an answer or a request.
//!
//! serde's derived `Deserialize` for a struct also takes a JSON list, member by member in
//! order: `["c", "m", [...]]` read as a chunk's id, model and choices, `[0, {"content":
//! "x"}]` as a choice's index and delta, `[10, 5]` as a usage's input and output. What an
//! upstream (or a client) sends as a list is never one of these objects: it is skipped, as
//! any other value of the wrong type is. Nothing here reads more than serde would.

use serde::Deserialize;

/// `text` when it is (opens as) a JSON object: the one check before a derived struct reads
/// a whole document. White space before it is JSON's own.
pub fn object_text(text: &str) -> Option<&str> {
    text.trim_ascii_start().starts_with('{').then_some(text)
}

/// `T` read from `text` when that is a JSON object; `None` for a list (or any other value),
/// and for an object `T` refuses.
pub fn from_object<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    serde_json::from_str(object_text(text)?).ok()
}

/// [`from_object`] of bytes.
pub fn from_object_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// A list of `T`s read from `text`, each item an object; `None` when `text` is not a list,
/// or an item not an object (a list above all) or not a `T`.
pub fn from_objects<'a, T: Deserialize<'a>>(text: &'a str) -> Option<Vec<T>> {
    let items = serde_json::from_str::<Vec<Object<T>>>(text).ok()?;
    Some(items.into_iter().map(|item| item.0).collect())
}

/// A `T` that was a JSON object: a list (or any other value) fails, where `T` itself would
/// take a list by position. Borrowed strings and raw values in `T` stay borrowed.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// For a struct's `Option<T>` member (`deserialize_with`): `null` or absent is `None`, an
/// object is `T`, anything else (a list above all) fails the struct.
pub fn object_only<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|object| object.0))
}

/// For a struct's `Option<Vec<T>>` member (`deserialize_with`): a list of objects, each a
/// `T`; an item that is not an object (a list above all) fails the struct, as an item of
/// another wrong type does.
pub fn objects_only<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Option::<Vec<Object<T>>>::deserialize(deserializer)?;
    Ok(items.map(|items| items.into_iter().map(|item| item.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair<'a> {
        #[serde(borrow)]
        a: &'a str,
        #[serde(default)]
        b: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    struct Outer<'a> {
        #[serde(borrow, default, deserialize_with = "object_only")]
        one: Option<Pair<'a>>,
        #[serde(borrow, default, deserialize_with = "objects_only")]
        many: Option<Vec<Pair<'a>>>,
    }

    /// The derive alone reads a list by position; these never do.
    #[test]
    fn a_list_is_never_read_as_an_object() {
        assert!(serde_json::from_str::<Pair<'_>>(r#"["x", 1]"#).is_ok());
        assert_eq!(from_object::<Pair<'_>>(r#"["x", 1]"#), None);
        assert_eq!(from_object_slice::<Pair<'_>>(br#" ["x", 1]"#), None);
        assert_eq!(
            from_object::<Pair<'_>>(r#" {"a": "x", "b": 1}"#),
            Some(Pair { a: "x", b: Some(1) })
        );
        assert!(serde_json::from_str::<Object<Pair<'_>>>(r#"["x", 1]"#).is_err());
        assert_eq!(from_objects::<Pair<'_>>(r#"[["x", 1]]"#), None);
        assert_eq!(
            from_objects::<Pair<'_>>(r#"[{"a": "x"}]"#).map(|v| v.len()),
            Some(1)
        );
        let outer: Outer<'_> =
            serde_json::from_str(r#"{"one": {"a": "x"}, "many": [{"a": "y"}]}"#).expect("outer");
        assert_eq!(outer.one.map(|p| p.a), Some("x"));
        assert_eq!(outer.many.map(|m| m.len()), Some(1));
        let nulls: Outer<'_> = serde_json::from_str(r#"{"one": null, "many": null}"#).expect("");
        assert!(nulls.one.is_none() && nulls.many.is_none());
        for listed in [
            r#"{"one": ["x"]}"#,
            r#"{"many": [["y"]]}"#,
            r#"{"many": [5]}"#,
        ] {
            assert!(
                serde_json::from_str::<Outer<'_>>(listed).is_err(),
                "{listed}"
            );
        }
    }
}

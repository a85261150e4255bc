//! The table `llmsrouter models` prints for people.
//!
//! Pure: the `/v1/models` JSON in, text out, so the table can never show something the JSON
//! (and the server) would not.

use serde::Deserialize;
use unicode_width::UnicodeWidthStr;

/// The merged list as the table reads it: only the three columns. Every other field an
/// upstream sent is skipped unread (serde skips without recursing), so one entry nested
/// deeper than the JSON reader's recursion limit cannot keep the whole table from printing,
/// as it did when the list was read into a `Value` first.
///
/// Derived, so a JSON list would be taken by position, and not read through
/// [`crate::json_object`]: the text is only ever the router's own, the body
/// [`super::list::MergedList::body`] writes (`{"object":"list","data":[...]}`, each entry an
/// object it writes itself with a string `id` and `owned_by` and a number `created`). What
/// an upstream sent reaches it only as the values of the other fields, which are skipped.
#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    data: Vec<Row>,
}

/// One entry; the list module gives every entry a string `id` and `owned_by` and a number
/// `created`, but the table does not rely on it.
#[derive(Deserialize)]
struct Row {
    #[serde(default)]
    id: Scalar,
    #[serde(default)]
    owned_by: Scalar,
    #[serde(default)]
    created: Scalar,
}

/// A field as the table shows it. Any JSON value is taken (an array or object skipped unread),
/// so a field of an unexpected type costs its cell, not the table.
#[derive(Default)]
enum Scalar {
    Text(String),
    /// The number, and its text as JSON writes it.
    Number(f64, String),
    #[default]
    Other,
}

impl Scalar {
    /// A text cell: strings escaped, numbers and booleans as JSON writes them.
    fn cell(self) -> String {
        match self {
            Self::Text(text) => crate::printable(&text),
            Self::Number(_, text) => text,
            Self::Other => String::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64, v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64, v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        let text = serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string());
        Ok(Scalar::Number(v, text))
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Scalar::Other)
    }
}

/// One row per entry of the `/v1/models` JSON `body`: id, owned_by, created (a UTC date;
/// `-` when unknown).
pub fn render(body: &[u8]) -> Result<String, serde_json::Error> {
    let listing: Listing = serde_json::from_slice(body)?;
    let rows: Vec<[String; 3]> = listing
        .data
        .into_iter()
        .map(|row| {
            [
                row.id.cell(),
                row.owned_by.cell(),
                match row.created {
                    Scalar::Number(secs, _) if secs > 0.0 && secs < 1e12 => utc_date(secs as i64),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok("(no models)\n".to_owned());
    }
    let header = ["ID", "OWNED BY", "CREATED"].map(str::to_owned);
    let width = |column: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|row| row[column].width())
            .max()
            .unwrap_or(0)
    };
    let (id_width, owner_width) = (width(0), width(1));
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        // Padded by display width, so CJK ids and owners line up.
        let pad = |cell: &str, width: usize| " ".repeat(width.saturating_sub(cell.width()));
        let line = format!(
            "{}{}  {}{}  {}",
            row[0],
            pad(&row[0], id_width),
            row[1],
            pad(&row[1], owner_width),
            row[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// `YYYY-MM-DD` of a Unix time (days-to-civil conversion of the proleptic Gregorian calendar).
fn utc_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn table(list: &Value) -> String {
        render(&serde_json::to_vec(list).expect("json")).expect("a list")
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14");
        assert_eq!(utc_date(1_709_251_199), "2024-02-29");
        assert_eq!(utc_date(1_709_251_200), "2024-03-01");
    }

    #[test]
    fn a_table_with_aligned_columns() {
        let list = json!({"object": "list", "data": [
            {"id": "[openrouter]google/gemini-2.0-flash", "owned_by": "google", "created": 1_700_000_000},
            {"id": "[local]qwen", "owned_by": "local", "created": 0},
        ]});
        assert_eq!(
            table(&list),
            "ID                                   OWNED BY  CREATED\n\
             [openrouter]google/gemini-2.0-flash  google    2023-11-14\n\
             [local]qwen                          local     -\n"
        );
        assert_eq!(table(&json!({"data": []})), "(no models)\n");
    }

    #[test]
    fn cells_show_control_and_bidi_characters_escaped() {
        let list = json!({"data": [
            {"id": "[a]x\nFAKE  row", "owned_by": "\u{1b}[31mred"},
            {"id": "[a]\u{202e}evil", "owned_by": "a"},
        ]});
        assert_eq!(
            table(&list),
            "ID               OWNED BY       CREATED\n\
             [a]x\\nFAKE  row  \\u{1b}[31mred  -\n\
             [a]\\u{202e}evil  a              -\n"
        );
    }

    #[test]
    fn an_entry_nested_past_the_recursion_limit_does_not_hide_the_others() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!(
            r#"{{"object":"list","data":[{{"id":"[a]deep","owned_by":"a","created":0,"extra":{deep}}},{{"id":"[b]ok","owned_by":"b","created":1700000000}},{{"id":7,"owned_by":{{"x":[1]}},"created":"soon"}}]}}"#
        );
        assert!(
            serde_json::from_str::<Value>(&body).is_err(),
            "past the limit"
        );
        assert_eq!(
            render(body.as_bytes()).expect("a list"),
            "ID       OWNED BY  CREATED\n\
             [a]deep  a         -\n\
             [b]ok    b         2023-11-14\n\
             7                  -\n"
        );
    }
}

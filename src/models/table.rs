//! The table `llmsrouter models` prints for people.
//!
//! Pure: the `/v1/models` JSON in, text out, so the table can never show something the JSON
//! (and the server) would not.

use serde_json::Value;
use unicode_width::UnicodeWidthStr;

/// One row per entry: id, owned_by, created (a UTC date; `-` when unknown).
pub fn render(list: &Value) -> String {
    let rows: Vec<[String; 3]> = list["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            [
                text(&entry["id"]),
                text(&entry["owned_by"]),
                entry["created"]
                    .as_f64()
                    .filter(|secs| *secs > 0.0 && *secs < 1e12)
                    .map_or_else(|| "-".to_owned(), |secs| utc_date(secs as i64)),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(no models)\n".to_owned();
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
    out
}

/// A cell: ids and owners come from upstreams' lists, so a newline (a forged row), an
/// escape sequence or a bidi override in one is shown escaped, as in every other table.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => crate::printable(s),
        Value::Null => String::new(),
        other => other.to_string(),
    }
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
    use serde_json::json;

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
            render(&list),
            "ID                                   OWNED BY  CREATED\n\
             [openrouter]google/gemini-2.0-flash  google    2023-11-14\n\
             [local]qwen                          local     -\n"
        );
        assert_eq!(render(&json!({"data": []})), "(no models)\n");
    }

    #[test]
    fn cells_show_control_and_bidi_characters_escaped() {
        let list = json!({"data": [
            {"id": "[a]x\nFAKE  row", "owned_by": "\u{1b}[31mred"},
            {"id": "[a]\u{202e}evil", "owned_by": "a"},
        ]});
        assert_eq!(
            render(&list),
            "ID               OWNED BY       CREATED\n\
             [a]x\\nFAKE  row  \\u{1b}[31mred  -\n\
             [a]\\u{202e}evil  a              -\n"
        );
    }
}

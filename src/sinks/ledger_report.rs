//! `llmsrouter usage`: totals from the usage ledger grouped by provider, user, model or day,
//! as a readable table or JSON.
//!
//! Reads only; the query is built from a fixed set of column names, never from user text
//! (the `--since` day is a bound parameter).

use rusqlite::Connection;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use unicode_width::UnicodeWidthStr;

use crate::sinks::ledger::is_error_outcome;
use crate::usage::seconds_number;

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Provider,
    User,
    Model,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::User => "user",
            Self::Model => "model",
            Self::Day => "day",
        }
    }

    /// What a row is grouped by. A row with no model sent (a read-back) is grouped by the
    /// model that answered, if its answer named one: a Responses API `background: true`
    /// generation's usage is in such a row (the read-back that found it done), and grouped as
    /// "-" it was spend of no model. A file upload names none and stays "-".
    fn column(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::User => "username",
            Self::Model => "CASE WHEN model = '' THEN COALESCE(response_model, '') ELSE model END",
            Self::Day => "day",
        }
    }
}

/// Totals of one group (or of everything).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// The group's value; `None` for requests without a user (accounts off) and for the total.
    pub key: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), billed above plain input: part of `input_tokens`.
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    /// Sum of the costs upstreams reported; `None` when none did.
    pub cost: Option<f64>,
    /// Upstream errors, router errors and broken streams (client disconnects are not errors).
    pub errors: u64,
    /// Requests cut before their usage arrived (their tokens are not counted).
    pub partial: u64,
    /// Requests for a model that ended well with no usage from the upstream (a stream from a
    /// server that ignores `include_usage`, or asked with `stream_usage: false`; a text to
    /// speech answer): their tokens are unknown too, not zero, and not in the sums.
    pub no_usage: u64,
    /// Seconds of audio of transcriptions billed by duration (`whisper-1`), which count no
    /// tokens; with their fractions (`9.7`), shown to the millisecond.
    pub audio_seconds: f64,
}

impl UsageTotals {
    fn add(&mut self, other: &Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cache_creation_tokens = self
            .cache_creation_tokens
            .saturating_add(other.cache_creation_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cost = match (self.cost, other.cost) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.errors = self.errors.saturating_add(other.errors);
        self.partial = self.partial.saturating_add(other.partial);
        self.no_usage = self.no_usage.saturating_add(other.no_usage);
        self.audio_seconds += other.audio_seconds;
    }

    fn to_json(&self, key_name: Option<&str>) -> Value {
        let mut obj = Map::new();
        if let Some(name) = key_name {
            obj.insert(name.to_owned(), json!(self.key));
        }
        obj.insert("requests".into(), json!(self.requests));
        obj.insert("input_tokens".into(), json!(self.input_tokens));
        obj.insert("output_tokens".into(), json!(self.output_tokens));
        obj.insert("total_tokens".into(), json!(self.total_tokens));
        obj.insert("cached_tokens".into(), json!(self.cached_tokens));
        obj.insert(
            "cache_creation_tokens".into(),
            json!(self.cache_creation_tokens),
        );
        obj.insert("reasoning_tokens".into(), json!(self.reasoning_tokens));
        obj.insert("cost".into(), json!(self.cost.map(significant)));
        obj.insert("errors".into(), json!(self.errors));
        obj.insert("partial".into(), json!(self.partial));
        obj.insert("no_usage".into(), json!(self.no_usage));
        obj.insert(
            "audio_seconds".into(),
            Value::Number(seconds_number(self.audio_seconds)),
        );
        Value::Object(obj)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub by: GroupBy,
    /// First day included (UTC), as given.
    pub since: Option<String>,
    pub rows: Vec<UsageTotals>,
    pub total: UsageTotals,
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A row of a request for a model that ended well with no usage from the upstream. A whole
/// Responses API answer without usage is left out: a `background: true` create answers
/// queued, and its tokens are counted in the row of the read-back that finds it done (see
/// `record::BackgroundResults`), so it is no usage lost; the ledger does not say which
/// create asked for background, and a Responses API answer done at once has its usage.
const NO_USAGE: &str = "outcome = 'success' AND usage_known = 0 AND usage_partial = 0 \
    AND model <> '' AND NOT (endpoint = '/responses' AND stream = 0)";

/// Whether the database has the ledger's table: a file read as it is (read-only, from the
/// Python version) may have none yet, and an admin may have dropped it (`serve` makes it
/// again, empty). `llmsrouter usage` says so rather than print zeros as if nothing was used.
pub fn has_ledger(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND lower(name) = 'usage_ledger')",
        [],
        |row| row.get(0),
    )
}

/// Reads the ledger's totals. `since` must already be a valid `YYYY-MM-DD`.
pub fn query(conn: &Connection, by: GroupBy, since: Option<&str>) -> rusqlite::Result<UsageReport> {
    // A database read as it is (read-only, from the Python version) may have no ledger yet:
    // nothing was recorded there, which is an empty report, not an error.
    if !has_ledger(conn)? {
        return Ok(UsageReport {
            by,
            since: since.map(str::to_owned),
            rows: Vec::new(),
            total: UsageTotals::default(),
        });
    }
    // A file read as it is may have a ledger older than its `audio_seconds` column (schema
    // step 4): none of its rows had any then.
    let has_audio_seconds: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('usage_ledger') WHERE name = 'audio_seconds')",
        [],
        |row| row.get(0),
    )?;
    let audio_seconds = if has_audio_seconds {
        "TOTAL(audio_seconds)"
    } else {
        "0.0"
    };
    let sql = format!(
        "SELECT {col} AS key, COUNT(*) AS requests, TOTAL(input_tokens), TOTAL(output_tokens),
            TOTAL(total_tokens), TOTAL(cached_tokens), TOTAL(reasoning_tokens), SUM(cost),
            outcome, TOTAL(usage_partial), {audio_seconds}, TOTAL(cache_creation_tokens),
            TOTAL({no_usage})
         FROM usage_ledger WHERE (?1 IS NULL OR day >= ?1)
         GROUP BY {col}, outcome",
        col = by.column(),
        no_usage = NO_USAGE
    );
    let mut statement = conn.prepare(&sql)?;
    let mut groups: Vec<UsageTotals> = Vec::new();
    let rows = statement.query_map([since], |r| {
        let outcome: String = r.get(8)?;
        let requests = count(r.get(1)?);
        Ok(UsageTotals {
            key: group_key(r.get_ref(0)?),
            requests,
            input_tokens: r.get::<_, f64>(2)? as u64,
            output_tokens: r.get::<_, f64>(3)? as u64,
            total_tokens: r.get::<_, f64>(4)? as u64,
            cached_tokens: r.get::<_, f64>(5)? as u64,
            cache_creation_tokens: r.get::<_, f64>(11)? as u64,
            reasoning_tokens: r.get::<_, f64>(6)? as u64,
            cost: r.get(7)?,
            errors: if is_error_outcome(&outcome) {
                requests
            } else {
                0
            },
            partial: r.get::<_, f64>(9)? as u64,
            no_usage: r.get::<_, f64>(12)? as u64,
            audio_seconds: r.get::<_, f64>(10)?,
        })
    })?;
    // Each group's place in `groups`: a ledger may hold tens of thousands of models (the
    // names clients sent), and a search of the list per row took seconds.
    let mut places: std::collections::HashMap<Option<String>, usize> =
        std::collections::HashMap::new();
    for row in rows {
        let row = row?;
        match places.get(&row.key) {
            Some(&at) => groups[at].add(&row),
            None => {
                places.insert(row.key.clone(), groups.len());
                groups.push(row);
            }
        }
    }
    // Days in calendar order; the rest busiest first.
    if by == GroupBy::Day {
        groups.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        groups.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.key.cmp(&b.key)));
    }
    let mut total = UsageTotals::default();
    for group in &groups {
        total.add(group);
    }
    Ok(UsageReport {
        by,
        since: since.map(str::to_owned),
        rows: groups,
        total,
    })
}

/// A group's key as the report shows it, whatever the row holds: a row written by hand or by
/// another program (text that is not UTF-8, a blob, a number) is shown as `user list` shows
/// such a name (`bob\xff`, `<blob:ff00>`), not an error that loses the whole report.
/// `None` for NULL (no user).
fn group_key(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use crate::users::names::StoredName;
    match StoredName::from_sql(value) {
        StoredName::Null => None,
        StoredName::Text(text) => Some(text),
        other => Some(other.shown()),
    }
}

impl UsageReport {
    /// `{"by": "provider", "since": null, "rows": [{"provider": "x", "requests": 1, ...}],
    /// "total": {...}}`
    pub fn to_json(&self) -> Value {
        json!({
            "by": self.by.as_str(),
            "since": self.since,
            "rows": self.rows.iter().map(|r| r.to_json(Some(self.by.as_str()))).collect::<Vec<_>>(),
            "total": self.total.to_json(None),
        })
    }

    /// [`Self::to_json`]'s text, the same bytes, written a row at a time: a tree of every row at
    /// once grew with the groups (some hundreds of MB for `--by model` over tens of thousands
    /// of models) where one row's is enough. Keys in serde_json's order (sorted), as `to_json` prints them.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        write!(out, "{{\"by\":")?;
        serde_json::to_writer(&mut *out, self.by.as_str())?;
        write!(out, ",\"rows\":[")?;
        for (at, row) in self.rows.iter().enumerate() {
            if at > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &row.to_json(Some(self.by.as_str())))?;
        }
        write!(out, "],\"since\":")?;
        serde_json::to_writer(&mut *out, &self.since)?;
        write!(out, ",\"total\":")?;
        serde_json::to_writer(&mut *out, &self.total.to_json(None))?;
        out.write_all(b"}")
    }

    /// Whether the rows' names are cut in the table ([`Self::names_cut`]): user and model
    /// names, recorded up to 1,024 characters each (a provider is an alias or a host, a day
    /// a date).
    fn cuts_names(&self) -> bool {
        matches!(self.by, GroupBy::User | GroupBy::Model)
    }

    /// How many rows of a report by user or model [`Self::to_table`] shows told apart by a
    /// hash ([`tell_apart`]): two names cut alike (the same first 80 characters and length).
    pub fn names_told_apart(&self) -> usize {
        if !self.cuts_names() {
            return 0;
        }
        self.shown_keys().1
    }

    /// How many rows of a report by user or model [`Self::to_table`] shows with their name
    /// cut, as the `user list` table cuts one: past 80 characters, its first 80, `…` and its
    /// length in bytes (a name is recorded up to 1,024 characters, and printed whole it
    /// widened every row of the table to it). The command says so after the table; `--json`
    /// has them whole.
    pub fn names_cut(&self) -> usize {
        if !self.cuts_names() {
            return 0;
        }
        self.rows
            .iter()
            .filter(|row| {
                row.key
                    .as_deref()
                    .is_some_and(crate::users::names::cut_in_list)
            })
            .count()
    }

    /// A fixed-width table with a TOTAL line; `-` for no user and for unknown cost. Four
    /// columns come after the others, only when some request in the report had any:
    /// `PARTIAL` (requests cut before their usage came, whose tokens are unknown, not zero),
    /// `NO_USAGE` (requests for a model that ended with no usage reported: unknown too),
    /// `CACHE_WRITE` (prompt-cache writes) and `AUDIO_SECONDS` (transcriptions billed by
    /// duration), so the other columns keep their places either way. A user, provider or
    /// model named `TOTAL` or `-` is shown in double quotes, so its row reads neither as the
    /// total line nor as "none".
    pub fn to_table(&self) -> String {
        let partial = self.total.partial > 0;
        let no_usage = self.total.no_usage > 0;
        let cache_write = self.total.cache_creation_tokens > 0;
        let audio = self.total.audio_seconds > 0.0;
        let mut header = vec![
            self.by.as_str().to_ascii_uppercase(),
            "REQUESTS".into(),
            "INPUT".into(),
            "OUTPUT".into(),
            "CACHED".into(),
            "REASONING".into(),
            "COST".into(),
            "ERRORS".into(),
        ];
        if partial {
            header.push("PARTIAL".into());
        }
        if no_usage {
            header.push("NO_USAGE".into());
        }
        if cache_write {
            header.push("CACHE_WRITE".into());
        }
        if audio {
            header.push("AUDIO_SECONDS".into());
        }
        let cells = |t: &UsageTotals, key: String| -> Vec<String> {
            let mut cells = vec![
                key,
                t.requests.to_string(),
                t.input_tokens.to_string(),
                t.output_tokens.to_string(),
                t.cached_tokens.to_string(),
                t.reasoning_tokens.to_string(),
                t.cost.map_or_else(|| "-".to_owned(), cost_cell),
                t.errors.to_string(),
            ];
            if partial {
                cells.push(t.partial.to_string());
            }
            if no_usage {
                cells.push(t.no_usage.to_string());
            }
            if cache_write {
                cells.push(t.cache_creation_tokens.to_string());
            }
            if audio {
                cells.push(seconds_number(t.audio_seconds).to_string());
            }
            cells
        };
        let mut lines: Vec<Vec<String>> = vec![header];
        for (row, key) in self.rows.iter().zip(self.shown_keys().0) {
            lines.push(cells(row, key));
        }
        lines.push(cells(&self.total, "TOTAL".into()));
        // By display width, so user and model names in CJK line up.
        let mut widths = vec![0usize; lines[0].len()];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.width());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                let pad = " ".repeat(w.saturating_sub(cell.width()));
                if i == 0 {
                    text.push_str(cell);
                    text.push_str(&pad);
                } else {
                    text.push_str("  ");
                    text.push_str(&pad);
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// The first cell of each row as [`Self::to_table`] shows it, and how many of them are
    /// told apart by a hash ([`tell_apart`]).
    fn shown_keys(&self) -> (Vec<String>, usize) {
        let by_user = self.by == GroupBy::User;
        let cut = self.cuts_names();
        let mut keys: Vec<String> = self
            .rows
            .iter()
            .map(|row| {
                // Usernames and model names come from the database as they were stored; a
                // username is shown as `user list` shows it (names that differ only where it
                // cannot be seen print differently; one past 80 characters cut, see
                // [`Self::names_cut`]; a model name too). None or empty (no user; a file
                // upload, which names no model) is `-`, not a blank cell.
                let shown = if by_user {
                    crate::users::names::in_list
                } else if cut {
                    crate::users::names::text_in_list
                } else {
                    crate::printable
                };
                // An empty user name is a name (`user list` shows it `""`); an empty model is
                // a request that named none.
                match row.key.as_deref().filter(|key| by_user || !key.is_empty()) {
                    None => "-".into(),
                    Some(key) => match shown(key) {
                        shown if shown == "TOTAL" || shown == "-" => format!("\"{shown}\""),
                        shown => shown,
                    },
                }
            })
            .collect();
        let mut told_apart = 0;
        if cut {
            let names: Vec<Option<&str>> = self.rows.iter().map(|r| r.key.as_deref()).collect();
            told_apart = tell_apart(&names, &mut keys);
        }
        (keys, told_apart)
    }
}

/// Makes the rows' names (`names`, as recorded; `shown`, as the table shows them) that print
/// alike print apart, and says how many it changed: each of them is followed by ` #` and the
/// first 8 hex digits of the SHA-256 of its whole name as recorded (more, should 8 be alike
/// too). Two names cut alike (the same first 80 characters and length, [`UsageReport::names_cut`])
/// were two identical rows, as if one user's usage were split in two. The digits are those of
/// the name alone, so a user keeps them from one report to the next; `--json` gives every
/// name whole.
fn tell_apart(names: &[Option<&str>], shown: &mut [String]) -> usize {
    let alike = |shown: &[String]| -> Vec<usize> {
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for cell in shown {
            *seen.entry(cell.as_str()).or_default() += 1;
        }
        (0..shown.len())
            .filter(|&i| seen[shown[i].as_str()] > 1)
            .collect()
    };
    let mut apart = alike(shown);
    if apart.is_empty() {
        return 0;
    }
    let plain: Vec<String> = shown.to_vec();
    let hashes: Vec<String> = names
        .iter()
        .map(|name| {
            let digest = Sha256::digest(name.unwrap_or_default().as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    for digits in [8, 16, 32, 64] {
        for &i in &apart {
            shown[i] = format!("{} #{}", plain[i], &hashes[i][..digits]);
        }
        // A name that prints as another's with its digits (`amy #0123abcd`, written so) is
        // told apart as well.
        let still = alike(shown);
        if still.is_empty() {
            break;
        }
        apart.extend(still);
        apart.sort_unstable();
        apart.dedup();
    }
    apart.len()
}

/// `cost` to 12 significant digits: a sum of floats carries noise in its last digits that
/// depends on the order it was added in (`0.024` by provider, `0.023999999999999997` by day
/// for the same rows); no upstream reports a cost that precisely.
fn significant(cost: f64) -> f64 {
    format!("{cost:.11e}").parse().unwrap_or(cost)
}

/// A cost as the table shows it: six decimals (`0.002000`); a non-zero cost that would show
/// as `0.000000` gets two significant digits instead (`0.00000040`), so it does not read as
/// free (below a trillionth, in exponent form: `1.0e-13`). `--json` has the exact value.
fn cost_cell(cost: f64) -> String {
    let six = format!("{cost:.6}");
    // Asked of the text, not of the number: 5e-7 (the float just below a half-millionth)
    // prints as 0.000000 though a comparison with 0.0000005 puts it at or above.
    let reads_as_zero = six
        .trim_start_matches('-')
        .bytes()
        .all(|b| b == b'0' || b == b'.');
    if cost == 0.0 || !reads_as_zero || !cost.is_finite() {
        return six;
    }
    // -log10 of 4e-7 is 6.4: its first digit is the 7th decimal, and two digits need 8.
    let decimals = (-cost.abs().log10()).floor() as usize + 2;
    if decimals > 12 {
        // Below a trillionth nothing reads well in decimals.
        return format!("{cost:.1e}");
    }
    format!("{cost:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::sinks::ledger::{LedgerRow, insert_rows};

    fn row<'a>(
        day: &str,
        user: Option<&'a str>,
        provider: &'a str,
        outcome: &'static str,
    ) -> LedgerRow<'a> {
        LedgerRow {
            request_id: "r".into(),
            started_at: format!("{day}T00:00:00.000Z"),
            day: day.into(),
            username: user.map(Into::into),
            provider: provider.into(),
            mode: "alias",
            endpoint: "/chat/completions".into(),
            model: "m".into(),
            response_model: None,
            stream: false,
            status: Some(200),
            outcome,
            error: None,
            latency_ms: 1,
            ttft_ms: None,
            input_tokens: 10,
            output_tokens: 3,
            total_tokens: 13,
            cached_tokens: 2,
            cache_creation_tokens: 0,
            reasoning_tokens: 1,
            cost: (provider == "openrouter").then_some(0.001),
            usage_known: true,
            usage_partial: false,
            audio_seconds: None,
        }
    }

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        insert_rows(
            &mut conn,
            &[
                row("2025-01-01", Some("ann"), "openrouter", "success"),
                row("2025-01-02", Some("ann"), "openrouter", "upstream_error"),
                row("2025-01-02", None, "deepseek", "success"),
                row("2025-01-03", Some("bob"), "deepseek", "client_disconnected"),
                row("2025-01-03", Some("bob"), "deepseek", "success"),
            ],
        )
        .expect("insert");
        (dir, conn)
    }

    #[test]
    fn groups_and_totals() {
        let (_dir, conn) = conn();
        let r = query(&conn, GroupBy::Provider, None).expect("query");
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].key.as_deref(), Some("deepseek"));
        assert_eq!(
            (r.rows[0].requests, r.rows[0].errors, r.rows[0].cost),
            (3, 0, None)
        );
        assert_eq!(r.rows[1].errors, 1);
        assert_eq!(r.rows[1].cost, Some(0.002));
        assert_eq!(r.total.requests, 5);
        assert_eq!(r.total.input_tokens, 50);
        let by_user = query(&conn, GroupBy::User, None).expect("query");
        assert!(by_user.rows.iter().any(|r| r.key.is_none()));
        let since = query(&conn, GroupBy::Day, Some("2025-01-02")).expect("query");
        let days: Vec<_> = since.rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            days,
            [Some("2025-01-02".to_owned()), Some("2025-01-03".to_owned())]
        );
    }

    /// A background generation's usage, in the row of the read-back that found it done (no
    /// model sent), is grouped under the model that answered, not with the file uploads.
    #[test]
    fn a_read_back_is_grouped_by_the_model_that_answered() {
        let (_dir, mut conn) = conn();
        let mut read_back = row("2025-01-04", None, "openai", "success");
        read_back.model = "".into();
        read_back.response_model = Some("o3-2025".into());
        let mut upload = row("2025-01-04", None, "openai", "success");
        upload.model = "".into();
        insert_rows(&mut conn, &[read_back, upload]).expect("insert");
        let r = query(&conn, GroupBy::Model, None).expect("query");
        let keys: Vec<_> = r.rows.iter().map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, [Some("m"), Some(""), Some("o3-2025")]);
    }

    #[test]
    fn table_and_json() {
        let (_dir, conn) = conn();
        let r = query(&conn, GroupBy::Provider, None).expect("query");
        let table = r.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "PROVIDER    REQUESTS  INPUT  OUTPUT  CACHED  REASONING      COST  ERRORS"
        );
        assert_eq!(
            lines[1],
            "deepseek           3     30       9       6          3         -       0"
        );
        assert_eq!(
            lines[3],
            "TOTAL              5     50      15      10          5  0.002000       1"
        );
        let j = r.to_json();
        let mut written = Vec::new();
        r.write_json(&mut written).expect("write");
        assert_eq!(String::from_utf8(written).expect("utf-8"), j.to_string());
        assert_eq!(j["by"], "provider");
        assert_eq!(j["rows"][1]["provider"], "openrouter");
        assert_eq!(j["rows"][1]["cost"], 0.002);
        assert_eq!(j["total"]["requests"], 5);
        assert!(j["total"].get("provider").is_none());
    }

    /// Prompt-cache writes (Anthropic's `cache_creation_input_tokens`, billed above plain
    /// input) are summed in the JSON always, and in a `CACHE_WRITE` column after the others
    /// when there are any; without any the table is as before (`table_and_json`).
    #[test]
    fn cache_writes_are_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        let mut written = row("2025-01-01", Some("ann"), "anthropic", "success");
        written.cache_creation_tokens = 100;
        let plain = row("2025-01-01", Some("ann"), "deepseek", "success");
        insert_rows(&mut conn, &[written.clone(), written, plain]).expect("insert");
        let r = query(&conn, GroupBy::Provider, None).expect("query");
        let j = r.to_json();
        assert_eq!(j["rows"][0]["provider"], "anthropic");
        assert_eq!(j["rows"][0]["cache_creation_tokens"], 200);
        assert_eq!(j["rows"][1]["cache_creation_tokens"], 0);
        assert_eq!(j["total"]["cache_creation_tokens"], 200);
        let table = r.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("ERRORS  CACHE_WRITE"), "{table}");
        assert!(
            lines[1].starts_with("anthropic ") && lines[1].ends_with(" 200"),
            "{table}"
        );
        assert!(lines[2].ends_with(" 0"), "{table}");
        assert!(
            lines[3].starts_with("TOTAL ") && lines[3].ends_with(" 200"),
            "{table}"
        );
    }

    /// A cost below half a millionth (a cheap model's short request) is not shown as
    /// `0.000000`, which reads as free; the JSON keeps the exact value.
    #[test]
    fn a_tiny_cost_is_not_shown_as_zero() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = db::open(&dir.path().join("u.db")).expect("open");
        let mut cheap = row("2025-01-01", Some("ann"), "cheap", "success");
        cheap.cost = Some(0.000_000_4);
        insert_rows(&mut conn, &[cheap]).expect("insert");
        let r = query(&conn, GroupBy::Provider, None).expect("query");
        let table = r.to_table();
        let total = table.lines().last().expect("total line");
        assert!(total.contains(" 0.00000040 "), "{table}");
        assert_eq!(r.to_json()["total"]["cost"], 0.000_000_4);
        // The noise of a float sum is not shown, however small the cost.
        assert_eq!(significant(0.023_999_999_999_999_997), 0.024);
        assert_eq!(significant(1.0e-13), 1.0e-13);
        assert_eq!(significant(0.1 + 0.2), 0.3);
        assert_eq!(cost_cell(0.0), "0.000000");
        assert_eq!(cost_cell(0.002), "0.002000");
        assert_eq!(cost_cell(0.000_000_6), "0.000001");
        assert_eq!(cost_cell(0.000_000_012_3), "0.000000012");
        assert_eq!(cost_cell(1e-30), "1.0e-30");
        // 5e-7 is the float just below a half-millionth: {:.6} rounds it down to zero.
        assert_eq!(cost_cell(5e-7), "0.00000050");
        assert_eq!(cost_cell(2.5e-7 + 2.5e-7), "0.00000050");
        assert_eq!(cost_cell(-5e-7), "-0.00000050");
    }

    /// A ledger older than the `audio_seconds` column (schema version 3, a file read as it
    /// is, without the schema steps: read-only) is reported as before, with no audio seconds
    /// and no such column in the table.
    #[test]
    fn a_ledger_without_audio_seconds_is_read_as_it_is() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = Connection::open(dir.path().join("v3.db")).expect("create");
        for step in &db::MIGRATIONS[..3] {
            step.apply(&conn).expect("previous DDL");
        }
        conn.execute_batch(
            "INSERT INTO usage_ledger (request_id, started_at, day, provider, mode, endpoint,
                model, stream, outcome, latency_ms, input_tokens, output_tokens, total_tokens,
                cached_tokens, cache_creation_tokens, reasoning_tokens, usage_known,
                usage_partial)
             VALUES ('r', '2025-01-01T00:00:00.000Z', '2025-01-01', 'p', 'alias', '/x', 'm',
                0, 'success', 1, 4, 1, 5, 0, 0, 0, 1, 0);",
        )
        .expect("row");
        let report = query(&conn, GroupBy::Provider, None).expect("query");
        assert_eq!(
            (report.total.requests, report.total.audio_seconds),
            (1, 0.0)
        );
        assert_eq!(report.to_json()["total"]["audio_seconds"], 0);
        assert!(!report.to_table().contains("AUDIO"));
    }

    /// A request that named no model (a file upload) is `-` in the table, as a request with
    /// no user is, never a blank cell; a user whose name is empty is `""`, as `user list`
    /// shows it, not the `-` of no user.
    #[test]
    fn an_empty_model_is_a_dash_and_an_empty_name_quoted() {
        let (_dir, conn) = conn();
        for (by, shown) in [(GroupBy::Model, "- "), (GroupBy::User, "\"\" ")] {
            let mut report = query(&conn, by, None).expect("query");
            report.rows[0].key = Some(String::new());
            let table = report.to_table();
            let first = table.lines().nth(1).expect("a row");
            assert!(first.starts_with(shown), "{table}");
        }
    }

    /// A user or model named `TOTAL` or `-` is quoted, so its row is read neither as the
    /// total nor as "none"; requests whose usage is unknown get a PARTIAL column.
    #[test]
    fn rows_named_total_or_dash_are_quoted_and_partial_ones_counted() {
        let (_dir, mut conn) = conn();
        let mut partial = row("2025-01-04", Some("TOTAL"), "deepseek", "success");
        partial.usage_partial = true;
        partial.model = "-".into();
        insert_rows(
            &mut conn,
            &[partial, row("2025-01-04", Some("-"), "deepseek", "success")],
        )
        .expect("insert");
        let table = query(&conn, GroupBy::User, None).expect("query").to_table();
        let firsts: Vec<&str> = table
            .lines()
            .filter_map(|line| line.split("  ").next())
            .map(str::trim)
            .collect();
        assert_eq!(
            firsts,
            ["USER", "ann", "bob", "-", "\"-\"", "\"TOTAL\"", "TOTAL"],
            "{table}"
        );
        assert!(
            table
                .lines()
                .next()
                .is_some_and(|h| h.ends_with("ERRORS  PARTIAL")),
            "{table}"
        );
        assert!(
            table.lines().last().is_some_and(|t| t.ends_with(" 1")),
            "{table}"
        );
        let by_model = query(&conn, GroupBy::Model, None)
            .expect("query")
            .to_table();
        assert!(
            by_model.lines().any(|l| l.starts_with("\"-\" ")),
            "{by_model}"
        );
    }

    /// A row another program wrote with a user name that is not UTF-8, or a blob for a
    /// model, is shown escaped; the rest of the report is read.
    #[test]
    fn a_row_that_is_not_text_does_not_lose_the_report() {
        let (_dir, conn) = conn();
        conn.execute(
            "UPDATE usage_ledger SET username = CAST(X'626f62ff' AS TEXT), model = X'ff00' \
             WHERE username = 'bob'",
            [],
        )
        .expect("update");
        let by_user = query(&conn, GroupBy::User, None).expect("query");
        let keys: Vec<_> = by_user.rows.iter().map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, [Some("ann"), Some("bob\\xff"), None]);
        let by_model = query(&conn, GroupBy::Model, None).expect("query");
        assert!(
            by_model
                .rows
                .iter()
                .any(|r| r.key.as_deref() == Some("<blob:ff00>"))
        );
        assert_eq!(by_model.total.requests, 5);
    }

    #[test]
    fn wide_names_keep_the_columns_lined_up() {
        // Wide characters take two columns: the numbers still line up.
        let (_dir, mut wide) = conn();
        insert_rows(
            &mut wide,
            &[row("2025-01-04", Some("张三丰"), "deepseek", "success")],
        )
        .expect("insert");
        let table = query(&wide, GroupBy::User, None).expect("query").to_table();
        let requests_end = |line: &str| {
            let at = line.find(char::is_numeric).unwrap_or(0);
            let digits = line[at..].find(' ').map_or(line.len(), |n| at + n);
            line[..digits].width()
        };
        let data: Vec<usize> = table.lines().skip(1).map(requests_end).collect();
        assert!(data.windows(2).all(|w| w[0] == w[1]), "{table}");
        assert!(table.contains("张三丰"), "{table}");
    }
}

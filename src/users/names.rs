//! What a new username and an email address may look like, and how a stored username of
//! any SQLite type is printed and addressed.
//!
//! Pure. The checks apply only to names being created: an existing user from the Python
//! version's database keeps whatever name it has (SQLite does not enforce the column's type:
//! it may be NULL, a BLOB or text that is not UTF-8) and can still be shown, modified and
//! deleted by the name `user list` prints for it ([`StoredName`]).

use rusqlite::types::ValueRef;

/// Longest username accepted for a new user, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest email address (RFC 5321's limit on a path).
pub const MAX_EMAIL_CHARS: usize = 254;

/// A username appears in logs, traces (Langfuse `user.id`), the usage ledger and terminal
/// tables, so it is kept to one printable word: letters and digits of any script and
/// `. _ - @ +` (an email address works as a username), not starting with `-` (it would read
/// as a flag), at most 64 characters.
pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a username cannot be empty".into());
    }
    let count = name.chars().count();
    if count > MAX_USERNAME_CHARS {
        return Err(format!(
            "a username has at most {MAX_USERNAME_CHARS} characters (this one has {count})"
        ));
    }
    if name.starts_with('-') {
        return Err("a username cannot start with '-'".into());
    }
    // A key's form: such a name would be redacted in every record (in any case, as keys
    // are found), and read as a leaked key by secret scanners wherever it is printed.
    let prefix = super::key::KEY_PREFIX;
    if name
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    {
        return Err(format!(
            "a username cannot start with '{prefix}', in any case (keys do)"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')))
    {
        return Err(format!(
            "a username may contain only letters, digits and . _ - @ + (found {:?})",
            bad
        ));
    }
    Ok(())
}

/// Top-level domains reserved for special use (RFC 6761, 6762, 7686, 6303's `arpa`), which
/// the Python version's tools (pydantic's `EmailStr`, that is the email-validator package)
/// refuse.
const SPECIAL_USE_TLDS: [&str; 6] = ["arpa", "invalid", "local", "localhost", "onion", "test"];

/// Longest label of a domain name (RFC 1035).
const MAX_LABEL_CHARS: usize = 63;

/// An address the Python version's tools accept too: they read every user with pydantic's
/// `EmailStr` (the email-validator package), so one address it refuses breaks them for
/// every user of the shared users.db. What it refuses and is cheap to check is refused
/// here: one `@`; a local part of 1 to 64 characters, letters and digits of any script and
/// ``! # $ % & ' * + - / = ? ^ _ ` { | } ~``, with dots only between them (none first, last
/// or twice in a row; no quoted local parts); a domain of at least two dot-separated labels,
/// each 1 to 63 ASCII letters, digits or `-` not first or last, the last one ending in a
/// letter and not a special-use name (`test`, `local`, `localhost`, `invalid`, `onion`,
/// `arpa`); no spaces, control or invisible formatting characters. Deliverability is not
/// checked. An internationalised domain, in its own script or its `xn--` form (or any label
/// with `--` as its third and fourth characters, which IDNA reserves), is refused: the
/// validator holds it to IDNA's rules (bidi, disallowed letters, punycode that decodes, the
/// length once encoded), too many to check here, and one it refuses breaks every user; so
/// the refusal is wider than the validator's, never narrower.
pub fn check_email(email: &str) -> Result<(), String> {
    let count = email.chars().count();
    if count > MAX_EMAIL_CHARS {
        return Err(format!(
            "an email address has at most {MAX_EMAIL_CHARS} characters (this one has {count})"
        ));
    }
    if let Some(bad) = email
        .chars()
        .find(|&c| c.is_whitespace() || crate::hidden(c))
    {
        return Err(format!("an email address cannot contain {bad:?}"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("an email address needs an '@'".into());
    };
    if domain.contains('@') {
        return Err("an email address has one '@'".into());
    }
    check_local_part(local)?;
    check_domain(domain)
}

/// The part before `@`: an unquoted dot-atom (RFC 5322), in any script (RFC 6531).
fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() || local.chars().count() > 64 {
        return Err("the part before '@' must have 1 to 64 characters".into());
    }
    // Beyond ASCII only letters and digits: the validator refuses other characters there
    // (a soft hyphen, a combining mark first, private-use, tag and unassigned characters).
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if let Some(bad) = local.chars().find(|&c| c != '.' && !atext(c)) {
        return Err(format!("the part before '@' cannot contain {bad:?}"));
    }
    if local.starts_with('.') || local.ends_with('.') {
        return Err("the part before '@' cannot start or end with '.'".into());
    }
    if local.contains("..") {
        return Err("the part before '@' cannot have two dots in a row".into());
    }
    Ok(())
}

/// The part after `@`: a domain name with a top-level domain mail can go to.
fn check_domain(domain: &str) -> Result<(), String> {
    let not_a_domain = |why: &str| {
        format!(
            "{:?} is not a domain name like example.com ({why})",
            crate::error::clip(domain, 100)
        )
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(not_a_domain("it has no dot"));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(not_a_domain("a dot first, last or next to another"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(not_a_domain("a part starts or ends with '-'"));
        }
        if let Some(bad) = label.chars().find(|&c| !c.is_ascii()) {
            return Err(not_a_domain(&format!(
                "it cannot contain {bad:?}: an internationalised domain is refused, as the \
                 Python version's tools apply rules to it that llmsrouter does not check"
            )));
        }
        if let Some(bad) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(not_a_domain(&format!("it cannot contain {bad:?}")));
        }
        if label.get(2..4) == Some("--") {
            return Err(not_a_domain(
                "a part with '--' as its 3rd and 4th characters (an xn-- internationalised \
                 name, or one IDNA reserves) is refused, as the Python version's tools may \
                 refuse it",
            ));
        }
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(not_a_domain(&format!(
                "a part between dots has at most {MAX_LABEL_CHARS} characters"
            )));
        }
    }
    let tld = labels.last().copied().unwrap_or_default();
    if !tld.chars().last().is_some_and(char::is_alphabetic) {
        return Err(not_a_domain(
            "the last part must end with a letter: no top-level domain ends with a digit",
        ));
    }
    if SPECIAL_USE_TLDS
        .iter()
        .any(|special| tld.eq_ignore_ascii_case(special))
    {
        return Err(not_a_domain(&format!(
            ".{tld} is reserved for special use and takes no mail"
        )));
    }
    Ok(())
}

/// Longest part of a name a message quotes, in characters; the rest is clipped.
const QUOTED_CHARS: usize = 80;

/// A name (or email) in a message: in double quotes, escaped as the `user list` table prints
/// it ([`escaped`]: control and invisible characters, `bob\xff` with one backslash), so it
/// can be copied from the message into the next command; clipped to 80 characters, so a 1 MB
/// name cannot flood the terminal. A router key in it is `[redacted]`.
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", in_message(name))
}

/// A name as [`quoted`] shows it, without the quotes.
fn in_message(name: &str) -> String {
    // A router key in it is redacted before the clip, which could cut it to a shape no
    // longer found (and quote 31 of its 32 characters).
    let name = crate::sinks::redact::Redactor::default().redact(name, &[]);
    escaped(&clip(&name))
}

/// `name` cut past [`QUOTED_CHARS`] characters: its first 80, `…` and its length in bytes;
/// as it is when it is such a cut name already (given as the table shows it), which would
/// otherwise be cut again, to "… (98 bytes)".
/// Borrowed when nothing was cut.
fn clip(name: &str) -> std::borrow::Cow<'_, str> {
    let Some((at, _)) = name.char_indices().nth(QUOTED_CHARS) else {
        return name.into();
    };
    let already_cut = name[at..]
        .strip_prefix("… (")
        .and_then(|rest| rest.strip_suffix(" bytes)"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if already_cut {
        return name.into();
    }
    format!("{}… ({} bytes)", &name[..at], name.len()).into()
}

/// A username as a command that a message gives to run names it (`llmsrouter user
/// rotate-key --rowid 2 amy`), so that it can be pasted into a POSIX shell as it is: shown
/// as [`quoted`] shows it, bare when it holds only letters, digits and `. _ - @ + / : ,`,
/// which no shell reads specially (every name `user add` makes), else in single quotes,
/// each `'` in it written `'\''`. Inside single quotes a shell takes every character as it
/// is; inside the double quotes used before, it read the `$`, `` ` ``, `\` and `"` of a
/// Python-era name (`a$b`), which had to be escaped by hand.
pub fn for_shell(name: &str) -> String {
    let shown = in_message(name);
    let plain =
        |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+' | '/' | ':' | ',');
    if !shown.is_empty() && shown.chars().all(plain) {
        return shown;
    }
    format!("'{}'", shown.replace('\'', "'\\''"))
}

/// A username as the `user list` table, `user show` and `usage --by user` print it:
/// [`escaped`], and in double quotes when it begins or ends with a space, or is empty, which
/// a table cell would not show (`"carol "`). Every form answers to the name again
/// ([`StoredName::answers_to`]).
pub fn in_table(name: &str) -> String {
    let shown = escaped(name);
    if shown.is_empty() || shown.starts_with(' ') || shown.ends_with(' ') {
        format!("\"{shown}\"")
    } else {
        shown
    }
}

/// A username as the `user list` table prints it: [`in_table`], cut past [`QUOTED_CHARS`]
/// characters as a message cuts a name (its first 80 characters, `…` and its length in
/// bytes), so that a 100 KB Python-era name does not fill the table (and widen every row
/// with it). `user list --json` and `user show` print it whole; the cut form answers to the
/// user as well ([`StoredName::answers_to`]), and to every user it cuts alike (`--rowid`
/// then picks one, as for names that print alike).
pub fn in_list(name: &str) -> String {
    in_table(&clip(name))
}

/// Any other text in a `user list` row that comes from the database as it was stored (an
/// email address): [`crate::printable`], cut as [`in_list`] cuts a name.
pub fn text_in_list(text: &str) -> String {
    crate::printable(&clip(text))
}

/// Whether `name` is cut by [`in_list`] (and by a message).
pub fn cut_in_list(name: &str) -> bool {
    matches!(clip(name), std::borrow::Cow::Owned(_))
}

/// A username with what cannot be seen in it made visible, so that Python-era names which
/// differ only there print differently (a new name has none of it): as
/// [`crate::printable`] (control and invisible formatting characters as `\u{1b}`), and, the
/// same way, every white space character but the plain space (`Jane\u{a0}Doe`), and in a
/// name that is not in Unicode NFC (a decomposed `é`, `e` and U+0301, as some keyboards and
/// macOS file names give), each character beyond ASCII from the first that NFC changes to the
/// last (`Jose\u{301}`, beside the NFC `José`). An NFC name with neither prints as it is.
pub fn escaped(name: &str) -> String {
    let changed = not_nfc_span(name);
    let visible = |i: usize, c: char| {
        !(crate::hidden(c)
            || (c.is_whitespace() && c != ' ')
            || (!c.is_ascii() && changed.contains(&i)))
    };
    if name.char_indices().all(|(i, c)| visible(i, c)) {
        return name.to_owned();
    }
    let mut shown = String::with_capacity(name.len() + 8);
    for (i, c) in name.char_indices() {
        if visible(i, c) {
            shown.push(c);
        } else {
            shown.extend(c.escape_default());
        }
    }
    shown
}

/// The bytes of `name` from the first character its NFC form changes to the last (empty
/// when it is in NFC).
fn not_nfc_span(name: &str) -> std::ops::Range<usize> {
    if name.is_ascii() {
        return 0..0;
    }
    let nfc = nfc(name);
    if nfc == name {
        return 0..0;
    }
    let start: usize = name
        .chars()
        .zip(nfc.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let same_end: usize = name
        .chars()
        .rev()
        .zip(nfc.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    start..(name.len() - same_end).max(start)
}

fn nfc(text: &str) -> std::borrow::Cow<'_, str> {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(text)
}

/// What a name looks like on a screen: in NFC, without invisible characters, every white
/// space a plain space, none around it. Two names that look alike but differ (`carol` and
/// `carol `, `José` in NFC and decomposed) are each other's look-alikes: when a command is
/// given one and finds no user so named, it names the users whose names look like it; when
/// `user add` or `user import` makes one, it notes the users whose names look like it.
pub(super) fn looks(name: &str) -> String {
    let visible: String = nfc(name)
        .chars()
        .filter(|&c| !crate::hidden(c) || c.is_whitespace())
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    visible.trim_matches(' ').to_owned()
}

/// A name as given on the command line, for a message that may echo it although no user
/// has it: text that looks like one of this router's keys (a key pasted where a name goes)
/// is masked as `user list` masks keys, so the key never reaches a terminal or a log. The
/// white space and quotes around it are left out first, or they would take the place of key
/// characters.
pub fn given(name: &str) -> String {
    if super::key::looks_like_key(name) {
        super::key::masked(&crate::secret::Secret::new(super::key::pasted_key(name)))
    } else {
        name.to_owned()
    }
}

/// A username as the users table holds it. Every form prints as one string ([`Self::shown`]),
/// in JSON as it is and in the table and messages with what cannot be seen made visible
/// ([`in_table`], [`escaped`]), and each of these addresses the user again:
///
/// - text that is UTF-8: itself (as it always did);
/// - text that is not UTF-8: its UTF-8 parts as they are but for `\` (doubled), each other
///   byte as `\xNN` (`bob\xff`);
/// - a BLOB: `<blob:HEX>` (`<blob:ff00>`), whatever the bytes, as SQLite never matches a blob
///   to a text name;
/// - NULL: `<null>`.
///
/// A new name cannot contain `\`, `<` or `>`, so only another Python-era name can print alike;
/// the commands refuse such an ambiguous name rather than guess (see `UserStore`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredName {
    Text(String),
    NotUtf8(Vec<u8>),
    Blob(Vec<u8>),
    Null,
}

impl StoredName {
    pub fn from_sql(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(i) => Self::Text(i.to_string()),
            ValueRef::Real(f) => Self::Text(f.to_string()),
            ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Self::Text(text.to_owned()),
                Err(_) => Self::NotUtf8(bytes.to_vec()),
            },
            ValueRef::Blob(bytes) => Self::Blob(bytes.to_vec()),
        }
    }

    /// Whether this is a name `user add` could have stored: UTF-8 text, printed as it is.
    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// The name as printed (see the type's doc). No two different names of the same kind
    /// print alike; a UTF-8 name can print like another kind's.
    pub fn shown(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::NotUtf8(bytes) => {
                let mut shown = String::with_capacity(bytes.len() + 8);
                for chunk in bytes.utf8_chunks() {
                    shown.push_str(&chunk.valid().replace('\\', "\\\\"));
                    for byte in chunk.invalid() {
                        shown.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                shown
            }
            Self::Blob(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("<blob:{hex}>")
            }
            Self::Null => "<null>".to_owned(),
        }
    }

    /// Whether `name`, as given on the command line, names this user: the stored text
    /// itself, or the name as `user list --json`, the `user list` table ([`in_table`]) or a
    /// message ([`escaped`], in the quotes or with them) prints it; or as earlier builds
    /// printed it ([`crate::printable`] alone).
    pub fn answers_to(&self, name: &str) -> bool {
        if let Self::Text(text) = self {
            if text == name {
                return true;
            }
        }
        let shown = self.shown();
        let escaped = escaped(&shown);
        let in_quotes = name.strip_prefix('"').and_then(|n| n.strip_suffix('"'));
        shown == name
            || crate::printable(&shown) == name
            || escaped == name
            || in_table(&shown) == name
            // In double quotes, as `usage --by user` shows a user named `TOTAL` or `-`.
            || in_quotes == Some(escaped.as_str())
            // Cut, as the `user list` table and messages show a long name.
            || (cut_in_list(&shown) && {
                let in_message = in_message(&shown);
                in_list(&shown) == name || in_message == name || in_quotes == Some(&in_message)
            })
    }

    /// Whether this user's name looks like `name` on a screen without answering to it: the
    /// same but for white space around it, Unicode normalisation or invisible characters.
    pub fn looks_like(&self, name: &str) -> bool {
        !self.answers_to(name) && looks(&self.shown()) == looks(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name past 80 characters is cut in the `user list` table as in a message, and the
    /// cut form answers to it; one of 80 is whole; a cut form given back (in a message that
    /// echoes what was typed) is not cut again; characters, not bytes, are counted.
    #[test]
    fn long_names_are_cut_in_the_list_as_in_messages() {
        let whole = "é".repeat(80);
        assert_eq!(in_list(&whole), whole);
        assert!(!cut_in_list(&whole));
        let long = format!("{whole}x");
        let cut = format!("{whole}… (161 bytes)");
        assert_eq!(in_list(&long), cut);
        assert_eq!(quoted(&long), format!("\"{cut}\""));
        assert_eq!(quoted(&cut), format!("\"{cut}\""));
        assert!(cut_in_list(&long) && !cut_in_list(&cut));
        let stored = StoredName::Text(long.clone());
        assert!(stored.answers_to(&cut) && stored.answers_to(&format!("\"{cut}\"")));
        assert!(!stored.answers_to(&format!("{whole}… (160 bytes)")));
        // Cut where a space begins it: quoted in the table as any such name.
        let spaced = format!(" {long}");
        assert_eq!(
            in_list(&spaced),
            format!("\"{}… (162 bytes)\"", &spaced[..159])
        );
        assert!(StoredName::Text(spaced.clone()).answers_to(&in_list(&spaced)));
    }

    /// Bare when a shell reads the name as it is; else in single quotes, with `'` as
    /// `'\''`, and shown as messages show it (escaped, a key redacted).
    #[test]
    fn names_quoted_for_a_shell() {
        for plain in ["ann", "a.b_c-d@e+f", "李雷", "José", "-dash", "x/y:z,w"] {
            assert_eq!(for_shell(plain), plain);
        }
        for (name, quoted) in [
            ("", "''"),
            ("a b", "'a b'"),
            ("a$b", "'a$b'"),
            ("a`b`", "'a`b`'"),
            ("a\"b", "'a\"b'"),
            ("a\\b", "'a\\b'"),
            ("it's", r"'it'\''s'"),
            ("''", r"''\'''\'''"),
            ("~root", "'~root'"),
            ("a=b", "'a=b'"),
            ("<null>", "'<null>'"),
            ("a\u{1b}b", r"'a\u{1b}b'"),
        ] {
            assert_eq!(for_shell(name), quoted, "{name:?}");
        }
        let key = format!("sk-lr-{}", "A".repeat(32));
        assert!(!for_shell(&key).contains(&key));
    }

    #[test]
    fn usernames() {
        for good in [
            "ann",
            "ann.lee",
            "ci-bot_2",
            "ann@example.com",
            "a+b",
            "李雷",
            "x",
        ] {
            assert_eq!(check_username(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_USERNAME_CHARS + 1);
        for bad in [
            "", "-rf", "ann lee", "ann\u{7}", "ann\n", "a/b", "[a]", &long,
        ] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        // A key's prefix, in any case; a multi-byte character where it would end is none.
        for key_like in ["sk-lr-ann", "SK-LR-ann", "Sk-Lr-"] {
            let said = check_username(key_like).expect_err(key_like);
            assert!(said.contains("cannot start with 'sk-lr-'"), "{said}");
        }
        assert_eq!(check_username("sk-l李"), Ok(()));
        assert_eq!(check_username("sk-lrann"), Ok(()));
        assert_eq!(check_username(&"a".repeat(MAX_USERNAME_CHARS)), Ok(()));
    }

    #[test]
    fn emails() {
        for good in [
            "ann@example.com",
            "a.b+c@mail.example.co.uk",
            "李@example.com",
        ] {
            assert_eq!(check_email(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@localhost",
            "ann@@example.com",
            "ann@exa mple.com",
            "ann@example..com",
            "ann@-example.com",
            "a\u{0}@example.com",
            "李@例子.中国",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        let huge = format!("{}@example.com", "a".repeat(300));
        assert!(check_email(&huge).is_err());
    }

    /// Verdicts of email-validator 2.4.0 (`validate_email(e, check_deliverability=False)`,
    /// what pydantic's `EmailStr` runs in the Python version's tools): every address it
    /// refuses for a reason checked here is refused, every one it takes is taken.
    #[test]
    fn emails_as_the_python_versions_email_validator_judges_them() {
        for good in [
            "a+b@ex.com",
            "a!#$%&'*/=?^_`{|}~-@ex.com",
            "é@example.com",
            "Ann@Example.COM",
            "a@ex.c",
            "a@example.c0m",
            "a@ex.1com",
            "a@ex.co-m",
            "a@a.b.c.d.example",
            "a@localhost.localdomain",
            "a@foo.internal",
        ] {
            assert_eq!(check_email(good), Ok(()), "{good}");
        }
        let long_label = format!("a@{}.com", "x".repeat(64));
        for bad in [
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a@example",
            "a@-ex.com",
            "a@ex-.com",
            "a@ex.-com",
            "a@ex..com",
            "a@.ex.com",
            "a@ex.com.",
            "a@ex.123",
            "a@1.2.3.4",
            "a@ex.com1",
            "a@x.local",
            "a@x.TEST",
            "a@x.invalid",
            "a@x.onion",
            "a@x.arpa",
            "a@foo.localhost",
            "a@ex_ample.com",
            "a@ex%.com",
            "a(b)@ex.com",
            "a,b@ex.com",
            "a\"b@ex.com",
            "\"a b\"@ex.com",
            "a[b]@ex.com",
            "a:b@ex.com",
            "a;b@ex.com",
            "a<b@ex.com",
            "a\\b@ex.com",
            "a\u{200b}@ex.com",
            "a@ex\u{200b}.com",
            &long_label,
            // IDNA's rules, which the validator applies and this does not check: refused
            // whole, internationalised domains the validator takes (`a@ex.xn--p1ai`) too.
            "a@ab--cd.com",
            "a@xn--a.com",
            "a@xn--ls8h.la",
            "a@ex.xn--p1ai",
            "a@שלוםa.com",
            "a@ㄱ.com",
            "a@\u{3164}.com",
            "a\u{ad}@ex.com",
            "\u{301}e@ex.com",
            "\u{e000}@ex.com",
            "\u{e0041}@ex.com",
            "a\u{378}@ex.com",
        ] {
            let reason = check_email(bad).expect_err(bad);
            assert_eq!(reason.lines().count(), 1, "{reason}");
        }
        assert_eq!(
            check_email("a..b@example.com"),
            Err("the part before '@' cannot have two dots in a row".into())
        );
    }

    #[test]
    fn stored_names_print_losslessly_and_answer_to_what_they_print() {
        let cases = [
            (StoredName::Text("ann".into()), "ann"),
            (StoredName::NotUtf8(b"bob\xff".to_vec()), "bob\\xff"),
            (StoredName::NotUtf8(b"\xe6\x9d\x8e\xc0".to_vec()), "李\\xc0"),
            (StoredName::NotUtf8(b"\\xc0\xff".to_vec()), "\\\\xc0\\xff"),
            (StoredName::Blob(vec![0xff, 0x00]), "<blob:ff00>"),
            (StoredName::Blob(Vec::new()), "<blob:>"),
            (StoredName::Null, "<null>"),
        ];
        for (name, shown) in &cases {
            assert_eq!(name.shown(), *shown);
            assert!(name.answers_to(shown), "{shown}");
            assert!(!name.answers_to(""), "{shown}");
        }
        // The table escapes control characters; that form answers too.
        let bell = StoredName::NotUtf8(b"a\x07\xff".to_vec());
        assert_eq!(bell.shown(), "a\u{7}\\xff");
        assert!(bell.answers_to("a\\u{7}\\xff"));
        let text_bell = StoredName::Text("a\u{7}".into());
        assert!(text_bell.answers_to("a\u{7}") && text_bell.answers_to("a\\u{7}"));
        // So does the escaped form of an invisible formatting character.
        let bidi = StoredName::Text("evil\u{202e}gnp.exe".into());
        assert!(bidi.answers_to("evil\\u{202e}gnp.exe"));
        assert!(!bidi.answers_to("evilgnp.exe"));
        // In double quotes, as `usage --by user` prints a user named `TOTAL`.
        let total = StoredName::Text("TOTAL".into());
        assert!(total.answers_to("\"TOTAL\"") && !total.answers_to("\"TOTAL"));
        // A blob holding UTF-8 is still a blob: it does not answer to the text.
        assert!(!StoredName::Blob(b"ann".to_vec()).answers_to("ann"));
        assert_eq!(
            StoredName::from_sql(ValueRef::Text(b"x\xff")),
            StoredName::NotUtf8(b"x\xff".to_vec())
        );
        assert_eq!(StoredName::from_sql(ValueRef::Null), StoredName::Null);
        assert!(StoredName::from_sql(ValueRef::Text(b"ann")).is_text());
    }

    /// Names that differ only where a screen shows nothing print apart, and each answers to
    /// what it prints; a name in NFC without such characters prints as it is, in any script.
    #[test]
    fn look_alike_names_print_apart_and_answer_to_what_they_print() {
        let cases = [
            ("carol ", "carol ", "\"carol \""),
            (" carol", " carol", "\" carol\""),
            ("", "", "\"\""),
            ("Jane Doe", "Jane Doe", "Jane Doe"),
            ("Jane\u{a0}Doe", "Jane\\u{a0}Doe", "Jane\\u{a0}Doe"),
            ("Jos\u{e9}", "Jos\u{e9}", "Jos\u{e9}"),
            ("Jose\u{301}", "Jose\\u{301}", "Jose\\u{301}"),
            // Only from the first character NFC changes to the last: the NFC `ë` stays.
            (
                "Zo\u{eb} Jose\u{301}",
                "Zo\u{eb} Jose\\u{301}",
                "Zo\u{eb} Jose\\u{301}",
            ),
            // A decomposed Hangul syllable, and a singleton NFC replaces (ANGSTROM SIGN).
            (
                "\u{1112}\u{1161}\u{11ab}",
                "\\u{1112}\\u{1161}\\u{11ab}",
                "\\u{1112}\\u{1161}\\u{11ab}",
            ),
            ("\u{212b}", "\\u{212b}", "\\u{212b}"),
            // NFC with combining marks of its own: as it is.
            ("हिन्दी", "हिन्दी", "हिन्दी"),
            ("李雷", "李雷", "李雷"),
            ("a\u{200b}", "a\\u{200b}", "a\\u{200b}"),
        ];
        for (name, escaped_form, table_form) in cases {
            assert_eq!(escaped(name), escaped_form, "{name:?}");
            assert_eq!(in_table(name), table_form, "{name:?}");
            let stored = StoredName::Text(name.to_owned());
            for given in [name, escaped_form, table_form] {
                assert!(stored.answers_to(given), "{name:?} answers to {given:?}");
            }
            assert_eq!(quoted(name), format!("\"{escaped_form}\""));
        }
        let nfd = StoredName::Text("Jose\u{301}".to_owned());
        assert!(!nfd.answers_to("Jos\u{e9}"));
        assert!(nfd.looks_like("Jos\u{e9}"));
        let carol = StoredName::Text("carol ".to_owned());
        assert!(carol.looks_like("carol") && !carol.looks_like("carol "));
        assert!(!carol.looks_like("Carol"), "case is no look-alike");
        assert!(StoredName::Text("a\u{200b}b".into()).looks_like("ab"));
    }
}

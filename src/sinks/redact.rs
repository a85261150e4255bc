//! Redaction of secrets from everything a sink writes: every configured `api_key` and what a
//! request itself carried (the client's credentials, a URL target's query), wherever they
//! appear (bodies, error texts echoed by an upstream, model parameters), written as they are
//! or with JSON string escapes, in any ASCII case.
//!
//! Sinks must pass every piece of request-derived text through a [`Redactor`] before it leaves
//! the process; this module never logs or stores the keys it holds.

use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use memchr::memmem::Finder;

use crate::secret::Secret;
use crate::users::key::{KEY_PREFIX, KEY_RANDOM_CHARS};

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not treated as secrets: a client sending `Bearer none` or a local
/// server's `api_key: "x"` must not mangle every "none" or "x" in a prompt.
pub const MIN_SECRET_LEN: usize = 8;

/// Characters of a secret searched for as they are, in a text that may hold escapes, before
/// the rest is read escape by escape (see [`RequestRedactor::occurrences`]).
const PREFIX_CHARS: usize = 6;

/// Times a request path is percent-decoded in search of a secret ([`RequestRedactor::redact_path`]):
/// encoded once, twice (`%252D`) or three times.
const PATH_DECODINGS: usize = 3;

/// Levels of JSON string escaping read through: 1 for a JSON body (`sk\/...`), 2 for a JSON
/// text inside a JSON string (`sk\\\/...`: an error's JSON quoted in a message), 3 for
/// such a text in a body that is not JSON, which a sink quotes once more (a `text/plain`
/// answer or error written into a log line or a span's output: `sk\\\\\\\/...`). At 2,
/// a key escaped twice in a text body (`sk\\u002d...`) went into the request log and the
/// span's output as it was (bb73).
const ESCAPE_DEPTH: u8 = 3;

/// Finds and replaces known secrets. Cheap to clone; built once at start-up.
///
/// Every search ignores ASCII case (an upstream that echoes `Bearer SK-ABC...` or
/// `bearer sk-abc...` for `sk-AbC...` gives away all but one bit per letter of the key);
/// other letters are compared as they are. A secret is found written as it is, and also
/// written with JSON string escapes in any of its characters (`\/`, `\"`, `\\`,
/// `\b\f\n\r\t`, `\uXXXX` in either case, surrogate pairs), escaped up to three times
/// ([`ESCAPE_DEPTH`]), mixed freely with plain characters: any JSON
/// parser reads those back as the secret (PHP writes every `/` as `\/`). A configured secret
/// is found percent-encoded too ([`percent_encoded`]), and a request path is searched decoded
/// ([`RequestRedactor::redact_path`]). Not covered: other encodings (base64, HTML entities,
/// in a body a key percent-encoded twice), four or more levels of escaping, and a secret
/// written in pieces with other text between them.
///
/// Cost: a text shorter than the shortest secret is not searched. Every other text is read
/// once for all the secrets (up to [`BATCH`] of them), a window at a time: a window that
/// holds an upper-case letter is lower-cased into a buffer first ([`find_folded`]), and each
/// secret, lower-cased, is searched in it with `memmem`. In a text with no backslash (most
/// names, ids, and many bodies) that is one search per secret; a text with a backslash gets
/// one search per distinct prefix of [`PREFIX_CHARS`] characters (keys of one provider share
/// theirs), each hit read on with escapes allowed, and one pass over its backslashes that
/// decodes each escape once and looks further only when it decodes to one of the secrets'
/// first characters (`\n` and `\"` never do). Nothing the size of the text is allocated.
/// Measured on 100 KB with 20 keys of distinct prefixes, against the plain search alone:
/// 1.2x with a `\n` every 80 bytes, 2.5x with one every 5 bytes (with one shared prefix:
/// 0.3x and 1.6x). A request's own secrets are prepared once for all the sinks
/// ([`RequestSecrets`]).
///
/// Ignoring case first cost one pass per kind of search (this router's keys, the configured
/// secrets, the request's) each lower-casing the whole text, and each sink prepared the
/// request's secrets again for every text: 9.4% of the CPU of a router with telemetry on
/// in the load benchmark. With one pass, windows without upper case searched as they are,
/// and the request's secrets prepared once: 6.4%.
#[derive(Clone, Default)]
pub struct Redactor {
    searches: Arc<Searches<'static>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.searches.needles.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (e.g. `config.secrets()`); short or empty values are skipped.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let values = distinct(secrets);
        let encoded: Vec<String> = values.iter().flat_map(|s| percent_encoded(s)).collect();
        let mut all: Vec<&str> = values
            .into_iter()
            .chain(encoded.iter().map(String::as_str))
            .collect();
        // Secrets that differ only in case are one search; those that share a prefix (in
        // any case) side by side, searched for once ([`prefix_groups`]).
        sort_caseless(&mut all);
        let needles = all
            .into_iter()
            .map(|s| Needle::new(s).into_owned())
            .collect();
        Self {
            searches: Arc::new(Searches::of(needles)),
        }
    }

    /// No secret is known (none configured, or all too short): nothing to search for.
    pub fn is_empty(&self) -> bool {
        self.searches.needles.is_empty()
    }

    /// The redaction of one request: the known secrets plus `secrets`, prepared here. A
    /// record's sinks use [`Self::for_record`], which prepares them once for all.
    pub fn for_request<'a>(&'a self, secrets: &'a [Secret]) -> RequestRedactor<'a> {
        let extra = distinct(secrets).into_iter().map(Needle::new).collect();
        self.with(Cow::Owned(Searches::of(extra)))
    }

    /// The redaction of one record: the known secrets plus those the request carried (see
    /// `RequestRecord::secrets`), whose searches are prepared the first time any sink
    /// asks. Cheap: build it for each text if that is simpler.
    pub fn for_record<'a>(&'a self, secrets: &'a RequestSecrets) -> RequestRedactor<'a> {
        self.with(Cow::Borrowed(secrets.searches()))
    }

    fn with<'a>(&'a self, extra: Cow<'a, Searches<'a>>) -> RequestRedactor<'a> {
        RequestRedactor {
            base: self,
            shortest: self.searches.shortest.min(extra.shortest),
            heads: self.searches.heads.with(&extra.heads),
            extra,
        }
    }

    /// `bytes` with every known secret, and those of `request`, replaced. Borrows when nothing
    /// was found, which is the common case.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8], request: &[Secret]) -> Cow<'a, [u8]> {
        self.for_request(request).redact_bytes(bytes)
    }

    /// [`Self::redact_bytes`] for text.
    pub fn redact<'a>(&self, text: &'a str, request: &[Secret]) -> Cow<'a, str> {
        self.for_request(request).redact(text)
    }

    /// [`RequestRedactor::redact_path`] with `request`'s secrets.
    pub fn redact_path<'a>(&self, path: &'a str, request: &[Secret]) -> Cow<'a, str> {
        self.for_request(request).redact_path(path)
    }

    /// Whether `bytes` holds any known secret: whether [`Self::redact_bytes`] (with no
    /// request secrets) would change it. Allocates nothing but the list of what it found.
    pub fn finds_any(&self, bytes: &[u8]) -> bool {
        !self.for_request(&[]).occurrences(bytes).is_empty()
    }

    /// Most bytes one occurrence of a known secret (or of a key of this router's form, with
    /// the byte after it that says where it ends) can span as written: each of its bytes
    /// escaped [`ESCAPE_DEPTH`] times at worst, every character of each escape itself
    /// escaped (`\u0075` is 6 bytes; escaped again, `\u005c\u0075` and four more, 36; once
    /// more, 216). A text read in pieces is searched across each seam with this many bytes
    /// either side, so no occurrence is missed.
    pub fn widest_occurrence(&self) -> usize {
        let longest = self.searches.needles.iter().map(Needle::len).max();
        let longest = longest.unwrap_or(0);
        longest
            .max(ROUTER_KEY_LEN + 1)
            .saturating_mul(6usize.pow(u32::from(ESCAPE_DEPTH)))
    }
}

/// The forms a URL-encoding echo of `secret` takes, when they differ from it (a key with
/// `/`, `+` or `=`, as AWS-style secrets and base64 credentials have): every character but
/// letters, digits and `-._~` as `%XX` (JavaScript's `encodeURIComponent`, Python's
/// `quote_plus`, Go's `QueryEscape`), the same with `/` kept (Python's `quote`), and with
/// `/` encoded but `$&+:=@` kept (Go's `PathEscape`). An upstream's error quoting the
/// request URL or a form it was sent writes them so; they reached every sink. The search
/// ignores case, so the hex digits may be of either case, mixed too (.NET's
/// `HttpUtility.UrlEncode` writes lower-case ones). Each form is one more search, for the
/// secrets that have such characters only.
fn percent_encoded(secret: &str) -> Vec<String> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const PATH: &AsciiSet = &COMPONENT.remove(b'/');
    const GO_PATH: &AsciiSet = &COMPONENT
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b':')
        .remove(b'=')
        .remove(b'@');
    let mut forms: Vec<String> = [COMPONENT, PATH, GO_PATH]
        .into_iter()
        .map(|set| utf8_percent_encode(secret, set).to_string())
        .filter(|form| form != secret)
        .collect();
    forms.sort_unstable();
    forms.dedup();
    forms
}

/// The values of `secrets` long enough to be treated as secrets, each once (in whichever
/// case), sorted as [`sort_caseless`] does.
fn distinct<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Vec<&'a str> {
    let mut values: Vec<&str> = secrets
        .into_iter()
        .map(Secret::expose)
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect();
    sort_caseless(&mut values);
    values
}

/// `values` sorted ignoring ASCII case, those equal but for case kept once: the search finds
/// one wherever it finds the other, and secrets whose prefixes differ only in case end up
/// side by side (see [`Needle::same_prefix`]).
fn sort_caseless(values: &mut Vec<&str>) {
    fn folded(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes().map(|b| b.to_ascii_lowercase())
    }
    values.sort_unstable_by(|a, b| folded(a).cmp(folded(b)));
    values.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
}

/// Secrets prepared for searching: one [`Needle`] each (sorted as [`sort_caseless`] does),
/// the runs of them that share a prefix ([`prefix_groups`]), the characters among their
/// first [`PREFIX_CHARS`], and the shortest one's length (a shorter text cannot hold one:
/// most of the names and ids a sink writes are not searched at all).
#[derive(Clone)]
struct Searches<'a> {
    needles: Vec<Needle<'a>>,
    groups: Vec<Range<usize>>,
    heads: HeadChars,
    shortest: usize,
}

impl Default for Searches<'_> {
    fn default() -> Self {
        Self::of(Vec::new())
    }
}

impl<'a> Searches<'a> {
    fn of(needles: Vec<Needle<'a>>) -> Self {
        Self {
            shortest: needles.iter().map(Needle::len).min().unwrap_or(usize::MAX),
            heads: HeadChars::of(&needles),
            groups: prefix_groups(&needles),
            needles,
        }
    }
}

/// What one request itself carried that no record may show (see
/// `RequestRecord::secrets`), with their searches prepared once, the first time they are
/// needed, for every sink and every cut of that record's texts: a record is redacted text
/// by text by several sinks. Cheap to clone (an `Arc`).
#[derive(Clone, Default)]
pub struct RequestSecrets(Arc<Prepared>);

#[derive(Default)]
struct Prepared {
    secrets: Box<[Secret]>,
    searches: OnceLock<Searches<'static>>,
}

impl RequestSecrets {
    pub fn as_slice(&self) -> &[Secret] {
        &self.0.secrets
    }

    fn searches(&self) -> &Searches<'static> {
        self.0.searches.get_or_init(|| {
            let needles = distinct(self.as_slice()).into_iter();
            Searches::of(needles.map(|s| Needle::new(s).into_owned()).collect())
        })
    }
}

impl FromIterator<Secret> for RequestSecrets {
    fn from_iter<I: IntoIterator<Item = Secret>>(secrets: I) -> Self {
        Self(Arc::new(Prepared {
            secrets: secrets.into_iter().collect(),
            searches: OnceLock::new(),
        }))
    }
}

impl From<Vec<Secret>> for RequestSecrets {
    fn from(secrets: Vec<Secret>) -> Self {
        secrets.into_iter().collect()
    }
}

impl std::fmt::Debug for RequestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestSecrets({})", self.as_slice().len())
    }
}

/// [`Redactor`] plus one request's own secrets, searched for with prepared finders.
pub struct RequestRedactor<'a> {
    base: &'a Redactor,
    extra: Cow<'a, Searches<'a>>,
    shortest: usize,
    heads: HeadChars,
}

impl RequestRedactor<'_> {
    /// `bytes` with every secret replaced; borrows when nothing was found.
    ///
    /// Every secret is looked for in the text as given and the occurrences are replaced
    /// together (overlapping ones as one): a secret that holds another is replaced whole.
    pub fn redact_bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        let found = self.occurrences(bytes);
        if found.is_empty() {
            return Cow::Borrowed(bytes);
        }
        Cow::Owned(replace(bytes, &found))
    }

    /// [`Self::redact_bytes`] on a buffer the caller owns, rewritten where it is: a request
    /// log line holding a 50 MB body is not copied once more for the key found in it. Only
    /// when an occurrence is shorter than [`REDACTED`] (a secret of 8 or 9 bytes), which
    /// would make the text grow, is it rebuilt in a second buffer.
    pub fn redact_in_place(&self, bytes: &mut Vec<u8>) {
        let found = self.occurrences(bytes.as_slice());
        if found.is_empty() {
            return;
        }
        if !replace_in_place(bytes, &found) {
            *bytes = replace(bytes, &found);
        }
    }

    /// Where the secrets occur in the text `pieces` make joined (a request log line whose
    /// bodies are not copied into it; see [`Pieces`]), overlapping occurrences joined into
    /// one, as positions in that joined text: exactly what [`Self::redact_bytes`] of the
    /// joined text replaces.
    pub fn found_in_pieces(&self, pieces: &Pieces<'_>) -> Vec<Range<usize>> {
        merged(&self.occurrences(pieces))
    }

    /// Where the secrets occur in `hay`, sorted by start (overlapping ones included).
    ///
    /// The text is read once for every search (see [`Hay::each_found_all`]): the prefix of
    /// this router's keys, and each secret whole or, in a text that holds escapes, each
    /// group's shared prefix, read on from each hit with escapes allowed.
    fn occurrences<H: Hay + ?Sized>(&self, hay: &H) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        if hay.len() < self.shortest.min(ROUTER_KEY_LEN) {
            return found;
        }
        let (base, extra) = (&*self.base.searches, &*self.extra);
        let base_needles: &[Needle<'_>] = &base.needles;
        if !hay.holds(b'\\') {
            let needle = |i: usize| match base_needles.get(i) {
                Some(needle) => needle,
                None => &extra.needles[i - base_needles.len()],
            };
            let count = 1 + base_needles.len() + extra.needles.len();
            hay.each_found_all(
                count,
                |i| match i.checked_sub(1) {
                    None => &ROUTER_KEY_PREFIX,
                    Some(i) => &needle(i).whole,
                },
                false,
                |i, at| match i.checked_sub(1) {
                    None => add_router_key(hay, at, &mut found),
                    Some(i) => found.push(at..at + needle(i).len()),
                },
            );
        } else {
            // Keys of one provider often share their first characters (`sk-proj-`): one
            // search for each prefix, its hits overlapping (an occurrence may start inside
            // the last hit: `aaaa` in `aaaaab`).
            let group = |g: usize| match base.groups.get(g) {
                Some(range) => &base_needles[range.clone()],
                None => &extra.needles[extra.groups[g - base.groups.len()].clone()],
            };
            let count = 1 + base.groups.len() + extra.groups.len();
            let mut reads = ReadBudget::for_text(hay.len());
            hay.each_found_all(
                count,
                |g| match g.checked_sub(1) {
                    None => &ROUTER_KEY_PREFIX,
                    Some(g) => &group(g)[0].prefix,
                },
                true,
                |g, at| match g.checked_sub(1) {
                    None => add_router_key(hay, at, &mut found),
                    Some(g) => {
                        for needle in group(g) {
                            if let Some(end) = escaped_end(hay, at, &needle.text, &mut reads) {
                                found.push(whole_escapes(hay, at)..end);
                            }
                        }
                    }
                },
            );
            self.find_escaped_heads(hay, &mut found, &mut reads);
            if reads.spent() {
                // Not searched through: none of it may be kept (see `ReadBudget`).
                return std::iter::once(0..hay.len()).collect();
            }
        }
        found.sort_unstable_by_key(|r| (r.start, r.end));
        found
    }

    /// [`Self::redact_bytes`] for text.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Occurrences start and end on whole characters and the marker is ASCII, so the
            // text stays valid UTF-8.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// A request path redacted: as [`Self::redact`], and when its percent-decoded form holds
    /// a secret (`/threads/sk%2Dclient.../runs`: any character may be written `%XX`, in
    /// either case, and the encoded forms [`percent_encoded`] knows cover only the
    /// characters that must be encoded), that decoded form with the secret replaced. A path
    /// is short: decoding it whole is cheaper than listing every way a key's characters may
    /// be encoded. A path encoded twice (`sk%252D...`, a client that encodes a segment it
    /// took from an encoded URL) is decoded again, up to [`PATH_DECODINGS`] times; each level
    /// is redacted before the next is decoded, so a secret that holds `%XX` itself is
    /// found as written.
    pub fn redact_path<'t>(&self, path: &'t str) -> Cow<'t, str> {
        let written = self.redact(path);
        if memchr::memchr(b'%', path.as_bytes()).is_none() {
            return written;
        }
        let mut level = written.to_string();
        let mut found_decoded = false;
        for _ in 0..PATH_DECODINGS {
            let decoded = percent_encoding::percent_decode_str(&level).decode_utf8_lossy();
            let Cow::Owned(decoded) = decoded else {
                break;
            };
            let redacted = match self.redact(&decoded) {
                Cow::Owned(redacted) => Some(redacted),
                Cow::Borrowed(_) => None,
            };
            found_decoded |= redacted.is_some();
            level = redacted.unwrap_or(decoded);
        }
        if found_decoded {
            Cow::Owned(level)
        } else {
            written
        }
    }

    /// Redacts an owned string without copying it when there is nothing to replace.
    pub fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(redacted) => redacted,
        }
    }

    /// The configured secrets, then the request's.
    fn needles(&self) -> impl Iterator<Item = &Needle<'_>> {
        self.base
            .searches
            .needles
            .iter()
            .map(|n| n as &Needle<'_>)
            .chain(&self.extra.needles)
    }

    /// Adds the occurrences whose first escape is among their first [`PREFIX_CHARS`]
    /// characters (the others start with their prefix as it is: see [`Self::occurrences`]).
    /// Such an escape sits at a backslash, with fewer than [`PREFIX_CHARS`] plain characters
    /// of the secret before it. Each backslash's escape is decoded once; most (`\n`, `\"`)
    /// decode to a character no secret begins with, and end the look there.
    fn find_escaped_heads<H: Hay + ?Sized>(
        &self,
        hay: &H,
        found: &mut Vec<Range<usize>>,
        reads: &mut ReadBudget,
    ) {
        // The last escape read on from, as read deepest from its backslash: what it decodes
        // to and where it ends. A backslash further inside it (`\\u0073` read from its second
        // backslash, `\u0073` from its third) often reads the same character ending at the
        // same byte, and would read on from there all over again, once for each. Not for a
        // secret with a backslash among its first characters, whose readings from inside an
        // escape differ.
        let mut last_read_on: Option<(u32, usize)> = None;
        let skip_inside = !self.heads.may_hold(u32::from(b'\\'));
        // Where the run of backslashes the last one read is in ends. A backslash with a
        // backslash at each of the next 2^ESCAPE_DEPTH - 1 bytes reads as a backslash at
        // every depth (`\\\\\\\\` is one, three levels deep), which no secret begins with
        // unless one has a backslash among its first characters: not read. A JSON error of
        // 10 MB of backslashes was read from each, at 2.5x the cost of two levels (bb75).
        let mut run_end = 0;
        hay.each_byte(b'\\', |backslash| {
            if reads.spent() {
                return;
            }
            if skip_inside {
                if backslash >= run_end {
                    run_end = backslash + 1;
                    while hay.at(run_end) == Some(b'\\') {
                        run_end += 1;
                    }
                }
                if run_end - backslash >= 1 << ESCAPE_DEPTH {
                    return;
                }
            }
            // What `read_char` says of the usual escapes, without its detour through depths.
            let (decoded, after) = match hay.at(backslash + 1) {
                Some(b'n') => (u32::from(b'\n'), backslash + 2),
                Some(b'"') => (u32::from(b'"'), backslash + 2),
                Some(b't') => (u32::from(b'\t'), backslash + 2),
                Some(b'r') => (u32::from(b'\r'), backslash + 2),
                // Read from every backslash but those deep in a run (above): linear, unlike
                // `escaped_end`'s reads, which `reads` bounds.
                _ => match read_char(hay, backslash, ESCAPE_DEPTH) {
                    Some(read) => read,
                    None => return,
                },
            };
            // A secret's own backslash, written as it is or escaped once, reads as another
            // escape's start at the deepest level (`\\n`): it is looked for too, when some
            // secret has one among its first characters.
            let backslash_read = u32::from(b'\\');
            let own_backslash = decoded != backslash_read && self.heads.may_hold(backslash_read);
            if !self.heads.may_hold(decoded) && !own_backslash {
                return;
            }
            if skip_inside && last_read_on == Some((decoded, after)) {
                return;
            }
            last_read_on = Some((decoded, after));
            for needle in self.needles() {
                for &(head, before) in needle.heads() {
                    if fold(head) != fold(decoded) && !(own_backslash && head == backslash_read) {
                        continue;
                    }
                    let Some(start) = backslash.checked_sub(before) else {
                        continue;
                    };
                    let plain = &needle.text.as_bytes()[..before];
                    if (start..backslash).all(|i| {
                        hay.at(i)
                            .is_some_and(|b| b.eq_ignore_ascii_case(&plain[i - start]))
                    }) && let Some(end) = escaped_end(hay, start, &needle.text, reads)
                    {
                        found.push(whole_escapes(hay, start)..end);
                    }
                }
            }
        });
    }
}

impl RequestRedactor<'_> {
    /// Where to cut the text `kept` followed by `more` at byte `at` (a character boundary of
    /// the two joined) or before it, so that what is kept does not end with part of a
    /// secret: a cut inside one would leave its first part, which no redaction recognises
    /// any more. The cut moves back to the start of any secret (known, or a key of this
    /// router's form) that begins before it and runs past it, as far as the text shows; a
    /// text that ends first, matching so far, counts as one (its rest may come in a piece
    /// never read), and so does a secret that holds another.
    ///
    /// The texts cut (an answer's text, an error's message) are read from JSON already, but
    /// may hold a known secret written with JSON escapes all the same (a model quoting
    /// JSON): the sinks quote the text once more, and their redaction reads escapes to
    /// [`ESCAPE_DEPTH`] levels, so a cut inside such a form would leave its first part
    /// unrecognised (bb74: half a key's characters kept). The cut moves back before those
    /// too: the text is read as far as the widest such form either side of the cut, each
    /// place once (see [`EscapedScan`]).
    pub fn safe_cut(&self, kept: &str, more: &str, at: usize) -> usize {
        let text = Joined(kept.as_bytes(), more.as_bytes());
        let longest = self.reach();
        let mut cut = at.min(text.len());
        let mut escaped: Option<EscapedScan> = None;
        let mut read_escapes = true;
        loop {
            if let Some(start) = self.first_across(&text, cut, longest) {
                cut = start;
                continue;
            }
            if !read_escapes {
                return cut;
            }
            let scan = escaped.get_or_insert_with(|| EscapedScan::new(self, &text, cut));
            match scan.first_across(self, &text, cut) {
                EscapedAcross::None => return cut,
                EscapedAcross::At(start) => cut = start,
                EscapedAcross::Unread(start) => {
                    cut = start;
                    read_escapes = false;
                }
            }
        }
    }

    /// How far past a cut [`Self::safe_cut`] may read in a text without backslashes: the
    /// longest secret's length (at least a router key's). Such a text read only this far
    /// past where it is cut is cut as it would be whole.
    pub fn reach(&self) -> usize {
        self.needles()
            .map(Needle::len)
            .fold(ROUTER_KEY_LEN, usize::max)
    }

    /// The earliest start of a secret that runs across `cut` in `text` (see
    /// [`Self::safe_cut`]): those start less than `longest` bytes before it.
    fn first_across(&self, text: &Joined<'_>, cut: usize, longest: usize) -> Option<usize> {
        (cut.saturating_sub(longest - 1)..cut).find(|&start| {
            let runs_past = |len: usize| len > cut - start;
            self.needles()
                .map(|n| n.text.as_bytes())
                .filter(|secret| runs_past(secret.len()))
                .any(|secret| {
                    text.matches_from(start, secret.len(), |i, b| {
                        b.eq_ignore_ascii_case(&secret[i])
                    })
                })
                || (runs_past(ROUTER_KEY_LEN)
                    && text.matches_from(start, ROUTER_KEY_LEN, router_key_byte))
        })
    }

    /// Most bytes a known secret can span in a text a sink quotes once more (see
    /// [`Redactor::widest_occurrence`]): escaped one level less than [`ESCAPE_DEPTH`], as the
    /// sinks' redaction reads no deeper. Reading as wide as `ESCAPE_DEPTH` levels made a
    /// 4,000-character credential read 864 KB either side of each cut (bb80: 1.8 s of a
    /// thread, where 0.7 s had been).
    fn widest_escaped(&self) -> usize {
        let longest = self.needles().map(Needle::len).max().unwrap_or(0);
        longest.saturating_mul(6usize.pow(u32::from(ESCAPE_DEPTH - 1)))
    }
}

/// The known secrets read with escapes (as [`escaped_end`] reads them, or as they are) at
/// the places before a cut, for [`RequestRedactor::safe_cut`]: each place is read once,
/// however often the cut moves back (it moved back one occurrence at a time through a text
/// that is one secret over and over, and each move read a whole window again), and only
/// places where some reading of the text begins like a secret cost a read of the budget (a
/// text of backslashes, LaTeX, paths, read whole at each place, spent it with no secret in
/// sight, and the window was cut away: bb77).
struct EscapedScan {
    /// The places read so far run from here to the first cut.
    from: usize,
    /// Where the text ends as read: the first cut and the widest occurrence past it.
    end: usize,
    /// The most bytes one occurrence can span.
    widest: usize,
    /// Each place read where a secret begins, and where it ends (`usize::MAX`: the text
    /// ends first, matching so far).
    found: Vec<(usize, usize)>,
    /// The secrets' first characters, folded as [`fold`] folds them.
    firsts: Vec<u32>,
    reads: ReadBudget,
}

impl EscapedScan {
    fn new(redactor: &RequestRedactor<'_>, text: &Joined<'_>, cut: usize) -> Self {
        let widest = redactor.widest_escaped();
        let firsts = redactor
            .needles()
            .filter_map(|n| n.heads().first().map(|&(c, _)| fold(c)))
            .collect();
        Self {
            from: cut,
            end: text.len().min(cut.saturating_add(widest)),
            widest,
            found: Vec::new(),
            firsts,
            reads: ReadBudget::for_text(widest.saturating_mul(2)),
        }
    }

    /// Where a secret begins that runs across `cut`: it ends past the cut, or the text ends
    /// while it still matches (its rest may come in a piece never read). Such a one begins
    /// less than the widest occurrence before the cut; the places there not read yet are
    /// read first.
    fn first_across(
        &mut self,
        redactor: &RequestRedactor<'_>,
        text: &Joined<'_>,
        cut: usize,
    ) -> EscapedAcross {
        let from = cut.saturating_sub(self.widest);
        if from < self.from {
            if let Some(unread) = self.read_places(redactor, text, from..self.from) {
                return unread;
            }
            self.from = from;
        }
        self.found
            .iter()
            .filter(|&&(start, end)| (from..cut).contains(&start) && end > cut)
            .map(|&(start, _)| start)
            .min()
            .map_or(EscapedAcross::None, EscapedAcross::At)
    }

    /// Reads the secrets at each place of `places`, adding those found; `Unread` when the
    /// budget runs out (see [`ReadBudget`]): the cut then comes back to the first place.
    fn read_places(
        &mut self,
        redactor: &RequestRedactor<'_>,
        text: &Joined<'_>,
        places: Range<usize>,
    ) -> Option<EscapedAcross> {
        let window = Watched {
            text,
            end: self.end,
            read_past_end: Cell::new(false),
        };
        for start in places.clone() {
            if !self.may_begin_at(&window, start) {
                continue;
            }
            let mut longest_end = None;
            for needle in redactor.needles() {
                window.read_past_end.set(false);
                match escaped_end(&window, start, &needle.text, &mut self.reads) {
                    Some(end) => longest_end = longest_end.max(Some(end)),
                    None if window.read_past_end.get() => longest_end = Some(usize::MAX),
                    None if self.reads.spent() => {
                        let start = char_start_at_or_before(text, places.start);
                        return Some(EscapedAcross::Unread(start));
                    }
                    None => {}
                }
            }
            if let Some(end) = longest_end {
                self.found.push((start, end));
            }
        }
        None
    }

    /// Whether some reading of the text at `at` (as it is, or an escape at any depth) may
    /// be the first character of a secret.
    fn may_begin_at(&self, window: &Watched<'_>, at: usize) -> bool {
        let first = |c: u32| self.firsts.contains(&fold(c));
        match window.at(at) {
            // A backslash with as many after it as the deepest escape has reads as a
            // backslash at every depth: a run of them is passed over a byte at a time.
            Some(b'\\')
                if (at..=at + (1 << ESCAPE_DEPTH)).all(|i| window.text.at(i) == Some(b'\\')) =>
            {
                first(u32::from(b'\\'))
            }
            // An escape the text ends inside of may be any character.
            Some(b'\\') => {
                window.read_past_end.set(false);
                let readings = readings_at(window, at);
                window.read_past_end.get() || readings.iter().flatten().any(|&(c, _)| first(c))
            }
            // A character as it is (none where a character does not begin).
            Some(_) => read_char(window, at, 0).is_some_and(|(c, _)| first(c)),
            None => false,
        }
    }
}

/// What [`EscapedScan::first_across`] found.
enum EscapedAcross {
    None,
    /// A secret, escaped or not, starts here and runs across the cut.
    At(usize),
    /// The places before the cut were too costly to read (see [`ReadBudget`]): the cut
    /// comes back to the first place not read, and escapes are not read again.
    Unread(usize),
}

/// The start of the character holding byte `at` of `text`.
fn char_start_at_or_before(text: &Joined<'_>, mut at: usize) -> usize {
    while at > 0 && text.at(at).is_some_and(|b| (0x80..0xc0).contains(&b)) {
        at -= 1;
    }
    at
}

/// The text up to `end`, noting whether it was read past there: reading an escaped secret
/// the text ends inside of does, and one ruled out by what the text holds does not.
struct Watched<'a> {
    text: &'a Joined<'a>,
    end: usize,
    read_past_end: Cell<bool>,
}

impl ByteAt for Watched<'_> {
    fn len(&self) -> usize {
        self.end
    }

    fn at(&self, i: usize) -> Option<u8> {
        let byte = self.text.at(i).filter(|_| i < self.end);
        if byte.is_none() {
            self.read_past_end.set(true);
        }
        byte
    }
}

/// Whether `b` may be byte `i` of a key this router makes (its prefix in any case, as
/// [`ROUTER_KEY_PREFIX`] is found).
fn router_key_byte(i: usize, b: u8) -> bool {
    match KEY_PREFIX.as_bytes().get(i) {
        Some(prefix) => b.eq_ignore_ascii_case(prefix),
        None => b.is_ascii_alphanumeric(),
    }
}

/// Two texts read as one, without copying them together.
struct Joined<'a>(&'a [u8], &'a [u8]);

impl ByteAt for Joined<'_> {
    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    fn at(&self, i: usize) -> Option<u8> {
        match self.0.get(i) {
            Some(&b) => Some(b),
            None => self.1.get(i - self.0.len()).copied(),
        }
    }
}

impl Joined<'_> {
    /// Whether the `len` bytes from `start` each pass `fits`, those past the text's end
    /// taken to pass (the text may go on where it was not read).
    fn matches_from(&self, start: usize, len: usize, fits: impl Fn(usize, u8) -> bool) -> bool {
        (0..len).all(|i| self.at(start + i).is_none_or(|b| fits(i, b)))
    }
}

/// What a record's texts are cut around (see [`RequestRedactor::safe_cut`]): the keys the
/// router knows of (the configured ones, as the proxy redacts them) and those the request
/// itself carried. Cheap to clone (two `Arc`s), so a stream's reader holds one; the request's
/// searchers are prepared only when a cut is made.
#[derive(Clone, Default)]
pub struct CutGuard {
    keys: Redactor,
    secrets: RequestSecrets,
}

impl std::fmt::Debug for CutGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CutGuard({:?}, {} request secrets)",
            self.keys,
            self.secrets.as_slice().len()
        )
    }
}

impl CutGuard {
    pub fn new(keys: Redactor, secrets: RequestSecrets) -> Self {
        Self { keys, secrets }
    }

    /// The redaction these secrets make, for [`RequestRedactor::safe_cut`]: prepare it once
    /// for several cuts.
    pub fn redactor(&self) -> RequestRedactor<'_> {
        self.keys.for_record(&self.secrets)
    }

    /// [`RequestRedactor::reach`].
    pub fn reach(&self) -> usize {
        self.redactor().reach()
    }

    /// [`RequestRedactor::safe_cut`] of `kept` followed by `more`.
    pub fn safe_cut(&self, kept: &str, more: &str, at: usize) -> usize {
        self.redactor().safe_cut(kept, more, at)
    }
}

/// A set of characters, exact for ASCII but for case: which escapes could begin a secret.
#[derive(Clone, Copy, Default)]
struct HeadChars {
    ascii: u128,
    other: bool,
}

impl HeadChars {
    fn of(needles: &[Needle<'_>]) -> Self {
        let mut set = Self::default();
        for &(c, _) in needles.iter().flat_map(Needle::heads) {
            match u8::try_from(fold(c)) {
                Ok(b) if b.is_ascii() => set.ascii |= 1 << b,
                _ => set.other = true,
            }
        }
        set
    }

    fn with(self, other: &Self) -> Self {
        Self {
            ascii: self.ascii | other.ascii,
            other: self.other | other.other,
        }
    }

    fn may_hold(&self, c: u32) -> bool {
        match u8::try_from(fold(c)) {
            Ok(b) if b.is_ascii() => self.ascii & (1 << b) != 0,
            _ => self.other,
        }
    }
}

/// `c` with an ASCII upper-case letter lower-cased: secrets are compared so.
fn fold(c: u32) -> u32 {
    if (u32::from(b'A')..=u32::from(b'Z')).contains(&c) {
        c + u32::from(b'a' - b'A')
    } else {
        c
    }
}

/// Bytes of a text searched at a time ([`find_folded`]), lower-cased into a buffer when
/// they hold an upper-case letter (a longer needle gets a window of twice its length).
const WINDOW: usize = 4096;

/// A window this short is lower-cased on the stack.
const SMALL_WINDOW: usize = 256;

/// Needles searched in one pass over a text ([`Hay::each_found_all`]): each needs a word to
/// say where its next hit may start.
const BATCH: usize = 32;

/// A needle searched for ignoring ASCII case: its lower-cased form, searched with `memmem`
/// in the text lower-cased a window at a time ([`find_folded`]).
#[derive(Clone)]
pub(crate) struct Caseless {
    /// The needle lower-cased.
    finder: Finder<'static>,
}

impl Caseless {
    fn new(needle: &[u8]) -> Self {
        Self {
            finder: Finder::new(&needle.to_ascii_lowercase()).into_owned(),
        }
    }

    /// The needle, lower-cased.
    fn needle(&self) -> &[u8] {
        self.finder.needle()
    }
}

/// Calls `f(i, at)` with each position `at` in `hay` where needle `i` (of `count`, as
/// `finder` gives it) occurs in any ASCII case, at `next[i]` or after; each hit moves `next[i]` on,
/// past the hit's end, or one byte when `overlapping`. `hay` begins at byte `base` of the
/// whole text, which `at` and `next` count in.
///
/// `hay` is read once for all the needles, a window at a time, each window overlapping the
/// last by the longest needle's length less one byte: a window with an upper-case letter is
/// lower-cased into a buffer of its size, the others (many names, ids and texts) are
/// searched as they are; each needle is searched in it with `memmem`. Nothing the size of
/// the text is copied or allocated, and the search stays linear in the text as `memmem` is
/// (a client's own key is searched for too: a search that could go quadratic would let one
/// request hold a sink).
fn find_folded<'n>(
    hay: &[u8],
    base: usize,
    count: usize,
    finder: &impl Fn(usize) -> &'n Caseless,
    overlapping: bool,
    next: &mut [usize],
    f: &mut impl FnMut(usize, usize),
) {
    let lens = (0..count).map(|i| finder(i).needle().len());
    let (Some(shortest), Some(longest)) = (lens.clone().min(), lens.max()) else {
        return;
    };
    if hay.len() < shortest {
        return;
    }
    let window = hay.len().min(WINDOW.max(2 * longest));
    let step = |n: usize| if overlapping { 1 } else { n.max(1) };
    let mut small = [0; SMALL_WINDOW];
    let mut large = Vec::new();
    // Where the window starts in `hay`.
    let mut start = 0;
    loop {
        let end = (start + window).min(hay.len());
        let raw = &hay[start..end];
        let text: &[u8] = if !has_upper_case(raw) {
            raw
        } else if let Some(small) = small.get_mut(..raw.len()) {
            lower_case_into(small, raw)
        } else {
            large.resize(raw.len(), 0);
            lower_case_into(&mut large, raw)
        };
        let at_start = base + start;
        for (i, next) in next.iter_mut().enumerate().take(count) {
            let needle = &finder(i).finder;
            let mut from = (*next).max(at_start) - at_start;
            while let Some(at) = text.get(from..).and_then(|rest| needle.find(rest)) {
                f(i, at_start + from + at);
                from += at + step(needle.needle().len());
            }
            *next = (*next).max(at_start + from);
        }
        // The window's last bytes may begin a hit that runs past it.
        if end == hay.len() {
            return;
        }
        start = end + 1 - longest;
    }
}

/// Whether `bytes` holds an ASCII upper-case letter; read in blocks the compiler turns into
/// vector instructions.
fn has_upper_case(bytes: &[u8]) -> bool {
    bytes.chunks(32).any(|block| {
        block
            .iter()
            .fold(0u8, |any, b| any | u8::from(b.is_ascii_uppercase()))
            != 0
    })
}

/// `from` lower-cased into `to` (of the same length).
fn lower_case_into<'t>(to: &'t mut [u8], from: &[u8]) -> &'t [u8] {
    for (to, from) in to.iter_mut().zip(from) {
        *to = from.to_ascii_lowercase();
    }
    to
}

/// One secret, prepared for searching.
#[derive(Clone)]
struct Needle<'a> {
    text: Cow<'a, str>,
    /// The whole secret: what a text without escapes is searched for.
    whole: Caseless,
    /// Its first [`PREFIX_CHARS`] characters: an occurrence with no escape among them starts
    /// with these bytes (in any case).
    prefix: Caseless,
    /// Its first [`PREFIX_CHARS`] characters, each with the byte length of the text before
    /// it; `head_count` of them are set.
    head_chars: [(u32, usize); PREFIX_CHARS],
    head_count: usize,
}

impl<'a> Needle<'a> {
    fn new(text: &'a str) -> Self {
        let mut head_chars = [(0, 0); PREFIX_CHARS];
        let mut head_count = 0;
        for (slot, (at, c)) in head_chars.iter_mut().zip(text.char_indices()) {
            *slot = (u32::from(c), at);
            head_count += 1;
        }
        let prefix = text
            .char_indices()
            .nth(PREFIX_CHARS)
            .map_or(text.len(), |(at, _)| at);
        Self {
            whole: Caseless::new(text.as_bytes()),
            prefix: Caseless::new(&text.as_bytes()[..prefix]),
            text: Cow::Borrowed(text),
            head_chars,
            head_count,
        }
    }

    fn into_owned(self) -> Needle<'static> {
        Needle {
            text: Cow::Owned(self.text.into_owned()),
            whole: self.whole,
            prefix: self.prefix,
            head_chars: self.head_chars,
            head_count: self.head_count,
        }
    }

    fn len(&self) -> usize {
        self.text.len()
    }

    fn heads(&self) -> &[(u32, usize)] {
        &self.head_chars[..self.head_count]
    }

    fn same_prefix(&self, other: &Needle<'_>) -> bool {
        self.prefix.needle() == other.prefix.needle()
    }
}

/// The runs of `needles` (sorted as [`sort_caseless`] does) that share their prefix, in any
/// case: keys of one provider often share their first characters (`sk-proj-`), searched for
/// once.
fn prefix_groups(needles: &[Needle<'_>]) -> Vec<Range<usize>> {
    let mut start = 0;
    needles
        .chunk_by(Needle::same_prefix)
        .map(|group| {
            start += group.len();
            start - group.len()..start
        })
        .collect()
}

/// Where an occurrence found at `start` is replaced from: before the backslashes of an escape
/// it may have been read from inside of (in `\\\u0073k-...`, an escaped backslash then an
/// escaped `s`, one reading starts at the second backslash), so the JSON around it stays
/// valid, at every one of the [`ESCAPE_DEPTH`] levels. In a text that is not JSON
/// (`C:\sk-...`) those backslashes go too.
fn whole_escapes<H: Hay + ?Sized>(hay: &H, start: usize) -> usize {
    let mut start = unicode_escape_around(hay, start).unwrap_or(start);
    let mut run = backslashes_before(hay, start);
    // An odd run ends with the backslash of an escape. One level down each pair is one
    // backslash: an odd number of pairs ends with one that begins an escape there (two
    // bytes); two levels down, each four (four bytes).
    let mut width = 1;
    for _ in 0..ESCAPE_DEPTH {
        if run % 2 == 1 {
            start -= width;
        }
        run /= 2;
        width *= 2;
    }
    start
}

/// The `u` of a `\uXXXX` escape that an occurrence at `start` begins inside of, among its hex
/// digits (a secret that begins with hex digits, found in `\uabcd1234...`): replacing from
/// there left `\u[redacted]`, which no JSON parser reads. The escape goes with it (the
/// backslashes before the `u` are taken by [`whole_escapes`]), and so does the escape of the
/// first half of a surrogate pair before it, when it is the second half (`\ud83d\ude00...`
/// left `\ud83d[redacted]`, half a character, which strict parsers refuse; bb57).
fn unicode_escape_around<H: Hay + ?Sized>(hay: &H, start: usize) -> Option<usize> {
    let digits = (0..start)
        .rev()
        .take(3)
        .take_while(|&i| hay.at(i).is_some_and(|b| b.is_ascii_hexdigit()))
        .count();
    let u = (0..=digits).find_map(|k| {
        let u = start.checked_sub(k + 1)?;
        (hay.at(u) == Some(b'u') && escape_at(hay, u)).then_some(u)
    })?;
    let is_low_half = escaped_unit(hay, u).is_some_and(|unit| (0xDC00..0xE000).contains(&unit));
    let backslashes = backslashes_before(hay, u);
    let high = (u - backslashes)
        .checked_sub(5)
        .filter(|&high| hay.at(high) == Some(b'u') && escape_at(hay, high))
        .filter(|&high| {
            escaped_unit(hay, high).is_some_and(|unit| (0xD800..0xDC00).contains(&unit))
        });
    Some(high.filter(|_| is_low_half).unwrap_or(u))
}

/// Whether the `u` at `u` is an escape's, at any depth: an odd run of backslashes before
/// it, or an odd number of pairs, or of fours (see [`whole_escapes`]).
fn escape_at<H: Hay + ?Sized>(hay: &H, u: usize) -> bool {
    let run = backslashes_before(hay, u);
    run % (1 << ESCAPE_DEPTH) != 0
}

/// How many backslashes end the text before `at`.
fn backslashes_before<H: Hay + ?Sized>(hay: &H, at: usize) -> usize {
    (0..at)
        .rev()
        .take_while(|&i| hay.at(i) == Some(b'\\'))
        .count()
}

/// The UTF-16 unit the four hex digits after the `u` at `u` write.
fn escaped_unit<H: Hay + ?Sized>(hay: &H, u: usize) -> Option<u32> {
    let mut bytes = [0; 4];
    let digits = std::str::from_utf8(hay.copy_at(u + 1, &mut bytes)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// Where `secret` ends if it starts at `at` in `hay`, each of its characters written as it is
/// or as a JSON escape (up to [`ESCAPE_DEPTH`] levels), in either case if an ASCII letter
/// (`\u0053` is an `s` too: what the escape stands for is compared, the escape's own letters
/// are read as JSON reads them).
///
/// Each character read takes one from `reads`; none left, it reads nothing more and says
/// `None`, which the caller must not take for "not there" (see [`ReadBudget`]).
fn escaped_end<H: ByteAt + ?Sized>(
    hay: &H,
    at: usize,
    secret: &str,
    reads: &mut ReadBudget,
) -> Option<usize> {
    // A secret escaped throughout reads one backslash per character: room for that four
    // times over.
    let chars = u32::try_from(secret.len()).unwrap_or(u32::MAX);
    let mut steps = chars.saturating_mul(4).max(MIN_BACKSLASH_READINGS);
    end_from(hay, at, secret, &mut steps, reads)
}

/// How many characters of secrets [`escaped_end`] may read in one text with escapes, in
/// all: [`READS_PER_BYTE`] per byte of the text, and [`READS_AT_LEAST`].
///
/// Each hit of a secret's prefix is read on, character by character, as far as the text
/// matches the secret. A secret that repeats itself (`aaaa…`: a client's own credential is
/// whatever the client sends) against a text that repeats most of it has a hit at every
/// byte, each read on nearly the secret's whole length: a 200 KB body and a 4,000-character
/// key took 31 s of a sink's thread (debug build), and a larger pair would hold it for
/// minutes while every other record waited. Texts people write never come near the bound:
/// a whole occurrence is read once, and a prefix hit that is no occurrence ends within a few
/// characters. A text that spends it is not searched further, and all of it is taken for a
/// secret: replaced whole, which the request log turns into a line of its own (see
/// `request_log`). Leaving it as it is could leave a key in it.
struct ReadBudget(usize);

/// See [`ReadBudget`].
const READS_PER_BYTE: usize = 8;

/// See [`ReadBudget`].
const READS_AT_LEAST: usize = 1 << 16;

impl ReadBudget {
    fn for_text(len: usize) -> Self {
        Self(
            len.saturating_mul(READS_PER_BYTE)
                .saturating_add(READS_AT_LEAST),
        )
    }

    /// Takes one read; `None` when none was left.
    fn take(&mut self) -> Option<()> {
        self.0 = self.0.checked_sub(1)?;
        Some(())
    }

    fn spent(&self) -> bool {
        self.0 == 0
    }
}

/// Readings of backslashes [`escaped_end`] tries for one place at least before it gives up:
/// each backslash in the text may be read at every depth, and a secret of many backslashes
/// against a run of them would try every combination.
const MIN_BACKSLASH_READINGS: u32 = 256;

/// [`escaped_end`]. At a backslash of the text, the same bytes read differently at each
/// depth (`\\n` is a newline escaped twice, or the secret's own `\` escaped once then `n`,
/// and `\n` the secret's `\n` written as it is): each reading is tried, deepest first.
fn end_from<H: ByteAt + ?Sized>(
    hay: &H,
    mut at: usize,
    secret: &str,
    steps: &mut u32,
    reads: &mut ReadBudget,
) -> Option<usize> {
    for (i, wanted) in secret.char_indices() {
        reads.take()?;
        if hay.at(at) == Some(b'\\') {
            let rest = &secret[i + wanted.len_utf8()..];
            // Readings at two depths often agree (`\u0073` read at depth 1 or 2 is an `s`
            // ending at the same byte: a deeper reading of a character that is no backslash
            // one level down is that character); the rest is read on once, not once for each,
            // which made a run of near misses cost 2^n per place (bb74).
            let mut read_on_from = [usize::MAX; ESCAPE_DEPTH as usize + 1];
            let readings = readings_at(hay, at);
            return (0..=ESCAPE_DEPTH).rev().find_map(|depth| {
                *steps = steps.checked_sub(1)?;
                let (got, after) = readings[usize::from(depth)]?;
                if fold(got) != fold(u32::from(wanted)) || read_on_from.contains(&after) {
                    return None;
                }
                read_on_from[usize::from(depth)] = after;
                end_from(hay, after, rest, steps, reads)
            });
        }
        let (got, after) = read_char(hay, at, ESCAPE_DEPTH)?;
        if fold(got) != fold(u32::from(wanted)) {
            return None;
        }
        at = after;
    }
    Some(at)
}

/// What [`read_char`] reads at the backslash at `at` at each depth, 0 to [`ESCAPE_DEPTH`],
/// each from the one below rather than all over again: a reading that is no backslash is
/// what every deeper one reads too.
fn readings_at<H: ByteAt + ?Sized>(
    hay: &H,
    at: usize,
) -> [Option<(u32, usize)>; ESCAPE_DEPTH as usize + 1] {
    let backslash = u32::from(b'\\');
    let mut readings = [None; ESCAPE_DEPTH as usize + 1];
    readings[0] = Some((backslash, at + 1));
    for depth in 1..=ESCAPE_DEPTH {
        let below = readings[usize::from(depth) - 1];
        readings[usize::from(depth)] = match below {
            Some((c, next)) if c == backslash => escape_after(hay, next, depth).or(below),
            other => other,
        };
    }
    readings
}

/// The character at `at` (as a code point; a lone surrogate stays one) and where the next
/// starts, reading JSON string escapes `depth` levels deep: at depth 2, `\\\/` is `/` and
/// `\\u002d` is `-`; at depth 3, `\\\\\\\/` and `\\\\u002d`.
fn read_char<H: ByteAt + ?Sized>(hay: &H, at: usize, depth: u8) -> Option<(u32, usize)> {
    let first = hay.at(at)?;
    if first != b'\\' || depth == 0 {
        if first.is_ascii() {
            return Some((u32::from(first), at + 1));
        }
        let len = match first {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return None,
        };
        let mut bytes = [0; 4];
        let c = std::str::from_utf8(hay.copy_at(at, &mut bytes[..len])?)
            .ok()?
            .chars()
            .next()?;
        return Some((u32::from(c), at + len));
    }
    // An escape at this depth: a backslash, then its letter, each written one level down
    // (where a backslash may itself be an escape, or turn out to be some other character).
    let (backslash, next) = read_char(hay, at, depth - 1)?;
    if backslash != u32::from(b'\\') {
        return Some((backslash, next));
    }
    // A backslash that begins no escape at this depth is one of the text's own characters,
    // escaped one level less (a secret holding `\`, JSON-escaped once as `\\`, read at depth
    // 2): it was taken for a broken escape, and the secret went unfound.
    escape_after(hay, next, depth).or(Some((backslash, next)))
}

/// The character a JSON escape whose backslash ends before `at` stands for, its letter and
/// digits read `depth - 1` levels deep, and where the next character starts; `None` when
/// what follows is no escape.
fn escape_after<H: ByteAt + ?Sized>(hay: &H, at: usize, depth: u8) -> Option<(u32, usize)> {
    let (letter, mut next) = read_char(hay, at, depth - 1)?;
    let decoded = match u8::try_from(letter).ok()? {
        b @ (b'"' | b'\\' | b'/') => u32::from(b),
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => u32::from(b'\n'),
        b'r' => u32::from(b'\r'),
        b't' => u32::from(b'\t'),
        b'u' => {
            let mut unit = 0;
            for _ in 0..4 {
                let (digit, after) = read_char(hay, next, depth - 1)?;
                unit = unit * 16 + char::from_u32(digit)?.to_digit(16)?;
                next = after;
            }
            if (0xd800..0xdc00).contains(&unit)
                && let Some((low, after)) = read_char(hay, next, depth)
                && (0xdc00..0xe000).contains(&low)
            {
                return Some((0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00), after));
            }
            unit
        }
        _ => return None,
    };
    Some((decoded, next))
}

/// Length of a key this router makes: `sk-lr-` and its random characters.
const ROUTER_KEY_LEN: usize = KEY_PREFIX.len() + KEY_RANDOM_CHARS;

/// The prefix of every key this router makes (`sk-lr-` and 32 base62 characters, see
/// [`crate::users::key`]), searched for in every text: any key of this form is replaced,
/// whoever it belongs to (one user pasting another's key in a prompt must not put it in the
/// logs and traces, and the router cannot search for every user's key by value). Only the
/// form as written is found (its characters need no JSON escape), in any case
/// (`SK-LR-ABC...`, an upstream that echoes it upper-cased). It cannot overlap itself, so
/// overlapping hits of it are the ones a plain search gives.
static ROUTER_KEY_PREFIX: std::sync::LazyLock<Caseless> =
    std::sync::LazyLock::new(|| Caseless::new(KEY_PREFIX.as_bytes()));

/// Adds the key of this router's form whose prefix [`ROUTER_KEY_PREFIX`] is at `at`, if a
/// whole one is there.
fn add_router_key<H: Hay + ?Sized>(hay: &H, at: usize, found: &mut Vec<Range<usize>>) {
    let end = at + ROUTER_KEY_LEN;
    // A key cut short by the text's end is none.
    let whole = end <= hay.len()
        && (at + KEY_PREFIX.len()..end)
            .all(|i| hay.at(i).is_some_and(|b| b.is_ascii_alphanumeric()))
        && !hay.at(end).is_some_and(|b| b.is_ascii_alphanumeric());
    if whole {
        found.push(at..end);
    }
}

/// `haystack` with each of `found` (sorted by start) replaced. Overlapping occurrences are
/// replaced as one: a secret holding another goes whole, and one read from inside an escape
/// does not leave the real one's end.
fn replace(haystack: &[u8], found: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for range in merged(found) {
        out.extend_from_slice(&haystack[last..range.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        last = range.end;
    }
    out.extend_from_slice(&haystack[last..]);
    out
}

/// [`replace`] within `bytes` itself, front to back, when every (merged) occurrence is at
/// least as long as the marker: what is written then never overtakes what is still to be
/// read. Returns false, with `bytes` untouched, when one is shorter.
fn replace_in_place(bytes: &mut Vec<u8>, found: &[Range<usize>]) -> bool {
    let ranges = merged(found);
    if ranges.iter().any(|r| r.len() < REDACTED.len()) {
        return false;
    }
    let (mut write, mut last) = (0, 0);
    for range in ranges {
        bytes.copy_within(last..range.start, write);
        write += range.start - last;
        bytes[write..write + REDACTED.len()].copy_from_slice(REDACTED.as_bytes());
        write += REDACTED.len();
        last = range.end;
    }
    let tail = bytes.len() - last;
    bytes.copy_within(last.., write);
    bytes.truncate(write + tail);
    true
}

/// `found` (sorted by start) with overlapping occurrences joined into one.
fn merged(found: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(found.len());
    for range in found {
        match out.last_mut() {
            Some(last) if range.start < last.end => last.end = last.end.max(range.end),
            _ => out.push(range.clone()),
        }
    }
    out
}

/// A text read byte by byte, as reading a secret's escapes reads it (see [`escaped_end`]).
pub(crate) trait ByteAt {
    fn len(&self) -> usize;

    /// The byte at `i`, if the text is that long.
    fn at(&self, i: usize) -> Option<u8>;

    /// `out` filled with the bytes from `at`, or `None` when the text ends first.
    fn copy_at<'o>(&self, at: usize, out: &'o mut [u8]) -> Option<&'o [u8]> {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.at(at + i)?;
        }
        Some(out)
    }
}

/// A text the search reads: one slice, or [`Pieces`] read as if joined. Positions are in
/// the whole text.
pub(crate) trait Hay: ByteAt {
    /// Whether `byte` occurs.
    fn holds(&self, byte: u8) -> bool;

    /// Calls `f` with each position of `byte`, in order.
    fn each_byte(&self, byte: u8, f: impl FnMut(usize));

    /// Calls `f(i, at)` with each position `at` where needle `i` (of `count`, as `finder`
    /// gives it; not empty) occurs in any ASCII case: for each needle, in order, every one
    /// when `overlapping`, else those `Finder::find_iter` gives (each search goes on after
    /// the last hit's end). The text is read once for all of them (see [`find_folded`]).
    fn each_found_all<'n>(
        &self,
        count: usize,
        finder: impl Fn(usize) -> &'n Caseless,
        overlapping: bool,
        f: impl FnMut(usize, usize),
    );
}

impl ByteAt for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.get(i).copied()
    }
}

impl Hay for [u8] {
    fn holds(&self, byte: u8) -> bool {
        memchr::memchr(byte, self).is_some()
    }

    fn each_byte(&self, byte: u8, f: impl FnMut(usize)) {
        memchr::memchr_iter(byte, self).for_each(f);
    }

    fn each_found_all<'n>(
        &self,
        count: usize,
        finder: impl Fn(usize) -> &'n Caseless,
        overlapping: bool,
        mut f: impl FnMut(usize, usize),
    ) {
        for first in (0..count).step_by(BATCH) {
            let mut next = [0; BATCH];
            let batch = |i| finder(first + i);
            let mut f = |i, at| f(first + i, at);
            let n = BATCH.min(count - first);
            find_folded(self, 0, n, &batch, overlapping, &mut next, &mut f);
        }
    }
}

/// Slices read as one text without being copied together: a request log line is its fields
/// and its bodies where they already are (see `request_log`), and a secret may run across
/// the seams between them.
pub struct Pieces<'a> {
    pieces: Vec<&'a [u8]>,
    /// Where each piece starts in the whole text.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Pieces<'a> {
    pub fn new(pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let pieces: Vec<&[u8]> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let mut starts = Vec::with_capacity(pieces.len());
        let mut len = 0;
        for piece in &pieces {
            starts.push(len);
            len += piece.len();
        }
        Self {
            pieces,
            starts,
            len,
        }
    }

    /// The pieces with their starts.
    fn each(&self) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        self.starts.iter().copied().zip(self.pieces.iter().copied())
    }

    /// Bytes `range` of the whole text, copied (a few, around a seam).
    fn copy(&self, range: Range<usize>) -> Vec<u8> {
        range.filter_map(|i| self.at(i)).collect()
    }
}

impl ByteAt for Pieces<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn at(&self, i: usize) -> Option<u8> {
        let k = self
            .starts
            .partition_point(|&start| start <= i)
            .checked_sub(1)?;
        self.pieces[k].get(i - self.starts[k]).copied()
    }
}

impl Hay for Pieces<'_> {
    fn holds(&self, byte: u8) -> bool {
        self.pieces.iter().any(|piece| piece.holds(byte))
    }

    fn each_byte(&self, byte: u8, mut f: impl FnMut(usize)) {
        for (start, piece) in self.each() {
            piece.each_byte(byte, |at| f(start + at));
        }
    }

    fn each_found_all<'n>(
        &self,
        count: usize,
        finder: impl Fn(usize) -> &'n Caseless,
        overlapping: bool,
        mut f: impl FnMut(usize, usize),
    ) {
        for first in (0..count).step_by(BATCH) {
            // Where each needle's next hit may start.
            let mut next = [0; BATCH];
            let batch = |i| finder(first + i);
            let mut f = |i, at| f(first + i, at);
            let n = BATCH.min(count - first);
            for (start, piece) in self.each() {
                // Hits within the piece, then those that start in it and run past its end:
                // each of those starts after every hit within it.
                find_folded(piece, start, n, &batch, overlapping, &mut next, &mut f);
                let end = start + piece.len();
                if end == self.len {
                    continue;
                }
                for (i, next) in next.iter_mut().enumerate().take(n) {
                    let len = batch(i).needle().len().max(1);
                    let low = (*next).max(start).max((end + 1).saturating_sub(len));
                    if low >= end {
                        continue;
                    }
                    // Too short to hold a hit that starts past `end`: those are the next
                    // piece's.
                    let seam = self.copy(low..(end + len - 1).min(self.len));
                    let one = |_| batch(i);
                    let next = std::slice::from_mut(next);
                    find_folded(&seam, low, 1, &one, overlapping, next, &mut |_, at| {
                        f(i, at)
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A long secret escaped throughout (every character a `\uXXXX`, or PHP's `\/` for each
    /// slash) is found: the backslash readings tried grow with the secret. (One that repeats
    /// itself, `k/k/…`, is read on from each of its own characters, more reads than
    /// `ReadBudget` allows a text that holds just it: such a text goes whole, see
    /// `reading_on_from_prefix_hits_is_bounded`.)
    #[test]
    fn a_long_secret_escaped_throughout_is_found() {
        let secret: String = (0..150).map(|i| format!("k{i:02x}/")).collect();
        let redactor = Redactor::new([&Secret::new(secret.clone())]);
        let unicode: String = secret
            .chars()
            .map(|c| format!("\\u{:04x}", u32::from(c)))
            .collect();
        let php = secret.replace('/', "\\/");
        for escaped in [unicode, php] {
            let text = format!("x {escaped} y");
            assert_eq!(redactor.redact(&text, &[]), format!("x {REDACTED} y"));
        }
    }

    fn keys() -> Vec<Secret> {
        vec![
            Secret::new("sk-configured-1234"),
            Secret::new("short"),
            Secret::new(""),
        ]
    }

    /// Any key of this router's form is replaced, known to the redactor or not (another
    /// user's, pasted in a prompt); a longer or shorter run after the prefix is not a key.
    #[test]
    fn every_router_key_is_replaced_whoever_it_belongs_to() {
        let key = "sk-lr-0123456789abcdefghijABCDEFGHIJkl";
        assert_eq!(key.len(), ROUTER_KEY_LEN);
        let r = Redactor::default();
        let text = format!("{{\"content\":\"mine: {key}, \\n{key}\"}} sk-lr-short {key}x");
        assert_eq!(
            r.redact(&text, &[]),
            format!("{{\"content\":\"mine: {REDACTED}, \\n{REDACTED}\"}} sk-lr-short {key}x")
        );
        assert!(matches!(
            r.redact("no key here at all", &[]),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn replaces_every_occurrence_and_the_request_secrets() {
        let r = Redactor::new(&keys());
        let request = [
            Secret::new("client-key-abcdef"),
            Secret::new("key=query-123"),
        ];
        let text = r#"{"a":"sk-configured-1234 and sk-configured-1234","b":"client-key-abcdef","c":"short","d":"?key=query-123"}"#;
        let out = r.redact(text, &request);
        assert_eq!(
            out,
            r#"{"a":"[redacted] and [redacted]","b":"[redacted]","c":"short","d":"?[redacted]"}"#
        );
        assert!(matches!(
            r.redact("nothing here", &request),
            Cow::Borrowed(_)
        ));
        assert!(!format!("{r:?}").contains("sk-configured"));
    }

    #[test]
    fn texts_shorter_than_any_secret_are_not_searched_but_exact_ones_are() {
        let redactor = Redactor::new(&keys());
        let client = [Secret::new("sk-client-9")];
        let request = redactor.for_request(&client);
        assert!(matches!(request.redact("sk-clie"), Cow::Borrowed(_)));
        assert_eq!(request.redact("sk-client-9"), REDACTED);
        assert_eq!(request.redact("sk-configured-1234"), REDACTED);
        assert_eq!(redactor.redact("sk-client-9", &[]), "sk-client-9");
    }

    /// A secret that begins with hex digits, found inside a `\uXXXX` escape before it, is
    /// replaced with the escape, so the JSON around it stays readable (bb45: `\u[redacted]`).
    #[test]
    fn a_secret_found_inside_a_unicode_escape_takes_the_escape_with_it() {
        let secret = "abcd1234-secret-key";
        let r = Redactor::new([&Secret::new(secret)]);
        for (text, expected) in [
            (r#""\uabcd1234-secret-key""#, r#""[redacted]""#),
            (r#""\u0abcd1234-secret-key""#, r#""[redacted]""#),
            (r#""\u00abcd1234-secret-key""#, r#""[redacted]""#),
            (r#""\u000abcd1234-secret-key""#, r#""[redacted]""#),
            // An escape one level down (JSON quoted in a string).
            (r#""\\uabcd1234-secret-key""#, r#""[redacted]""#),
            // Two levels down (that string in a text a sink quotes).
            (r#""\\\\uabcd1234-secret-key""#, r#""[redacted]""#),
            // Not an escape at any level: the `u` and the backslashes before it stay.
            (
                r#""\\\\\\\\uabcd1234-secret-key""#,
                r#""\\\\\\\\u[redacted]""#,
            ),
            (r#""\u00e9abcd1234-secret-key""#, r#""\u00e9[redacted]""#),
            // The second half of a surrogate pair goes with the first (bb57).
            (r#""\ud83d\udcabcd1234-secret-key""#, r#""[redacted]""#),
            (
                r#""\ud83d\u00abcd1234-secret-key""#,
                r#""\ud83d[redacted]""#,
            ),
        ] {
            assert_eq!(r.redact(text, &[]), expected, "{text}");
            let level_up = text.replace('\\', r"\\");
            let redacted = r.redact(&level_up, &[]).into_owned();
            assert!(!redacted.contains("1234-secret"), "{level_up}: {redacted}");
        }
    }

    /// A key in a path written `%XX` in either case, encoded twice or three times, or
    /// holding `%XX` itself: the records show the path decoded as far as it was found, with
    /// it replaced (as written when it was found as written); a path without one stays as written.
    #[test]
    fn a_key_in_a_path_is_found_however_often_it_was_encoded() {
        let r = Redactor::new(&[Secret::new("sk-a/b+c-key"), Secret::new("pct%41-key-1")]);
        for (path, shown) in [
            ("/t/sk%2Da%2fb%2Bc-key/runs", "/t/[redacted]/runs"),
            ("/t/sk-a%252Fb%252bc-key/runs", "/t/[redacted]/runs"),
            ("/t/sk%25252Da/b+c-key/runs", "/t/[redacted]/runs"),
            ("/t/pct%41-key-1/x%20y", "/t/[redacted]/x%20y"),
            ("/t/pct%2541-key-1/x", "/t/[redacted]/x"),
            ("/t/sk-a/b+c-key/runs", "/t/[redacted]/runs"),
        ] {
            assert_eq!(r.redact_path(path, &[]), shown, "{path}");
        }
        for path in ["/t/x%2520y/runs", "/t/plain"] {
            assert!(
                matches!(r.redact_path(path, &[]), Cow::Borrowed(_)),
                "{path}"
            );
        }
    }

    /// A key echoed in another ASCII case (`bearer sk-abc...` for `sk-AbC...`, an upstream
    /// that upper-cases what it quotes) gives away all but a bit per letter: it is found in
    /// any case, written as it is, JSON-escaped, percent-encoded (hex digits of both cases
    /// mixed too), in a path, the client's own key and one of the router's form too; a text
    /// cut keeps no part of one. A short value stays unsearched in any case, and letters
    /// beyond ASCII are compared as they are.
    #[test]
    fn keys_are_found_in_any_ascii_case() {
        let configured = [
            Secret::new("sk-AbCdEf/0123+XyZ"),
            Secret::new("Short"),
            Secret::new("CLÉ-secret-É"),
        ];
        let r = Redactor::new(&configured);
        let client = [Secret::new("Client-Key-0001")];
        let request = r.for_request(&client);
        for written in [
            "sk-AbCdEf/0123+XyZ",
            "sk-abcdef/0123+xyz",
            "SK-ABCDEF/0123+XYZ",
            "Sk-aBcDeF\\/0123+xYz",
            "\\u0053K-ABCDEF\\u002f0123\\u002BXYZ",
            "\\\\u0053k-abcdef\\\\\\/0123+xyz",
            "sk-abcdef%2F0123%2bxyz",
            "SK-ABCDEF%2f0123%2BXYZ",
            "client-key-0001",
            "CLIENT-KEY-0001",
            "cLÉ-SECRET-É",
            "SK-LR-0123456789ABCDEFGHIJABCDEFGHIJKL",
        ] {
            let text = format!("{{\"m\":\"Invalid key bearer {written}\\n\"}}");
            assert_eq!(
                request.redact(&text),
                "{\"m\":\"Invalid key bearer [redacted]\\n\"}",
                "{written}"
            );
            let pieces = Pieces::new(text.as_bytes().chunks(3));
            assert_eq!(request.found_in_pieces(&pieces).len(), 1, "{written}");
        }
        for text in ["short SHORT", "clé-secret-é", "CLé-SECRET-É"] {
            assert!(matches!(request.redact(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(
            request.redact_path("/v1/threads/SK%2dABCDEF%2F0123%2BXYZ/runs"),
            "/v1/threads/[redacted]/runs"
        );
        let text = "Bearer SK-ABCDEF/0123+XYZ and more";
        for at in 8..7 + 18 {
            assert_eq!(request.safe_cut(text, "", at), 7, "{at}");
        }
    }

    /// The text is lower-cased a window at a time (see `find_folded`): in a text of several
    /// windows, with keys of all cases at every distance from a window's edge, the search
    /// finds what a plain byte-by-byte comparison finds, in one piece and in many.
    #[test]
    fn a_long_text_is_searched_as_a_byte_by_byte_comparison_would() {
        let keys = ["sk-configured-1234", "Another-KEY-0123456789-abcdefghij"];
        let secrets = keys.map(Secret::new);
        let r = Redactor::new(&secrets);
        let request = r.for_request(&[]);
        let variants = [
            "sk-configured-1234",
            "SK-CONFIGURED-1234",
            "another-key-0123456789-ABCDEFGHIJ",
            "ANOTHER-KEY-0123456789-abcdefghij",
        ];
        let mut text = String::new();
        let mut k = 0;
        while text.len() < 5 * WINDOW {
            // Fillers that move the next key one byte on, across every window's edge.
            text.push_str(&"x".repeat(WINDOW - 40 + k % 45));
            for _ in 0..3 {
                text.push_str(variants[k % variants.len()]);
                k += 1;
            }
        }
        let lower = text.to_ascii_lowercase();
        let mut expected = Vec::new();
        for key in keys {
            let key = key.to_ascii_lowercase();
            expected.extend(lower.match_indices(&key).map(|(at, _)| at..at + key.len()));
        }
        expected.sort_unstable_by_key(|r| (r.start, r.end));
        assert!(expected.len() >= 15);
        assert_eq!(request.occurrences(text.as_bytes()), expected);
        for size in [1, 7, 300, WINDOW - 1, WINDOW + 13] {
            let pieces = Pieces::new(text.as_bytes().chunks(size));
            assert_eq!(
                request.found_in_pieces(&pieces),
                merged(&expected),
                "{size}"
            );
        }
        // A key longer than half a window gets a window of its own size.
        let long = format!("Long-{}", "aB".repeat(WINDOW));
        let r = Redactor::new([&Secret::new(long.clone())]);
        let text = format!(
            "{} {} x",
            "y".repeat(3 * WINDOW + 5),
            long.to_ascii_uppercase()
        );
        assert_eq!(
            r.redact(&text, &[]),
            format!("{} [redacted] x", "y".repeat(3 * WINDOW + 5))
        );
    }

    /// A window with no upper-case letter is searched as it is, one with some is lower-cased
    /// first: a key is found in either, in either case, and across the edge between them,
    /// whether it is a configured key or one the request carried.
    #[test]
    fn windows_with_and_without_upper_case_are_searched_alike() {
        let key = "sk-window-edge-0123456789";
        let client = "client-key-abcdefgh";
        let r = Redactor::new([&Secret::new(key)]);
        let carried = RequestSecrets::from(vec![Secret::new(client)]);
        let request = r.for_record(&carried);
        for at in [
            10,
            WINDOW - 30,
            WINDOW - 10,
            WINDOW - 1,
            WINDOW,
            2 * WINDOW - 12,
        ] {
            for secret in [key, client] {
                let upper = secret.to_ascii_uppercase();
                for (before, written, after) in [
                    ("x", secret, "y"),
                    ("X", secret, "y"),
                    ("x", secret, "Y"),
                    ("x", upper.as_str(), "y"),
                    ("X", upper.as_str(), "Y"),
                ] {
                    let text = format!("{}{written}{}", before.repeat(at), after.repeat(WINDOW));
                    let found = request.occurrences(text.as_bytes());
                    assert_eq!(
                        found,
                        vec![at..at + secret.len()],
                        "{before} {at} {written}"
                    );
                    let unprepared = r.for_request(carried.as_slice());
                    assert_eq!(unprepared.occurrences(text.as_bytes()), found);
                }
            }
        }
    }

    /// A secret that repeats itself against a text with escapes that repeats most of it
    /// would have every byte read on for nearly the secret's length (31 s for this text in
    /// a debug build): the reads are bounded, and the text they did not get through is
    /// replaced whole. A text without escapes is searched with `memmem` alone, and a text
    /// people write, however many prefix hits it has, is searched as before.
    #[test]
    fn reading_on_from_prefix_hits_is_bounded() {
        let key = "a".repeat(4000);
        let near_misses = format!("{}b", "a".repeat(3999)).repeat(50);
        let r = Redactor::default();
        let carried = [Secret::new(key.clone())];
        let escaped = format!("{near_misses}\\n");
        assert_eq!(r.redact(&escaped, &carried), REDACTED);
        assert!(matches!(r.redact(&near_misses, &carried), Cow::Borrowed(_)));
        // One provider's keys everywhere, none of them the configured one but the last,
        // written with an escape.
        let configured = "sk-proj-0123456789abcdefghij";
        let r = Redactor::new([&Secret::new(configured)]);
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("sk-proj-{i:010}zz \\n "));
        }
        let escaped_key = configured.replace('-', "\\u002d");
        let written = format!("{text}{escaped_key} end");
        assert_eq!(r.redact(&written, &[]), format!("{text}{REDACTED} end"));
    }

    /// Backslashes deep in a run are not read (each reads as a backslash at every depth):
    /// a key escaped one to three levels deep right after a run of any length is found all
    /// the same, and the run kept but for the backslashes that may be the key's escape.
    #[test]
    fn a_key_escaped_after_a_run_of_backslashes_is_found() {
        let key = "sk-run-0123456789abcdef";
        let r = Redactor::new([&Secret::new(key)]);
        // Written inside a JSON string: quoted, without the quotes.
        let inside = |s: &str| {
            let quoted = serde_json::to_string(s).expect("a string");
            quoted[1..quoted.len() - 1].to_owned()
        };
        let escaped = key.replacen('s', "\\u0073", 1);
        let forms = [escaped.clone(), inside(&escaped), inside(&inside(&escaped))];
        for form in &forms {
            for run in 0..=40 {
                // An even run: escaped backslashes, none the start of the key's escape.
                let before = "\\".repeat(2 * run);
                let text = format!("{before}{form} end");
                let out = r.redact(&text, &[]);
                // The backslashes it may have been escaped with go too: a reading may start
                // up to 7 of them early (`\\u0073` is an `s` two levels deep), and
                // `whole_escapes` takes up to 1 + 2 + 4 more.
                let kept = out
                    .strip_suffix(&format!("{REDACTED} end"))
                    .unwrap_or_else(|| panic!("{text} -> {out}"));
                assert!(kept.bytes().all(|b| b == b'\\'), "{text} -> {out}");
                assert!(kept.len() + 14 >= before.len(), "{text} -> {out}");
            }
        }
    }

    #[test]
    fn short_request_secrets_are_left_alone() {
        let r = Redactor::default();
        let none = [Secret::new("none")];
        assert_eq!(r.redact("none of it", &none), "none of it");
    }

    #[test]
    fn a_longer_secret_is_replaced_whole_whichever_list_it_is_in() {
        let configured = [Secret::new("abcdefgh")];
        let r = Redactor::new(&configured);
        let request = [Secret::new("xx-abcdefgh-yy")];
        assert_eq!(r.redact("1 xx-abcdefgh-yy 2", &request), "1 [redacted] 2");
        let r = Redactor::new(&request);
        assert_eq!(
            r.redact("1 xx-abcdefgh-yy 2", &configured),
            "1 [redacted] 2"
        );
    }

    const KEY: &str = "sk-SLASH/SECRET+key/0123456789";

    #[test]
    fn keys_written_with_json_escapes_are_found() {
        let r = Redactor::new(&[Secret::new(KEY)]);
        let every_char: String = KEY
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        for written in [
            KEY.replace('/', "\\/"),
            KEY.replace('-', "\\u002d"),
            KEY.replace('-', "\\u002D"),
            format!("\\u0073{}", &KEY[1..]),
            format!("s\\u006b{}", &KEY[2..]),
            format!("sk-S\\u004c{}", &KEY[5..]),
            every_char,
            // Escaped twice: a JSON text quoted into a JSON string.
            KEY.replace('/', "\\\\\\/"),
            KEY.replace('-', "\\\\u002d"),
            // Three times: that string in a text body a sink quotes (bb73).
            KEY.replace('/', "\\\\\\\\\\\\\\/"),
            KEY.replace('-', "\\\\\\\\u002d"),
            KEY.replace('-', "\\\\u005c\\\\u0075002d"),
        ] {
            let text = format!(r#"{{"m":"Invalid key Bearer {written}\n","n":"a\"b"}}"#);
            assert_eq!(
                r.redact(&text, &[]),
                r#"{"m":"Invalid key Bearer [redacted]\n","n":"a\"b"}"#,
                "{written}"
            );
        }
    }

    #[test]
    fn escapes_never_stretch_a_match() {
        let r = Redactor::new(&[Secret::new(KEY)]);
        for text in [
            // One character short, another one instead, an escape that is not JSON.
            format!("{}\\n", &KEY[..KEY.len() - 1].replace('/', "\\/")),
            KEY.replace('/', "\\u002f").replace("+", "\\u002c"),
            KEY.replace('-', "\\x2d"),
            KEY.replace('-', "\\u02d"),
        ] {
            assert!(matches!(r.redact(&text, &[]), Cow::Borrowed(_)), "{text}");
        }
        // A backslash elsewhere does not hide the key written as it is.
        assert_eq!(r.redact(&format!("a\\nb {KEY}"), &[]), "a\\nb [redacted]");
    }

    #[test]
    fn non_ascii_keys_and_surrogate_pairs() {
        let key = "clé-😀-secret";
        let r = Redactor::new(&[Secret::new(key)]);
        assert_eq!(
            r.redact(r#""cl\u00e9-\ud83d\ude00-secret""#, &[]),
            r#""[redacted]""#
        );
        assert_eq!(r.redact(&format!("«{key}»"), &[]), "«[redacted]»");
        assert_eq!(r.redact(&format!("\\n«{key}»"), &[]), "\\n«[redacted]»");
    }

    /// `c` in the other ASCII case, if a letter.
    fn swap_case(c: char) -> char {
        if c.is_ascii_uppercase() {
            c.to_ascii_lowercase()
        } else {
            c.to_ascii_uppercase()
        }
    }

    /// `c` written as a JSON string would hold it, one of several ways, in the other case
    /// when `how` says so (`S` for `s`, `\u0053` for `s`).
    fn escape_char(c: char, how: u8) -> String {
        let c = if how & 4 != 0 { swap_case(c) } else { c };
        match (c, how % 4) {
            ('/', 1) => "\\/".to_owned(),
            (_, 2) => format!("\\u{:04x}", c as u32),
            (_, 3) => format!("\\u{:04X}", c as u32),
            _ => c.to_string(),
        }
    }

    /// What `redact_in_place` leaves is what `redact_bytes` returns, whether the line shrinks
    /// (rewritten where it is) or grows (a secret shorter than the marker: rebuilt).
    #[test]
    fn redacting_in_place_agrees_with_a_copy() {
        let secrets = [
            Secret::new("sk-configured-1234"),
            Secret::new("eightchr"),
            Secret::new("configured-12"),
        ];
        let r = Redactor::new(&secrets);
        let request = r.for_request(&[]);
        for text in [
            "nothing to find here at all",
            "sk-configured-1234",
            "a sk-configured-1234 b sk-configured-1234sk-configured-1234 c",
            "x eightchr y sk-configured-1234",
            "sk-configured-1\\u0032\\u00334 tail",
        ] {
            let mut line = text.as_bytes().to_vec();
            request.redact_in_place(&mut line);
            assert_eq!(
                line,
                request.redact_bytes(text.as_bytes()).as_ref(),
                "{text}"
            );
        }
    }

    const ROUTER_KEY: &str = "sk-lr-0123456789abcdefghijABCDEFGHIJkl";

    /// A cut inside a known secret, a request's or a key of the router's form moves back to
    /// its start; one elsewhere stays. A text that ends inside a secret's beginning (its rest
    /// in a piece not read) counts as one.
    #[test]
    fn a_cut_never_falls_inside_a_secret() {
        let r = Redactor::new(&[Secret::new("sk-upstream-SECRET-abcdefgh12345")]);
        let request = [Secret::new("client-key-abcdef")];
        let r = r.for_request(&request);
        for key in [
            "sk-upstream-SECRET-abcdefgh12345",
            "client-key-abcdef",
            ROUTER_KEY,
        ] {
            let text = format!("Bearer {key} and more");
            for at in 7..7 + key.len() {
                assert_eq!(r.safe_cut(&text, "", at), 7, "{key} at {at}");
                // The same in two pieces, split anywhere.
                for split in 0..=text.len() {
                    let (kept, more) = text.split_at(split);
                    assert_eq!(r.safe_cut(kept, more, at), 7, "{key} {at} {split}");
                }
                // Its rest not read.
                assert_eq!(r.safe_cut(&text[..at], "", at), 7, "{key} at {at}");
                assert_eq!(r.safe_cut(&text[..at + 1], "", at), 7, "{key} at {at}");
            }
            assert_eq!(r.safe_cut(&text, "", 7 + key.len()), 7 + key.len());
            assert_eq!(r.safe_cut(&text, "", 6), 6);
        }
        // What only begins like one stays whole.
        let text = "sk-upstream-SECRET-abcdefgh1234X sk-lr-short, words.";
        for at in 0..=text.len() {
            assert_eq!(r.safe_cut(text, "", at), at, "{at}");
        }
        // A secret holding another, overlapping ones: back to the first one's start.
        let r = Redactor::new(&[Secret::new("abcabcab")]);
        let r = r.for_request(&[]);
        assert_eq!(r.safe_cut("xx abcabcabcabcab yy", "", 14), 3);
        // Past the text's end: at its end, which may be cut as well.
        assert_eq!(r.safe_cut("xx abc", "", 100), 3);
    }

    /// Many long secrets against a text of backslashes, LaTeX or CJK with no secret in it,
    /// cut where the text read ends (a stream's piece just past the bound): it is cut where
    /// asked, or a few bytes before (an escape the text ends inside of may begin a secret).
    /// Each place was read with every secret, and the budget ran out on such texts: the cut
    /// came back the widest occurrence, 43 KB for a 200-character credential (bb77).
    #[test]
    fn texts_with_no_secret_are_cut_where_asked_whatever_the_secrets() {
        let mut seed = 7u64;
        let mut random_key = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    char::from(
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                            [usize::try_from(seed >> 40).unwrap_or(0) % 62],
                    )
                })
                .collect()
        };
        let keys: Vec<Secret> = (0..24).map(|_| Secret::new(random_key(200))).collect();
        let credentials = [Secret::new("N".repeat(800)), Secret::new(random_key(800))];
        let r = Redactor::new(&keys);
        let r = r.for_request(&credentials);
        for unit in [
            "\\",
            "\\frac{\\alpha}{\\beta} \\\\ x_i \\cdot ",
            "C:\\dir\\",
            "日本語の文章",
        ] {
            let text = unit.repeat((1 << 20) / unit.len());
            let piece = 65_537.min(text.len() / 2);
            let mut split = text.len() - piece;
            while !text.is_char_boundary(split) {
                split -= 1;
            }
            let (kept, more) = text.split_at(split);
            for left in [0, 3, 100, 30_000] {
                let mut at = text.len() - left;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let cut = r.safe_cut(kept, more, at);
                let lost = at - cut;
                assert!(lost <= 16, "{unit:?} {left}: {lost} bytes lost");
                if !unit.contains('\\') {
                    assert_eq!(lost, 0, "{unit:?} {left}");
                }
            }
        }
    }

    /// A text that is one secret over and over, escaped, against a cut deep inside it: each
    /// move back read a window for one occurrence's width, and 8 MiB of it would have been
    /// read window by window to its start. Each place is read once, within one budget for
    /// all the moves: past it no further escapes are read.
    #[test]
    fn a_text_all_one_escaped_secret_is_cut_within_one_budget() {
        let credential = [Secret::new("a".repeat(100))];
        let r = Redactor::new(&[]);
        let r = r.for_request(&credential);
        let text = "\\u0061".repeat(40_000);
        let at = 200_000;
        let cut = r.safe_cut(&text, "", at);
        assert!(cut + 600 <= at, "{cut}");
        // Some way back, not all the way to the text's start.
        assert!(cut >= at / 2, "{cut}");
    }

    proptest! {
        /// A known key written with JSON escapes, one or two levels of them in any mix of
        /// forms (a model quoting JSON in its answer; the sinks quote the text once more): a
        /// cut inside it moves back to its start, whether the text goes on past the cut or
        /// ends there, and is split anywhere; a cut elsewhere stays. Cut inside, what was
        /// kept held half the key's characters in the request log (bb74).
        #[test]
        fn a_cut_never_falls_inside_an_escaped_key(
            hows in proptest::collection::vec(any::<u8>(), 28),
            twice in any::<bool>(),
            split in any::<proptest::sample::Index>(),
        ) {
            let key = "sk-up/stream-SECRET-abcd1234";
            let r = Redactor::new(&[Secret::new(key)]);
            let r = r.for_request(&[]);
            let once: String = key.chars().zip(&hows).map(|(c, how)| match how % 4 {
                0 => c.to_string(),
                1 if c == '/' => "\\/".to_owned(),
                1 | 2 => format!("\\u{:04x}", u32::from(c)),
                _ => format!("\\u{:04X}", u32::from(c)),
            }).collect();
            let escaped = if twice {
                let quoted = serde_json::to_string(&once).expect("a string");
                quoted[1..quoted.len() - 1].to_owned()
            } else {
                once
            };
            let text = format!("Bearer {escaped} and more");
            let (start, end) = (7, 7 + escaped.len());
            let split = split.index(text.len() + 1);
            for at in 0..=text.len() {
                let inside = start < at && at < end;
                let expected = if inside { start } else { at };
                prop_assert_eq!(r.safe_cut(&text, "", at), expected, "{} at {}", text, at);
                let (kept, more) = text.split_at(split);
                prop_assert_eq!(r.safe_cut(kept, more, at), expected, "{} at {}", text, at);
                // Its rest not read.
                prop_assert_eq!(r.safe_cut(&text[..at], "", at), expected, "{} at {}", text, at);
            }
        }
    }

    proptest! {
        /// Wherever a text with keys in it is cut, before or after a piece boundary: the cut
        /// comes no later than asked, on a character boundary, inside no key; and one with
        /// nothing read past it keeps no key's beginning at its end.
        #[test]
        fn no_cut_leaves_part_of_a_key(
            pieces in proptest::collection::vec(prop_oneof![
                Just("sk-configured-1234"), Just("sk-lr-0123456789abcdefghijABCDEFGHIJkl"),
                Just("sk-"), Just("é"), Just(" "), Just("ab"), Just("sk-lr-"), Just("日本"),
                Just("SK-CONFIGURED-1234"), Just("Sk-Lr-0123456789abcdefghijABCDEFGHIJkl"),
                Just("SK-"), Just("sK-cOnF"),
            ], 0..24),
            at in 0usize..400,
            split in 0usize..400,
        ) {
            let configured = [Secret::new("sk-configured-1234")];
            let r = Redactor::new(&configured);
            let r = r.for_request(&[]);
            let text = pieces.concat();
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let cut = r.safe_cut(&text, "", at);
            prop_assert!(cut <= at && text.is_char_boundary(cut));
            let mut split = split.min(text.len());
            while !text.is_char_boundary(split) {
                split -= 1;
            }
            let (kept, more) = text.split_at(split);
            prop_assert_eq!(r.safe_cut(kept, more, at), cut);
            // Keys are cut around in any case: compared lower-cased (which keeps every
            // byte where it is).
            let lower = text.to_ascii_lowercase();
            for key in ["sk-configured-1234", ROUTER_KEY] {
                let key = key.to_ascii_lowercase();
                for (start, _) in lower.match_indices(&key) {
                    prop_assert!(!(start < cut && cut < start + key.len()), "{} in {}", cut, text);
                }
                // With nothing read past `at`, what is kept ends with no part of a key that
                // what was read after it does not rule out.
                let read = &text[..at];
                let (kept, after) = read.split_at(r.safe_cut(read, "", at));
                let (kept, after) = (kept.to_ascii_lowercase(), after.to_ascii_lowercase());
                for len in 1..key.len() {
                    let rest = &key[len..];
                    let ruled_out = !rest.starts_with(&after[..after.len().min(rest.len())]);
                    prop_assert!(!kept.ends_with(&key[..len]) || ruled_out, "{} {}", read, len);
                }
            }
        }

        /// A text read in pieces is searched as the text joined: cut anywhere (inside a key,
        /// an escape, a run of backslashes, a character), the same occurrences are found,
        /// those of a key that overlaps itself included (as `find_iter` takes them, apart,
        /// in a text with no backslash).
        #[test]
        fn pieces_are_searched_as_the_text_joined(
            parts in proptest::collection::vec(prop_oneof![
                Just("sk-configured-1234"), Just("sk-conf/igured"), Just("sk-conf\\/igured"),
                Just("sk-conf%2Figured"), Just("\\u0073k-configured-1234"), Just("\\\\u0073"),
                Just("\\"), Just("\\ud83d\\ude00"), Just("\\udc00"), Just("sk-lr-"),
                Just("sk-lr-0123456789abcdefghijABCDEFGHIJkl"), Just("aaaa"), Just("aaaaa"), Just("k-"),
                Just(" "), Just("é"), Just("\n"), Just("0123"), Just("x\\\\y-secret"),
                // Other cases of the same.
                Just("SK-CONFIGURED-1234"), Just("sK-cOnF\\/IgUrEd"), Just("\\u0053K-Configured-1234"),
                Just("SK-CONF%2fIGURED"), Just("SK-LR-0123456789ABCDEFGHIJABCDEFGHIJKL"), Just("AAAA"),
                Just("X\\\\Y-SECRET"), Just("K-"), Just("Sk-Lr-"),
            ], 0..30),
            cuts in proptest::collection::vec(0usize..700, 0..8),
        ) {
            let r = Redactor::new(&[
                Secret::new("sk-configured-1234"),
                Secret::new("sk-conf/igured"),
                Secret::new("aaaaaaaa"),
            ]);
            let client = [Secret::new("x\\y-secret"), Secret::new("0123 é\u{1F600}")];
            let r = r.for_request(&client);
            let text = parts.concat();
            // Also with no backslash, which is searched otherwise.
            for text in [text.as_bytes(), text.replace('\\', "").as_bytes()] {
                let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(text.len())).collect();
                cuts.sort_unstable();
                let mut from = 0;
                let mut slices = Vec::new();
                for cut in cuts.into_iter().chain([text.len()]) {
                    slices.push(&text[from..cut]);
                    from = cut;
                }
                let pieces = Pieces::new(slices.iter().copied());
                prop_assert_eq!(
                    r.found_in_pieces(&pieces),
                    merged(&r.occurrences(text)),
                    "{:?}", slices
                );
            }
        }

        /// The readings at a backslash, each made from the one below, are `read_char`'s at
        /// every depth, on texts of backslashes, escapes' letters and hex digits.
        #[test]
        fn readings_built_up_agree_with_reading_at_each_depth(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "\\", "\\", "\\", "\\", "u", "u", "0", "0", "5", "c", "C", "7", "3", "d", "8",
                "D", "n", "t", "/", "\"", "\u{e9}",
            ]), 1..48),
        ) {
            let text = pieces.concat();
            let hay = text.as_bytes();
            for at in (0..hay.len()).filter(|&i| hay[i] == b'\\') {
                let readings = readings_at(hay, at);
                for depth in 0..=ESCAPE_DEPTH {
                    prop_assert_eq!(
                        readings[usize::from(depth)],
                        read_char(hay, at, depth),
                        "{} at {} depth {}", text, at, depth
                    );
                }
            }
        }

        #[test]
        fn redacting_in_place_agrees_with_a_copy_on_any_text(
            pieces in proptest::collection::vec(prop_oneof![
                Just("sk-configured-1234"), Just("eightchr"), Just("configured-12"),
                Just("\\u0073"), Just("\\"), Just("k-"), Just(" "), Just("abc"),
                Just("SK-CONFIGURED-1234"), Just("EightChr"), Just("CONFIGURED-12"), Just("\\u0053"),
            ], 0..24),
            short in any::<bool>(),
        ) {
            let mut secrets = vec![Secret::new("sk-configured-1234"), Secret::new("configured-12")];
            if short {
                secrets.push(Secret::new("eightchr"));
            }
            let r = Redactor::new(&secrets);
            let request = r.for_request(&[]);
            let text = pieces.concat();
            let mut line = text.as_bytes().to_vec();
            request.redact_in_place(&mut line);
            prop_assert_eq!(line, request.redact_bytes(text.as_bytes()).into_owned());
        }

        /// A key is found in any ASCII case: as configured, upper-cased, lower-cased, with
        /// the case of any of its letters swapped.
        #[test]
        fn no_key_survives(
            prefix in ".{0,40}",
            suffix in ".{0,40}",
            key in "[a-zA-Z0-9_-]{8,40}",
            swaps in proptest::collection::vec(any::<bool>(), 40),
        ) {
            // The only key the marker itself contains.
            prop_assume!(!key.eq_ignore_ascii_case("redacted"));
            let secret = Secret::new(key.clone());
            let r = Redactor::new([&secret]);
            let mixed: String = key
                .chars()
                .zip(&swaps)
                .map(|(c, &swap)| if swap { swap_case(c) } else { c })
                .collect();
            let (upper, lower) = (key.to_ascii_uppercase(), key.to_ascii_lowercase());
            let text = format!("{prefix}{key}{suffix}{upper} {lower}{prefix}{mixed}");
            let out = r.redact(&text, &[]).to_ascii_lowercase();
            prop_assert!(!out.contains(&lower), "{}", out);
        }

        /// A key escaped any way inside a JSON string among other escapes: what a JSON parser
        /// reads from the redacted text never holds it, and the text stays JSON.
        #[test]
        fn no_escaped_key_survives_in_json(
            prefix in "[a-z \"\\\\/\n\t]{0,30}",
            suffix in "[a-z \"\\\\/\n\t]{0,30}",
            key in "[a-zA-Z0-9/+=_-]{8,30}",
            hows in proptest::collection::vec(any::<u8>(), 30),
        ) {
            prop_assume!(!key.contains("redacted"));
            let escaped: String = key.chars().zip(&hows).map(|(c, how)| escape_char(c, *how)).collect();
            let quote = |s: &str| serde_json::to_string(s).expect("string");
            let (p, s) = (quote(&prefix), quote(&suffix));
            let json = format!("[{p}, {}{escaped}{}]", &p[..p.len() - 1], &s[1..]);
            let r = Redactor::new(&[Secret::new(key.clone())]);
            let out = r.redact(&json, &[]);
            let read: Vec<String> = serde_json::from_str(&out).expect("still JSON");
            // In any case (`escape_char` swaps some).
            let key = key.to_ascii_lowercase();
            let holds = |s: &String| s.to_ascii_lowercase().contains(&key);
            prop_assert!(!read.iter().any(holds), "{out}");
            // Escaped once more (the JSON quoted into a string): the same.
            let twice = r.redact(&quote(&json), &[]).into_owned();
            let inner: String = serde_json::from_str(&twice).expect("still a string");
            let read: Vec<String> = serde_json::from_str(&inner).expect("still JSON inside");
            prop_assert!(!read.iter().any(holds), "{twice}");
            // And once more again (that string in a text body a sink quotes): the same.
            let thrice = r.redact(&quote(&quote(&json)), &[]).into_owned();
            let middle: String = serde_json::from_str(&thrice).expect("still a string");
            let inner: String = serde_json::from_str(&middle).expect("a string inside");
            let read: Vec<String> = serde_json::from_str(&inner).expect("still JSON inside");
            prop_assert!(!read.iter().any(holds), "{thrice}");
        }
        /// A key that begins with hex digits, after any escape (`\u00e9`, `\u00E9`, a
        /// surrogate pair, `\u001f`), or completing one (`\u00` then `e9...`), or with its own
        /// first characters escaped in either case:
        /// the redacted text is still JSON, at all three levels, and holds the key nowhere.
        #[test]
        fn a_hex_led_key_after_any_escape_leaves_json(
            prefix in "[a-fA-F0-9\u{e9}\u{1}\u{1f}\u{1f600}\"\\\\]{0,8}",
            suffix in "[a-fA-F0-9\u{e9}\u{1}\"\\\\]{0,6}",
            key in "[a-fA-F0-9]{4,6}[a-zA-Z0-9/+=_-]{4,10}",
            hows in proptest::collection::vec(any::<u8>(), 30),
            completed in 0usize..=4,
        ) {
            prop_assume!(!key.contains("redacted"));
            let escape = |c: char, how: u8| -> String {
                let units = |upper: bool| c.encode_utf16(&mut [0; 2]).iter().map(|u| {
                    if upper { format!("\\u{u:04X}") } else { format!("\\u{u:04x}") }
                }).collect();
                match how % 4 {
                    2 => units(false),
                    3 => units(true),
                    _ => {
                        let quoted = serde_json::to_string(&c.to_string()).expect("string");
                        quoted[1..quoted.len() - 1].to_owned()
                    }
                }
            };
            let mut how = hows.iter().cycle();
            // The first `raw` characters are written as they are (each still takes its
            // turn of `hows`, so a recorded case keeps its meaning).
            let mut written = |text: &str, raw: usize| -> String {
                text.chars().enumerate().map(|(i, c)| {
                    let how = *how.next().unwrap_or(&0);
                    if i < raw { c.to_string() } else { escape(c, how) }
                }).collect()
            };
            // An escape just before the key, or one its first characters complete: those
            // characters are then the escape's last digits, so they cannot be escaped
            // themselves (`\u003\u0030` is not JSON, and this is about JSON).
            let glue = format!("\\u{}", &"00e9"[..4 - completed]);
            // Half a surrogate pair alone is not JSON to serde either.
            let unit = format!("{}{}", &"00e9"[..4 - completed], &key[..completed]);
            let unit = u16::from_str_radix(&unit, 16).expect("four hex digits");
            prop_assume!(!(0xd800..=0xdfff).contains(&unit));
            let json = format!(
                "[\"{}{glue}{}{}\"]",
                written(&prefix, 0),
                written(&key, completed),
                written(&suffix, 0)
            );
            serde_json::from_str::<Vec<String>>(&json).expect("the text redacted is JSON");
            let r = Redactor::new(&[Secret::new(key.clone())]);
            let out = r.redact(&json, &[]).into_owned();
            let read: Vec<String> = serde_json::from_str(&out).expect("still JSON");
            prop_assert!(read.iter().all(|s| !s.contains(&key)), "{json} -> {out}");
            let quoted = serde_json::to_string(&json).expect("string");
            let out = r.redact(&quoted, &[]).into_owned();
            let inner: String = serde_json::from_str(&out).expect("still a string");
            let read: Vec<String> = serde_json::from_str(&inner).expect("still JSON inside");
            prop_assert!(read.iter().all(|s| !s.contains(&key)), "{quoted} -> {out}");
            let quoted = serde_json::to_string(&quoted).expect("string");
            let out = r.redact(&quoted, &[]).into_owned();
            let middle: String = serde_json::from_str(&out).expect("still a string");
            let inner: String = serde_json::from_str(&middle).expect("a string inside");
            let read: Vec<String> = serde_json::from_str(&inner).expect("still JSON inside");
            prop_assert!(read.iter().all(|s| !s.contains(&key)), "{quoted} -> {out}");
        }
    }
}

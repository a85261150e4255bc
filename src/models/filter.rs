//! The `filter` of a server in config.yaml: which upstream model ids appear in /v1/models.
//!
//! Pure: text in, yes/no out. Never applied to `override` or `append` entries.

/// A compiled `filter`: white-space separated terms, every one must match, case-insensitive.
///
/// A term without `*` matches anywhere in the id (`free` matches `gemini-2.0-flash:free`); a
/// term with `*` is a glob over the whole id, `*` standing for any run of characters (`gpt*`
/// starts with gpt, `*free` ends with free, `*` matches everything). No other character is
/// special. An empty or blank filter matches everything: it is the same as no filter.
///
/// The Python version treated `gpt*` as "contains gpt" while its README promised "starts with
/// gpt"; this keeps the README's promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// Lower-cased text that must occur somewhere.
    Contains(String),
    /// The lower-cased term split at each `*`: at least two parts; the first is a prefix, the
    /// last a suffix, the others must occur in order between them.
    Glob(Vec<String>),
}

/// What to say of a server's `filter` that keeps none of its `listed` upstream models: most
/// likely a filter written for the Python version, which ran each term through `re.search`
/// (`^gpt`, `gpt|claude`, `deepseek.*free`), where here only `*` is special and such a term
/// matches nothing. A filter meant to hide everything is better written as `override: []`.
pub fn keeps_none_warning(filter: &str, listed: usize) -> String {
    let regex_like = filter.contains(['^', '$', '|', '(', ')', '[', ']', '\\', '+', '?', '{', '}'])
        || filter.contains(".*");
    let hint = if regex_like {
        "; its terms look like regular expressions, but filter terms are plain text and \
         globs (only `*` is special; see README \"filter\")"
    } else {
        ""
    };
    format!(
        "filter {} keeps none of its {listed} models{hint}",
        serde_json::Value::from(filter)
    )
}

impl Filter {
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .map(|term| {
                let term = term.to_lowercase();
                if term.contains('*') {
                    Term::Glob(term.split('*').map(str::to_owned).collect())
                } else {
                    Term::Contains(term)
                }
            })
            .collect();
        Self { terms }
    }

    /// True when the filter lets every id through.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, id: &str) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let id = id.to_lowercase();
        self.terms.iter().all(|term| match term {
            Term::Contains(text) => id.contains(text.as_str()),
            Term::Glob(parts) => glob_matches(parts, &id),
        })
    }
}

/// `parts` is a pattern split at `*` (two parts or more). Leftmost matching of each middle part
/// is enough: with `*` as the only wildcard, an earlier match never rules out a later one.
fn glob_matches(parts: &[String], text: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return true;
    };
    let Some((last, middle)) = rest.split_last() else {
        return text == first;
    };
    let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    for part in middle {
        match remaining.find(part.as_str()) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keeps(filter: &str, id: &str) -> bool {
        Filter::parse(filter).matches(id)
    }

    #[test]
    fn the_table_of_the_readme() {
        // (filter, id, kept)
        let cases = [
            ("gpt", "openai/gpt-4o", true),
            ("gpt", "claude-3", false),
            ("GPT", "openai/gpt-4o", true),
            ("gpt", "OpenAI/GPT-4o", true),
            ("gpt free", "gpt-oss:free", true),
            ("gpt free", "gpt-4o", false),
            ("free gpt", "some-free-gpt", true),
            ("gpt*", "gpt-4o", true),
            ("gpt*", "openai/gpt-4o", false),
            ("*free", "deepseek-r1:free", true),
            ("*free", "free-model-x", false),
            ("*gpt*", "openai/gpt-4o", true),
            ("g*4*o", "gpt-4o", true),
            ("g*4*o", "gpt-4o-mini", false),
            ("gpt* mini", "gpt-4o-mini", true),
            ("gpt* mini", "gpt-4o", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*", "anything", true),
            ("**", "", true),
            ("", "anything", true),
            ("   ", "anything", true),
            ("ÉTÉ", "modèle-été", true),
            ("gpt?", "gpt?", true),
            ("gpt?", "gpt4", false),
        ];
        for (filter, id, kept) in cases {
            assert_eq!(keeps(filter, id), kept, "filter {filter:?} on {id:?}");
        }
    }

    #[test]
    fn empty_and_star_filters_are_no_filter() {
        assert!(Filter::parse("").is_empty());
        assert!(Filter::parse(" \t\n").is_empty());
        assert!(!Filter::parse("*").is_empty());
        assert!(keeps("*", ""));
    }

    /// Reference glob: plain recursion over characters.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest! {
        #[test]
        fn globs_agree_with_the_reference(pattern in "[ab*]{0,8}", text in "[ab]{0,10}") {
            let expected = if pattern.contains('*') {
                reference(&pattern.chars().collect::<Vec<_>>(), &text.chars().collect::<Vec<_>>())
            } else {
                pattern.is_empty() || text.contains(pattern.as_str())
            };
            prop_assert_eq!(keeps(&pattern, &text), expected);
        }

        #[test]
        fn every_term_must_match(a in "[a-c]{1,3}", b in "[a-c]{1,3}", text in "[a-c]{0,8}") {
            let both = format!("{a} {b}");
            prop_assert_eq!(keeps(&both, &text), keeps(&a, &text) && keeps(&b, &text));
        }
    }
}

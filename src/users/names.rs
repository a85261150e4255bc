//! What a new username and an email address may look like.
//!
//! Pure. Only applied to names being created: an existing user from the Python version's
//! database keeps whatever name it has and can still be shown, modified and deleted.

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

/// A plausible address: one `@`, a non-empty local part of at most 64 characters, a domain
/// of dot-separated labels (letters, digits, `-`) with at least one dot; no spaces or
/// control characters. Deliverability is not checked.
pub fn check_email(email: &str) -> Result<(), String> {
    let count = email.chars().count();
    if count > MAX_EMAIL_CHARS {
        return Err(format!(
            "an email address has at most {MAX_EMAIL_CHARS} characters (this one has {count})"
        ));
    }
    if let Some(bad) = email.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("an email address cannot contain {bad:?}"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("an email address needs an '@'".into());
    };
    if local.is_empty() || local.chars().count() > 64 {
        return Err("the part before '@' must have 1 to 64 characters".into());
    }
    if domain.contains('@') {
        return Err("an email address has one '@'".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!(
            "{:?} is not a domain name (like example.com)",
            crate::error::clip(domain, 100)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(check_username(&"a".repeat(MAX_USERNAME_CHARS)), Ok(()));
    }

    #[test]
    fn emails() {
        for good in [
            "ann@example.com",
            "a.b+c@mail.example.co.uk",
            "李@例子.中国",
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
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        let huge = format!("{}@example.com", "a".repeat(300));
        assert!(check_email(&huge).is_err());
    }
}

//! What `llmsrouter user ...` says about the user it was given: every message quotes a name
//! exactly as `user list` prints it (so it can be copied into the next command), escapes
//! what a terminal would hide or reorder, never echoes a key given where a name goes, and
//! reports an empty key as empty instead of looking it up.

use std::path::Path;

use rusqlite::Connection;

use crate::support::{run_cli, run_cli_reading};
use crate::users::{add, user};
use crate::users_odd_names::{ANN_KEY, assert_no_key, odd_users_db, stored};

/// The name between the first pair of double quotes of `message`.
fn first_quoted(message: &str) -> &str {
    message.split('"').nth(1).unwrap_or_default()
}

/// Adds a row as the Python version's table may hold it: `name` is an SQL expression.
fn insert_raw(db: &Path, name: &str, key: &str) {
    Connection::open(db)
        .expect("open")
        .execute(
            &format!(
                "INSERT INTO users (username, api_key, email, permissions, created_at, updated_at)
                 VALUES ({name}, ?1, NULL, '{{\"*\": true}}', '2024-05-01T12:34:56.789012', '2024-05-01T12:34:56.789012')"
            ),
            [key],
        )
        .expect("row");
}

#[test]
fn messages_quote_a_name_as_list_prints_it_so_it_can_be_copied_back() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);

    // rowid 5 is the text `bob` 0xff, which `user list` prints as `bob\xff`.
    let (code, _, err) = user(dir.path(), &["show", "bob\\xff", "--rowid", "9"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no user \"bob\\xff\" has rowid 9 (the only user \"bob\\xff\" has rowid 5)\n"
    );
    let (code, _, err) = user(dir.path(), &["show", first_quoted(&err)]);
    assert_eq!(code, 0, "the name copied from the message: {err}");

    let (code, _, err) = user(dir.path(), &["delete", "bob\\xfe"]);
    assert_eq!(code, 1);
    assert_eq!(err, "error: user \"bob\\xfe\" does not exist\n");

    // A text name that prints as the non-UTF-8 `eve` ESC 0xff of rowid 7: the refusal
    // names both in the table's form, which picks them again with --rowid.
    insert_raw(
        &db,
        "'eve' || char(27) || '\\xff'",
        "eVeTextKeyGGGGGGGGGGGGGGGGGGGGGG",
    );
    let (code, _, err) = user(dir.path(), &["show", "eve\\u{1b}\\xff"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: \"eve\\u{1b}\\xff\" names 2 users (rowid 7: \"eve\\u{1b}\\xff\""),
        "{err}"
    );
    let named = first_quoted(&err);
    let (code, _, err) = user(dir.path(), &["show", named, "--rowid", "8"]);
    assert_eq!(code, 0, "{named}: {err}");
    let (code, _, err) = user(dir.path(), &["show", named, "--rowid", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.ends_with("has rowid 1 (the error without --rowid lists them)\n"),
        "{err}"
    );

    // A name `user add` refuses, and an import row holding one, are quoted the same way.
    let (code, _, err) = user(dir.path(), &["add", "bob\\xff"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: bad username \"bob\\xff\": "),
        "{err}"
    );
    let file = dir.path().join("from-list.json");
    std::fs::write(&file, r#"[{"username": "bob\\xff"}]"#).expect("file");
    let (code, _, err) = user(dir.path(), &["import", "from-list.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("row 1: bad username \"bob\\xff\": "), "{err}");
}

#[test]
fn a_wrong_rowid_for_a_name_one_user_has_says_which_rowid_it_has() {
    let dir = tempfile::tempdir().expect("dir");
    add(dir.path(), &["ann"]);
    let (code, _, err) = user(dir.path(), &["show", "ann", "--rowid", "5"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no user \"ann\" has rowid 5 (the only user \"ann\" has rowid 1)\n"
    );
    let (code, _, err) = user(dir.path(), &["show", "ann", "--rowid", "1"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_empty_key_is_reported_as_empty_never_looked_up() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let before = stored(&db);

    let empty_variable = "error: LLMSROUTER_USER_KEY is set but empty: unset it, or give it a value (it stands for --key)\n";
    for (value, args) in [
        ("", vec!["user", "show"]),
        ("  ", vec!["user", "delete"]),
        ("", vec!["user", "show", "ann"]),
    ] {
        let (code, out, err) = run_cli(dir.path(), &args, &[("LLMSROUTER_USER_KEY", value)]);
        assert_eq!(
            (code, err.as_str()),
            (2, empty_variable),
            "{value:?} {args:?}"
        );
        assert!(out.is_empty(), "{out}");
    }
    let (code, _, err) = user(dir.path(), &["modify", "--key", "", "--permissions", "*"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--key") && err.contains("a key cannot be empty"),
        "{err}"
    );

    for input in ["", "\n", "  \r\n", "\nsecond line\n"] {
        let file = dir.path().join("stdin.txt");
        std::fs::write(&file, input).expect("stdin");
        let stdin = std::fs::File::open(&file).expect("open");
        let (code, out, err) =
            run_cli_reading(dir.path(), &["user", "delete", "--key", "-"], stdin);
        assert_eq!(code, 1, "{input:?}: {err}");
        assert_eq!(
            err, "error: --key -: no key was read from stdin (it is empty, or its first line is)\n",
            "{input:?}"
        );
        assert!(out.is_empty());
    }
    assert_eq!(stored(&db), before, "nothing changed");
}

#[test]
fn a_key_given_as_a_name_is_never_echoed() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let new_key = add(dir.path(), &["carl"]);
    let before = stored(&db);
    let mut outputs = Vec::new();

    // Some user's key, the Python version's or this router's, where the name goes.
    let key_as_name =
        "error: that is a user's key, not a name: use --key (`--key -` reads it from stdin)\n";
    for key in [ANN_KEY, new_key.as_str()] {
        for args in [
            vec!["show", key],
            vec!["delete", key],
            vec!["rotate-key", key],
            vec!["modify", key, "--permissions", "*"],
            vec!["show", key, "--rowid", "1"],
        ] {
            let (code, out, err) = user(dir.path(), &args);
            assert_eq!((code, err.as_str()), (1, key_as_name), "{args:?}");
            outputs.extend([out, err]);
        }
    }

    // Text shaped like one of this router's keys that is no user's key (a deleted one, a
    // typo): masked as `user list` masks keys.
    let stale = "sk-lr-AbCdEfGhIjKlMnOpQrStUvWxYz012345";
    let (code, out, err) = user(dir.path(), &["delete", stale]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no user is named \"sk-lr-AbCd…\" (that looks like a key: to find a user by its key, use --key)\n"
    );
    outputs.extend([out, err]);
    let with_space = format!("{new_key} ");
    let (code, out, err) = user(dir.path(), &["add", &with_space]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: bad username \"sk-lr-"), "{err}");
    outputs.extend([out, err]);

    // White space around a key (as a copy and paste gives) is not part of it, before it
    // too: some user's key is still said to be one, any other masked, never echoed whole.
    for key in [ANN_KEY, new_key.as_str()] {
        for pasted in [
            format!(" {key}"),
            format!("{key} "),
            format!("\u{3000}{key}\t"),
            // Quotes, and a `,` or `;` after it, as a key copied out of code or a list has.
            format!("\"{key}\""),
            format!("'{key}'"),
            format!("`{key}`"),
            format!("\u{201c}{key}\u{201d}"),
            format!("\u{2018}{key}\u{2019}"),
            format!("{key},"),
            format!("{key};"),
            format!(" \"{key}\", "),
        ] {
            for args in [
                vec!["show", &pasted],
                vec!["delete", &pasted],
                vec!["rotate-key", &pasted],
                vec!["modify", &pasted, "--permissions", "*"],
            ] {
                let (code, out, err) = user(dir.path(), &args);
                assert_eq!((code, err.as_str()), (1, key_as_name), "{args:?}");
                outputs.extend([out, err]);
            }
            let (code, out, err) = user(dir.path(), &["add", &pasted]);
            assert_eq!(code, 1, "{pasted:?}");
            let masked = format!("error: bad username \"{}…\": ", &key[..10]);
            assert!(err.starts_with(&masked), "{pasted:?}: {err}");
            outputs.extend([out, err]);
        }
    }
    for pasted in [
        format!(" {stale}"),
        format!("\"{stale}\","),
        format!("'{stale}';"),
    ] {
        let (code, out, err) = user(dir.path(), &["show", &pasted]);
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "error: no user is named \"sk-lr-AbCd…\" (that looks like a key: to find a user by its key, use --key)\n",
            "{pasted:?}"
        );
        outputs.extend([out, err]);
    }
    // `import` rows name users too: a quoted key there is masked as well.
    std::fs::write(
        dir.path().join("team.json"),
        format!(r#"[{{"username": "dan"}}, {{"username": "\"{new_key}\""}}]"#),
    )
    .expect("json");
    let (code, out, err) = user(dir.path(), &["import", "team.json"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("row 2: bad username \"sk-lr-"), "{err}");
    outputs.extend([out, err]);

    assert_eq!(stored(&db), before, "nothing changed");
    for output in &outputs {
        assert!(!output.contains(&new_key), "a key was printed: {output}");
        assert!(!output.contains(stale), "a key was printed: {output}");
    }
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_no_key(&outputs);
}

/// Some user's key (the Python version's form: 32 letters and digits, which a name may
/// be) given as the name of a new user is refused by `add` and `import`, as where a name
/// picks a user, and never echoed: taken, `user list` and every request record of the new
/// user would print that key whole. The refusal comes before "already exists", which would
/// echo it.
#[test]
fn a_users_key_is_no_new_users_name() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    let before = stored(&db);
    let mut outputs = Vec::new();

    let refused =
        "error: that is a user's key, not a name: no user may be named with another user's key\n";
    let (code, out, err) = user(dir.path(), &["add", ANN_KEY]);
    assert_eq!((code, out.as_str(), err.as_str()), (1, "", refused));
    outputs.extend([out, err]);

    std::fs::write(
        dir.path().join("team.csv"),
        format!("username,email\ncarl,\n{ANN_KEY},\n"),
    )
    .expect("csv");
    std::fs::write(
        dir.path().join("team.json"),
        format!(r#"[{{"username": "carl"}}, {{"username": "dan"}}, {{"username": "{ANN_KEY}"}}]"#),
    )
    .expect("json");
    for (file, row) in [("team.csv", 3), ("team.json", 3)] {
        let (code, out, err) = user(dir.path(), &["import", file]);
        assert_eq!(code, 1, "{file}: {err}");
        assert_eq!(
            err,
            format!(
                "error: {file}: row {row}: that is a user's key, not a name: no user may be named with another user's key; nothing imported\n"
            )
        );
        assert!(out.is_empty(), "no key printed: {out}");
        outputs.extend([out, err]);
    }
    assert_eq!(stored(&db), before, "nothing changed");

    // A name that is both a user's name (a Python-era row) and another user's key.
    insert_raw(
        &db,
        &format!("'{ANN_KEY}'"),
        "dAvEKeyKKKKKKKKKKKKKKKKKKKKKKKKK",
    );
    let before = stored(&db);
    let (code, out, err) = user(dir.path(), &["add", ANN_KEY]);
    assert_eq!((code, err.as_str()), (1, refused));
    outputs.extend([out, err]);
    assert_eq!(stored(&db), before, "nothing changed");

    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_no_key(&outputs);
    // Any other name still goes in.
    add(dir.path(), &["carl"]);
}

#[test]
fn invisible_formatting_characters_are_escaped_and_accepted_escaped() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("users.db");
    odd_users_db(&db);
    // `evil` RIGHT-TO-LEFT OVERRIDE `gnp.exe` shows on a terminal as `evilexe.png`.
    insert_raw(
        &db,
        "'evil' || char(8238) || 'gnp.exe'",
        "eViLKeyHHHHHHHHHHHHHHHHHHHHHHHHH",
    );
    insert_raw(
        &db,
        "'zero' || char(8203) || 'width'",
        "zErOKeyIIIIIIIIIIIIIIIIIIIIIIIII",
    );
    insert_raw(
        &db,
        "char(65279) || 'bom'",
        "bOmKeyJJJJJJJJJJJJJJJJJJJJJJJJJJ",
    );

    let (code, table, err) = user(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    for shown in ["evil\\u{202e}gnp.exe", "zero\\u{200b}width", "\\u{feff}bom"] {
        assert!(
            table.lines().any(|l| l.starts_with(shown)),
            "{shown}: {table}"
        );
    }
    let hidden = ['\u{202e}', '\u{200b}', '\u{feff}'];
    assert!(!table.contains(hidden), "{table}");

    // The escaped form names the user; messages print it escaped too.
    let (code, out, err) = user(dir.path(), &["show", "evil\\u{202e}gnp.exe", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        shown["username"], "evil\u{202e}gnp.exe",
        "JSON keeps the name"
    );
    let (code, _, err) = user(
        dir.path(),
        &["show", "evil\\u{202e}gnp.exe", "--rowid", "1"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no user \"evil\\u{202e}gnp.exe\" has rowid 1 (the only user \"evil\\u{202e}gnp.exe\" has rowid 8)\n"
    );
    let (code, out, err) = user(dir.path(), &["delete", "zero\\u{200b}width"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deleted user \"zero\\u{200b}width\"\n");
    let (code, _, err) = user(dir.path(), &["rotate-key", "\\u{feff}bom"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("\"\\u{feff}bom\""), "{err}");
    for output in [&table, &err] {
        assert!(!output.contains(hidden), "{output}");
    }
    // The raw name (as a script holding the JSON may give it) still names the user.
    let (code, _, err) = user(dir.path(), &["show", "evil\u{202e}gnp.exe"]);
    assert_eq!(code, 0, "{err}");
}

/// `--permissions` and `--email` from their variables: blank is "set but empty" and a bad
/// value is said under the variable's name, both exit status 2 with nothing written, as for
/// every other variable; before, a blank email was quietly taken as none and the others
/// blamed flags never typed. The flags on the line keep their own messages, and win.
#[test]
fn user_variables_that_are_blank_or_bad_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    add(dir.path(), &["ann"]);
    let db = dir.path().join("users.db");
    let before = stored(&db);
    let cases: [(&[&str], (&str, &str), &str); 6] = [
        (
            &["user", "add", "bob"],
            ("LLMSROUTER_USER_PERMISSIONS", ""),
            "error: LLMSROUTER_USER_PERMISSIONS is set but empty: unset it, or give it a value (it stands for --permissions)\n",
        ),
        (
            &["user", "modify", "ann"],
            ("LLMSROUTER_USER_PERMISSIONS", " "),
            "error: LLMSROUTER_USER_PERMISSIONS is set but empty: unset it, or give it a value (it stands for --permissions)\n",
        ),
        (
            &["user", "add", "bob"],
            ("LLMSROUTER_USER_PERMISSIONS", "*,p1"),
            "error: LLMSROUTER_USER_PERMISSIONS: \"*\" (every provider) cannot be combined with aliases\n",
        ),
        (
            &["user", "modify", "ann"],
            ("LLMSROUTER_USER_PERMISSIONS", "a,,b"),
            "error: LLMSROUTER_USER_PERMISSIONS: permissions \"a,,b\" have an empty entry: give provider aliases (\"a,b\") or \"*\"\n",
        ),
        (
            &["user", "add", "bob"],
            ("LLMSROUTER_USER_EMAIL", ""),
            "error: LLMSROUTER_USER_EMAIL is set but empty: unset it, or give it a value (it stands for --email)\n",
        ),
        (
            &["user", "add", "bob"],
            ("LLMSROUTER_USER_EMAIL", "bad"),
            "error: LLMSROUTER_USER_EMAIL: not an email address: an email address needs an '@'\n",
        ),
    ];
    for (args, variable, said) in cases {
        let (code, out, err) = run_cli(dir.path(), args, &[variable]);
        assert_eq!((code, err.as_str()), (2, said), "{args:?} {variable:?}");
        assert!(out.is_empty(), "{out}");
    }
    assert_eq!(stored(&db), before, "nothing written");

    // On the line: the flag's own message (exit 1), and the flag wins over its variable.
    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "add", "bob", "--email", "bad"],
        &[("LLMSROUTER_USER_EMAIL", "")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: bad email"), "{err}");
    let (code, out, err) = run_cli(
        dir.path(),
        &["user", "add", "bob", "--email", "", "--permissions", "*"],
        &[
            ("LLMSROUTER_USER_EMAIL", ""),
            ("LLMSROUTER_USER_PERMISSIONS", "*,p1"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sk-lr-"), "{out}");
    let (code, _, err) = run_cli(
        dir.path(),
        &["user", "add", "carl"],
        &[
            ("LLMSROUTER_USER_EMAIL", "carl@example.com"),
            ("LLMSROUTER_USER_PERMISSIONS", "a,b"),
        ],
    );
    assert_eq!(code, 0, "good values from variables: {err}");
}

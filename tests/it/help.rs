//! `--help` of the real binary: the top level, every command and every nested command
//! (`user add`, ...) exits 0, names itself and shows examples. The commands are found by
//! walking the clap definition, so a command added later without a help text and an
//! `Examples:` block fails here.

use clap::CommandFactory;

use llmsrouter::cli::Cli;

use crate::support::run_cli;

/// Every command path below the top level (`["user", "add"]`, ...), depth first, without
/// clap's generated `help` command.
fn command_paths(command: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_owned());
        out.push(path.clone());
        command_paths(sub, &path, out);
    }
}

fn all_paths() -> Vec<Vec<String>> {
    let mut paths = vec![Vec::new()];
    command_paths(&Cli::command(), &[], &mut paths);
    paths
}

#[test]
fn the_walk_finds_every_documented_command() {
    let found: Vec<String> = all_paths().iter().map(|p| p.join(" ")).collect();
    for expected in [
        "",
        "serve",
        "check",
        "models",
        "healthcheck",
        "usage",
        "user",
        "user add",
        "user delete",
        "user import",
        "user list",
        "user modify",
        "user show",
        "user rotate-key",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "command {expected:?} not found in {found:?}"
        );
    }
}

#[test]
fn every_command_has_long_help_with_examples() {
    let dir = tempfile::tempdir().expect("dir");
    for path in all_paths() {
        let name = if path.is_empty() {
            "llmsrouter".to_owned()
        } else {
            format!("llmsrouter {}", path.join(" "))
        };
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, stdout, stderr) = run_cli(dir.path(), &args, &[]);
        assert_eq!(code, 0, "{name} --help: exit {code}: {stderr}");
        assert!(
            stdout.contains(&format!("Usage: {name} ")),
            "{name} --help does not name the command:\n{stdout}"
        );
        assert!(
            stdout.contains("\nExamples:\n  llmsrouter "),
            "{name} --help has no `Examples:` block of llmsrouter command lines:\n{stdout}"
        );
        for line in stdout.lines().skip_while(|l| *l != "Examples:").skip(1) {
            if line.is_empty() {
                break;
            }
            assert!(
                line.starts_with("  ") && line.contains("llmsrouter"),
                "{name} --help: an example line that is not a command: {line:?}"
            );
        }
    }
}

#[test]
fn every_command_and_argument_has_a_one_line_about() {
    fn check(command: &clap::Command, name: &str) {
        let about = command.get_about().map(ToString::to_string);
        assert!(
            about
                .as_deref()
                .is_some_and(|a| !a.is_empty() && !a.contains('\n')),
            "{name}: no one-line about ({about:?})"
        );
        for arg in command.get_arguments() {
            if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            assert!(
                arg.get_help().is_some(),
                "{name}: argument {} has no help text",
                arg.get_id()
            );
        }
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" {
                check(sub, &format!("{name} {}", sub.get_name()));
            }
        }
    }
    let mut cli = Cli::command();
    cli.build();
    check(&cli, "llmsrouter");
}

#[test]
fn short_help_is_the_summary() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, stdout, stderr) = run_cli(dir.path(), &["user", "add", "-h"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("Create a user and print its new key"),
        "{stdout}"
    );
    assert!(!stdout.contains("Examples:"), "-h stays short: {stdout}");
}

/// The user commands' help says what README's "Changes while the server runs" says and the
/// server does: the very next request sees a change. It used to promise "within about
/// 200 ms" or "within a second", a delay that does not exist.
#[test]
fn user_help_promises_the_next_request_not_a_delay() {
    let dir = tempfile::tempdir().expect("dir");
    for args in [
        &["user", "--help"][..],
        &["user", "-h"],
        &["user", "delete", "--help"],
        &["user", "modify", "--help"],
        &["user", "rotate-key", "--help"],
    ] {
        let (code, stdout, stderr) = run_cli(dir.path(), args, &[]);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let text = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            !text.contains("within") && text.contains("very next request"),
            "{args:?}: {text}"
        );
    }
}

/// `--host` takes IP addresses and `localhost`, and its help says so.
#[test]
fn host_help_names_what_it_takes() {
    let dir = tempfile::tempdir().expect("dir");
    for command in ["serve", "healthcheck"] {
        let (code, stdout, stderr) = run_cli(dir.path(), &[command, "--help"], &[]);
        assert_eq!(code, 0, "{stderr}");
        let host = stdout
            .split("--host <ADDR>")
            .nth(1)
            .and_then(|rest| rest.split("[env:").next())
            .unwrap_or_default();
        let host = host.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            host.contains("IP address") && host.contains("localhost"),
            "{command}: {host}"
        );
    }
}

/// A mistyped flag, value or command keeps clap's suggestion in the one-line error, and
/// nothing runs.
#[test]
fn a_typo_gets_the_similar_name_clap_found() {
    let dir = tempfile::tempdir().expect("dir");
    for (args, line) in [
        (
            &["usage", "--jsn"][..],
            "error: unexpected argument '--jsn' found (a similar argument exists: '--json'; see --help)\n",
        ),
        (
            &["usge"],
            "error: unrecognized subcommand 'usge' (some similar subcommands exist: 'user', 'usage'; see --help)\n",
        ),
        (
            &["usr", "list"],
            "error: unrecognized subcommand 'usr' (a similar subcommand exists: 'user'; see --help)\n",
        ),
        (
            &["usage", "--by", "provder"],
            "error: invalid value 'provder' for '--by <BY>' [possible values: provider, user, model, day] (a similar value exists: 'provider'; see --help)\n",
        ),
    ] {
        let (code, stdout, stderr) = run_cli(dir.path(), args, &[]);
        assert_eq!(
            (code, stdout.as_str(), stderr.as_str()),
            (2, "", line),
            "{args:?}"
        );
    }
    // clap's other tip names only the first letter of `-bob`: left out.
    let (code, _, stderr) = run_cli(dir.path(), &["user", "add", "-bob"], &[]);
    assert_eq!(
        (code, stderr.as_str()),
        (2, "error: unexpected argument '-b' found (see --help)\n")
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no file made"
    );
}

/// A router key pasted where a command, a value or a mistyped flag's value goes is never
/// quoted by the error line: clap quotes what it did not take.
#[test]
fn a_key_in_a_command_line_mistake_is_not_quoted() {
    let dir = tempfile::tempdir().expect("dir");
    let key = "sk-lr-0123456789abcdefghijABCDEFGHIJkl";
    let kye = format!("--kye={key}");
    for (args, envs) in [
        (vec![key], vec![]),
        (vec!["usage", "--by", key], vec![]),
        (vec!["user", "show", kye.as_str()], vec![]),
        (vec!["user", "delete", "--ky", key], vec![]),
        (vec!["serve"], vec![("LLMSROUTER_PORT", key)]),
    ] {
        let (code, stdout, stderr) = run_cli(dir.path(), &args, &envs);
        assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains(key), "{args:?}: {stderr}");
        assert!(!stderr.contains("after --"), "a flag, not a name: {stderr}");
    }
    // Nor the commands' own messages: a key in a variable, a path or a name.
    let (code, _, stderr) = run_cli(dir.path(), &["user", "add", "ann"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let db = format!("{key}.db");
    let bearer = format!("Bearer {key}");
    // Before a long name's clip: cut, the key would no longer be found.
    let long = format!("{}{key}", "a".repeat(43));
    for (args, envs) in [
        (vec!["check"], vec![("ENABLE_ACCOUNT_MANAGEMENT", key)]),
        (vec!["usage", "--db", db.as_str()], vec![]),
        (vec!["--config", key, "check"], vec![]),
        (vec!["user", "show", bearer.as_str()], vec![]),
        (vec!["user", "show", long.as_str()], vec![]),
    ] {
        let (code, _, stderr) = run_cli(dir.path(), &args, &envs);
        assert_ne!(code, 0, "{args:?}: {stderr}");
        assert!(
            !stderr.is_empty() && !stderr.contains(key),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains(&key[..20]),
            "part of the key: {args:?}: {stderr}"
        );
    }
}

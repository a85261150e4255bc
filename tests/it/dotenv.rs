//! `.env` is read as python-dotenv reads it: the router's parser gives what python-dotenv
//! 1.2.4 (the package `.ci/run` installs in its venv) gives, on a set of files written to be
//! awkward and on generated ones. The Python version pinned 1.0.1, which reads three rare
//! lines differently (see `dotenv::tests::reads_as_python_dotenv_1_2_where_1_0_1_differs`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::support::test_python;

/// python-dotenv's `dotenv_values` of each text (keys with a value, in order), as JSON. Read
/// as `load_dotenv()` reads a file, in text mode (`newline=None`: universal newlines turn
/// `\r\n` and a lone `\r` into `\n`); a plain `StringIO` kept the `\r\n` in a quoted value
/// over several lines, which the Python version never saw.
const SCRIPT: &str = r#"
import io, json, logging, sys
from dotenv import dotenv_values
logging.disable(logging.CRITICAL)
out = []
for text in json.load(sys.stdin):
    values = dotenv_values(stream=io.StringIO(text, newline=None))
    out.append([[k, v] for k, v in values.items() if v is not None])
print(json.dumps(out))
"#;

const AWKWARD: &[&str] = &[
    "APP_TITLE=My Team Router\nENABLE_ACCOUNT_MANAGEMENT=\"true\"\n",
    "\u{feff}A=1",
    "export A=1\nexport  B = 2 \nexport=3\nexportC=4\n",
    "A = spaced\t# comment\nB=a#b\nC=a #b\nD=  # c\nE=#x\nF=\n",
    "A='single # not a comment'\nB=\"double # not either\"\nC='x' # c\nD=\"y\"#c\n",
    "A=\"esc \\n \\t \\\" \\' \\\\ \\x \\u0041\"\nB='esc \\n \\' \\\\'\n",
    "A=\"multi\nline\"\nB='also\r\nmulti'\nC=after\n",
    "A=\"open\nB=2\nC=3\n",
    "A='open\nB=2\n",
    "A=\"x\" trailing\nB=ok\n",
    "NOTES some words\nBARE\nK=v\n",
    "'QUOTED KEY'=1\n''=2\n'open=3\nK=4\n",
    "A=1\r\nB=2\rC=3\n",
    "MULTI=\"a\r\nb\"\r\nSQ='c\r\nd'\r\nLONE=\"e\rf\"\rESC=\"g\\r\\nh\"\r\nNEXT=ok\r\n",
    "A=base\nB=${A}/x\nC=${MISSING:-fallback}\nD=${MISSING}\nE=$A ${A\nF=${A:x} ${:-d} ${}\n",
    "A=first\nA=second\nB=${A}\n",
    "A='it\\'s'\nB='a\\\\'\nC='a\\' b'\nD=\"q\\\"\"\nE=\"a\\\\\"\n",
    "=novalue\n#=comment\n # indented comment\n\n\n  K = v  \n",
    "K=v # c # d\nL=v\t#tab comment\nM=v#x #y\n",
    "K=é 火山 🚀\nL='é'\n",
    "V= #hash\nP='C:\\dir\\'\nQ=\"C:\\dir\\\"\nNEXT=ok\n",
];

/// Pieces that generated files are made of.
const PIECES: &[&str] = &[
    "A",
    "B_2",
    "export ",
    " ",
    "\t",
    "=",
    "'",
    "\"",
    "\\",
    "#",
    "\n",
    "\n",
    "\r\n",
    "\r",
    "${A}",
    "${B_2:-d}",
    "$",
    "{",
    "}",
    "x y",
    "é",
    ":",
    "-",
    "A=",
    "B_2=",
    "\\n",
    "\\'",
];

fn generated(count: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(20261202);
    (0..count)
        .map(|_| {
            (0..rng.usize(1..16))
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect()
        })
        .collect()
}

fn python_dotenv(python: &std::path::Path, texts: &[String]) -> Vec<Vec<(String, String)>> {
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        // Nothing from this environment may take part in `${...}`.
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let input = serde_json::to_vec(texts).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write");
    let output = child.wait_with_output().expect("python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json from python")
}

#[test]
fn the_router_reads_every_dot_env_as_python_dotenv_does() {
    let Some(python) = test_python() else {
        return;
    };
    let mut texts: Vec<String> = AWKWARD.iter().map(|t| (*t).to_owned()).collect();
    texts.extend(generated(400));
    let expected = python_dotenv(&python, &texts);
    assert_eq!(expected.len(), texts.len());
    let mut differ = Vec::new();
    for (text, want) in texts.iter().zip(expected) {
        let (bindings, _) = llmsrouter::dotenv::parse(text);
        let got = llmsrouter::dotenv::resolve(bindings, &|_| None).expect("within the limit");
        if got != want {
            differ.push(format!("{text:?}\n  python: {want:?}\n  router: {got:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        texts.len(),
        differ.join("\n")
    );
}

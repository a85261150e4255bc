//! The order of the servers under `servers:` as PyYAML gives it when `<<` merge keys bring
//! some in, so "the first server in config order" (routing rule 4, the `/v1/models` order) is
//! the Python version's.
//!
//! PyYAML (6.0.3 and before, as [`super::merge_order`] follows it) puts a mapping's merged
//! entries first, then those written in it: the `<<` keys in the order written, a
//! `<<: [*a, *b]` list last listed first, each merged mapping as it is itself flattened, and
//! a key that comes again keeps its first place (the value of its last, which the YAML library
//! gives the same). The YAML library puts the written ones first. This only reads the text for
//! that order; what each server holds is the YAML library's to read, and it never refuses
//! anything.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use indexmap::IndexMap;
use serde_saphyr::granit_parser::{Event, Parser, StrInput};

/// The names under the top-level `servers:` in PyYAML's order; `None` when there is no such
/// mapping or the text cannot be read so (the YAML library's order then stands). Called only
/// on a text the YAML library read: its limits on merges and aliases hold here too.
pub(super) fn servers_in_pyyaml_order(text: &str) -> Option<Vec<String>> {
    let tree = Tree::read(text)?;
    let mut flat = Flattener {
        tree: &tree,
        done: HashMap::new(),
        started: HashSet::new(),
    };
    let top = flat.flatten(tree.root?)?;
    let servers = *top.get("servers")?;
    Some(flat.flatten(servers)?.keys().cloned().collect())
}

/// A node of the first document. An alias is the node it names, as PyYAML composes it.
enum Node {
    /// Its text, and whether it is a merge key (`<<`, plain or tagged `!!merge`).
    Scalar(String, bool),
    Sequence(Vec<usize>),
    Mapping(Vec<(usize, usize)>),
}

struct Tree {
    nodes: Vec<Node>,
    root: Option<usize>,
}

impl Tree {
    fn read(text: &str) -> Option<Self> {
        let mut reader = Reader {
            events: Parser::new_from_str(text),
            nodes: Vec::new(),
            anchors: HashMap::new(),
        };
        let root = loop {
            let (event, _) = reader.events.next()?.ok()?;
            match event {
                Event::StreamEnd | Event::DocumentEnd => break None,
                event if is_node_start(&event) => break Some(reader.node(event)?),
                _ => {}
            }
        };
        Some(Self {
            nodes: reader.nodes,
            root,
        })
    }
}

struct Reader<'a> {
    events: Parser<'a, StrInput<'a>>,
    nodes: Vec<Node>,
    /// Each anchor's node, by the parser's anchor id (a name defined again gets a new id).
    anchors: HashMap<usize, usize>,
}

impl<'a> Reader<'a> {
    /// The next node of the collection being read, `None` at its end (or an error).
    fn child(&mut self) -> Option<Option<usize>> {
        loop {
            let (event, _) = self.events.next()?.ok()?;
            if is_node_start(&event) {
                return Some(Some(self.node(event)?));
            }
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                return Some(None);
            }
        }
    }

    /// Reads the node that `event` starts, to its end.
    fn node(&mut self, event: Event<'a>) -> Option<usize> {
        let (anchor, mapping) = match event {
            Event::Alias(id) => return self.anchors.get(&id).copied(),
            Event::Scalar(..) => {
                let merge = super::merge_order::is_merge_key(&event);
                let text = super::merge_order::scalar_text(&event)?;
                let Event::Scalar(_, _, anchor, _) = event else {
                    return None;
                };
                self.nodes.push(Node::Scalar(text, merge));
                let at = self.nodes.len() - 1;
                self.anchors.insert(anchor, at);
                return Some(at);
            }
            Event::SequenceStart(_, anchor, _) => (anchor, false),
            Event::MappingStart(_, anchor, _) => (anchor, true),
            _ => return None,
        };
        // Placed before its children, so an alias inside it of its own anchor finds it (and
        // the flattening refuses the loop).
        self.nodes.push(Node::Sequence(Vec::new()));
        let at = self.nodes.len() - 1;
        self.anchors.insert(anchor, at);
        let mut children = Vec::new();
        while let Some(child) = self.child()? {
            children.push(child);
        }
        self.nodes[at] = if mapping {
            let mut pairs = Vec::with_capacity(children.len() / 2);
            let mut children = children.into_iter();
            while let (Some(key), Some(value)) = (children.next(), children.next()) {
                pairs.push((key, value));
            }
            Node::Mapping(pairs)
        } else {
            Node::Sequence(children)
        };
        Some(at)
    }
}

fn is_node_start(event: &Event<'_>) -> bool {
    matches!(
        event,
        Event::Scalar(..) | Event::Alias(_) | Event::SequenceStart(..) | Event::MappingStart(..)
    )
}

/// A mapping's keys in PyYAML's order, each with its value's node.
type Flat = Rc<IndexMap<String, usize>>;

struct Flattener<'t> {
    tree: &'t Tree,
    /// Each mapping flattened once, as PyYAML flattens a node in place once.
    done: HashMap<usize, Flat>,
    started: HashSet<usize>,
}

impl Flattener<'_> {
    /// The keys of the mapping at `at` as PyYAML's `flatten_mapping` then `construct_mapping`
    /// leave them; `None` for a node that is no mapping, a key that is no scalar, or a mapping
    /// merged into itself.
    fn flatten(&mut self, at: usize) -> Option<Flat> {
        if let Some(done) = self.done.get(&at) {
            return Some(done.clone());
        }
        let tree = self.tree;
        let Node::Mapping(pairs) = tree.nodes.get(at)? else {
            return None;
        };
        if !self.started.insert(at) {
            return None;
        }
        let mut keys = IndexMap::new();
        let mut written = Vec::new();
        for &(key, value) in pairs {
            match tree.nodes.get(key)? {
                Node::Scalar(_, true) => match tree.nodes.get(value)? {
                    Node::Mapping(_) => absorb(&mut keys, &self.flatten(value)?),
                    Node::Sequence(items) => {
                        for &item in items.iter().rev() {
                            absorb(&mut keys, &self.flatten(item)?);
                        }
                    }
                    // `<<: ~` merges nothing to the YAML library (PyYAML refuses it).
                    Node::Scalar(..) => {}
                },
                Node::Scalar(name, false) => written.push((name.clone(), value)),
                _ => return None,
            }
        }
        // An entry that comes again keeps its first place and takes the later value.
        for (name, value) in written {
            keys.insert(name, value);
        }
        let keys = Rc::new(keys);
        self.done.insert(at, keys.clone());
        Some(keys)
    }
}

fn absorb(keys: &mut IndexMap<String, usize>, merged: &Flat) {
    for (name, &value) in merged.iter() {
        keys.insert(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each expected order is what PyYAML 6.0.2 and 6.0.3's `yaml.safe_load` give the same
    /// text (`list(yaml.safe_load(text)["servers"])`).
    #[test]
    fn merged_servers_take_the_places_pyyaml_gives_them() {
        let anchors = "x:\n  a: &a {p: 1, q: 1}\n  b: &b {q: 2, r: 2}\n  c: &c {s: 3, p: 3}\n";
        let cases: [(&str, &[&str]); 13] = [
            (
                "servers:\n  w: 0\n  <<: *a\n  v: 0\n",
                &["p", "q", "w", "v"],
            ),
            ("servers:\n  <<: *a\n  w: 0\n", &["p", "q", "w"]),
            // A list: last listed first.
            ("servers:\n  w: 0\n  <<: [*a, *b]\n", &["q", "r", "p", "w"]),
            ("servers: {<<: [*a, *b, *c]}\n", &["s", "p", "q", "r"]),
            // Separate `<<` keys: in the order written, wherever they are.
            (
                "servers:\n  w: 0\n  <<: *a\n  v: 0\n  <<: *b\n",
                &["p", "q", "r", "w", "v"],
            ),
            (
                "servers: {<<: [*a, *b], z: 0, <<: *c}\n",
                &["q", "r", "p", "s", "z"],
            ),
            // A written key that a merge brings too keeps the merged one's place.
            (
                "servers:\n  r: 0\n  w: 0\n  <<: *b\n  q: 0\n",
                &["q", "r", "w"],
            ),
            // Nested: a merged mapping is flattened first, its own merges first.
            (
                "d: &d\n  t: 4\n  <<: *a\n  q: 4\nservers:\n  w: 0\n  <<: *d\n",
                &["p", "q", "t", "w"],
            ),
            (
                "d: &d {<<: [*a, *b], t: 4}\ne: &e {u: 5, <<: *b}\nservers:\n  w: 0\n  <<: [*d, *e]\n",
                &["q", "r", "u", "p", "t", "w"],
            ),
            (
                "servers: {w: 0, <<: {y: 1, w: 1}, <<: {z: 2, y: 2}}\n",
                &["y", "w", "z"],
            ),
            // `servers` itself merged in at the top.
            (
                "base: &base\n  servers: {w: 0, <<: *a}\n<<: *base\n",
                &["p", "q", "w"],
            ),
            ("servers:\n  w: 0\n  v: 0\n", &["w", "v"]),
            // A `!!binary` name is its text (`dw==` is `w`), as the YAML library gives it.
            ("servers:\n  !!binary dw==: 0\n  <<: *a\n", &["p", "q", "w"]),
        ];
        for (text, expected) in cases {
            let text = format!("{anchors}{text}");
            assert_eq!(
                servers_in_pyyaml_order(&text).as_deref(),
                Some(&expected.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()[..]),
                "{text}"
            );
        }
    }

    /// Text that holds no `servers` mapping, or one PyYAML could not flatten, gives no order.
    #[test]
    fn no_order_without_a_servers_mapping_pyyaml_could_flatten() {
        for text in [
            "",
            "settings: {}\n",
            "servers: [a]\n",
            "servers: &s {a: 1, <<: *s}\n",
            "servers: {<<: [1]}\n",
            "servers: {[a]: 1}\n",
            "servers: {a: 1\n",
        ] {
            assert_eq!(servers_in_pyyaml_order(text), None, "{text}");
        }
    }
}

//! Where each key and value of a YAML document stands (line, column), so that every config
//! error, including the ones found after parsing, can name its position.
//!
//! serde_yaml drops positions once a document is parsed into values; yaml-rust2's event
//! stream keeps them. We walk that stream once and index the positions by path.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step into a YAML document: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, displayed as `routes[1].secrets[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct YPath(pub Vec<Seg>);

impl YPath {
    pub fn root() -> Self {
        YPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        YPath(segs)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        YPath(segs)
    }

    /// Extends this path with the path serde_path_to_error reports inside a value.
    pub fn join_serde(&self, inner: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut segs = self.0.clone();
        for seg in inner {
            match seg {
                Segment::Seq { index } => segs.push(Seg::Index(*index)),
                Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => {}
            }
        }
        YPath(segs)
    }

    pub fn parent(&self) -> Option<Self> {
        if self.0.is_empty() {
            None
        } else {
            Some(YPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    /// Whether any key on the path is one of `names` (used to keep secrets out of errors).
    pub fn has_key(&self, names: &[&str]) -> bool {
        self.0
            .iter()
            .any(|s| matches!(s, Seg::Key(k) if names.contains(&k.as_str())))
    }
}

impl fmt::Display for YPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// Positions of every value and every mapping key, by path.
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<YPath, Pos>,
    keys: HashMap<YPath, Pos>,
}

impl Positions {
    /// Indexes `text`. A document that does not parse yields an empty index (serde_yaml
    /// reports the syntax error itself, with its position).
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Positions::default();
        }
        builder.positions
    }

    /// The position of the value at `path`, or of its closest ancestor.
    pub fn value(&self, path: &YPath) -> Option<Pos> {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(pos) = self.values.get(&cur) {
                return Some(*pos);
            }
            p = cur.parent();
        }
        None
    }

    /// The position of the key that names `path` (falls back to the value's position).
    pub fn key(&self, path: &YPath) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

enum Frame {
    Map {
        path: YPath,
        pending_key: Option<String>,
        keys_seen: usize,
    },
    Seq {
        path: YPath,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: Positions,
}

impl Builder {
    /// Where the next value goes; `None` while the next scalar is a mapping key.
    fn next_value_path(&mut self) -> Option<YPath> {
        match self.stack.last_mut() {
            None => Some(YPath::root()),
            Some(Frame::Map {
                path, pending_key, ..
            }) => pending_key.take().map(|k| path.key(&k)),
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => match self.next_value_path() {
                Some(path) => {
                    self.positions.values.insert(path, mark.into());
                }
                None => {
                    if let Some(Frame::Map {
                        path,
                        pending_key,
                        keys_seen,
                    }) = self.stack.last_mut()
                    {
                        // yaml-rust2 marks a block mapping at its first key's `:` (a flow
                        // mapping at its `{`); point at whichever comes first.
                        let key_pos = Pos::from(mark);
                        if *keys_seen == 0 {
                            let start =
                                self.positions.values.entry(path.clone()).or_insert(key_pos);
                            if (key_pos.line, key_pos.col) < (start.line, start.col) {
                                *start = key_pos;
                            }
                        }
                        *keys_seen += 1;
                        self.positions.keys.insert(path.key(&text), mark.into());
                        *pending_key = Some(text);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex mapping key has no path of ours; index it under a placeholder.
                let path = self
                    .next_value_path()
                    .unwrap_or_else(|| YPath::root().key("?"));
                self.positions.values.insert(path.clone(), mark.into());
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        pending_key: None,
                        keys_seen: 0,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let _ = self.next_value_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_and_values() {
        let text = "listen: x\nroutes:\n  - name: a\n    secrets: [s1, s2]\n    opts: {k: v}\n";
        let p = Positions::index(text);
        let route = YPath::root().key("routes").index(0);
        assert_eq!(
            p.value(&YPath::root().key("listen")),
            Some(Pos { line: 1, col: 9 })
        );
        assert_eq!(p.key(&route.key("name")), Some(Pos { line: 3, col: 5 }));
        assert_eq!(
            p.value(&route.key("secrets").index(1)),
            Some(Pos { line: 4, col: 19 })
        );
        assert_eq!(p.value(&route.key("opts")), Some(Pos { line: 5, col: 11 }));
        // Unknown deeper paths fall back to the closest ancestor.
        assert_eq!(p.value(&route.key("nope")), Some(Pos { line: 3, col: 5 }));
        assert_eq!(
            route.key("secrets").index(1).to_string(),
            "routes[0].secrets[1]"
        );
    }
}

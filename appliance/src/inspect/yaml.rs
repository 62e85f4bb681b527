//! The block-style YAML subset netplan files use: nested mappings, `- `
//! sequences, flow sequences `[a, b]`, quoted and plain scalars, comments.
//! Anchors, multi-line scalars and tags are not needed for netplan and are
//! read as plain text. Depth is bounded; malformed lines are skipped.

/// A YAML node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// Text (quotes removed).
    Scalar(String),
    /// Sequence.
    Seq(Vec<Node>),
    /// Mapping in file order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// Value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    /// Text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }
    /// Items of a sequence (a scalar counts as a one-item sequence).
    pub fn items(&self) -> Vec<&Node> {
        match self {
            Node::Seq(v) => v.iter().collect(),
            Node::Scalar(_) => vec![self],
            Node::Map(_) => vec![],
        }
    }
    /// Entries of a mapping.
    pub fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Map(m) => m,
            _ => &[],
        }
    }
}

const MAX_DEPTH: usize = 48;

struct Line {
    indent: usize,
    text: String,
}

fn strip_comment(s: &str) -> &str {
    let (mut sq, mut dq) = (false, false);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !dq => sq = !sq,
            '"' if !sq => dq = !dq,
            '#' if !sq && !dq && prev.is_whitespace() => return &s[..i],
            _ => {}
        }
        prev = c;
    }
    s
}

fn scalar(s: &str) -> Node {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return Node::Seq(
            inner
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| Node::Scalar(unquote(x).to_string()))
                .collect(),
        );
    }
    if s == "{}" {
        return Node::Map(vec![]);
    }
    Node::Scalar(unquote(s).to_string())
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

/// Splits `key: value` (value may be empty); None when the line is no key.
fn split_key(t: &str) -> Option<(String, &str)> {
    if let Some(q @ ('"' | '\'')) = t.chars().next() {
        let end = t[1..].find(q)? + 1;
        let rest = t[end + 1..].trim_start().strip_prefix(':')?;
        return Some((t[1..end].to_string(), rest.trim()));
    }
    if let Some(i) = t.find(": ") {
        return Some((t[..i].trim().to_string(), t[i + 2..].trim()));
    }
    t.strip_suffix(':').map(|k| (k.trim().to_string(), ""))
}

fn is_dash(t: &str) -> bool {
    t == "-" || t.starts_with("- ")
}

/// Parses a document; never fails (unreadable parts are left out).
pub fn parse(text: &str) -> Node {
    let mut lines: Vec<Line> = text
        .lines()
        .filter_map(|l| {
            let l = strip_comment(l).trim_end();
            let t = l.trim_start();
            if t.is_empty() || t == "---" || t.starts_with('%') {
                return None;
            }
            Some(Line {
                indent: l.len() - t.len(),
                text: t.to_string(),
            })
        })
        .collect();
    let mut i = 0;
    if lines.is_empty() {
        return Node::Map(vec![]);
    }
    let ind = lines[0].indent;
    block(&mut lines, &mut i, ind, 0)
}

fn block(lines: &mut [Line], i: &mut usize, ind: usize, depth: usize) -> Node {
    if *i >= lines.len() || depth > MAX_DEPTH {
        *i = lines.len().max(*i);
        return Node::Scalar(String::new());
    }
    if is_dash(&lines[*i].text) {
        let mut items = vec![];
        while *i < lines.len() && lines[*i].indent == ind && is_dash(&lines[*i].text) {
            let text = lines[*i].text.clone();
            let rest = text[1..].trim_start();
            let off = text.len() - rest.len();
            if rest.is_empty() {
                *i += 1;
                if *i < lines.len() && lines[*i].indent > ind {
                    let ni = lines[*i].indent;
                    items.push(block(lines, i, ni, depth + 1));
                } else {
                    items.push(Node::Scalar(String::new()));
                }
            } else if split_key(rest).is_some() && !rest.starts_with('[') {
                lines[*i] = Line {
                    indent: ind + off,
                    text: rest.to_string(),
                };
                items.push(block(lines, i, ind + off, depth + 1));
            } else {
                items.push(scalar(rest));
                *i += 1;
            }
        }
        return Node::Seq(items);
    }
    let mut map = vec![];
    while *i < lines.len() && lines[*i].indent >= ind {
        if lines[*i].indent > ind || is_dash(&lines[*i].text) {
            *i += 1; // stray line
            continue;
        }
        let text = lines[*i].text.clone();
        *i += 1;
        let Some((k, v)) = split_key(&text) else { continue };
        let node = if !v.is_empty() {
            scalar(v)
        } else if *i < lines.len() && (lines[*i].indent > ind || (lines[*i].indent == ind && is_dash(&lines[*i].text))) {
            let ni = lines[*i].indent;
            block(lines, i, ni, depth + 1)
        } else {
            Node::Scalar(String::new())
        };
        map.push((k, node));
    }
    Node::Map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netplan_shapes() {
        let n = parse(
            "# comment\nnetwork:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: \"52:54:00:aa:bb:cc\"\n      set-name: lan0\n      addresses: [10.0.0.5/24, \"10.0.0.6/24\"]\n      nameservers:\n        addresses:\n        - 1.1.1.1\n      routes:\n        - to: default\n          via: 10.0.0.1\n    eth1: {}\n",
        );
        let e = n.get("network").unwrap().get("ethernets").unwrap();
        let id0 = e.get("id0").unwrap();
        assert_eq!(
            id0.get("match").unwrap().get("macaddress").unwrap().as_str(),
            Some("52:54:00:aa:bb:cc")
        );
        assert_eq!(id0.get("addresses").unwrap().items().len(), 2);
        assert_eq!(id0.get("nameservers").unwrap().get("addresses").unwrap().items().len(), 1);
        let r = id0.get("routes").unwrap().items();
        assert_eq!(r[0].get("via").unwrap().as_str(), Some("10.0.0.1"));
        assert_eq!(e.get("eth1"), Some(&Node::Map(vec![])));
    }
}

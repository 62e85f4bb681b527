//! How descriptors in XML (OVF, libvirt) are parsed: `roxmltree` with DTDs
//! refused, so no entity expansion ("billion laughs") and no external entity
//! can reach a file or the network; element and attribute names are matched
//! by local name, since tools disagree on prefixes and namespaces.

use std::path::{Path, PathBuf};

use roxmltree::{Document, Node, ParsingOptions};

/// Why an XML descriptor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The document declares a DTD.
    #[error("{path}: the XML declares a DTD (<!DOCTYPE …>), which can expand entities without bound; remove the DOCTYPE line — OVF and libvirt files do not need one")]
    Dtd {
        /// File.
        path: PathBuf,
    },
    /// Not well-formed.
    #[error("{path}: XML is not well-formed: {message}")]
    Syntax {
        /// File.
        path: PathBuf,
        /// Parser message with line:column.
        message: String,
    },
}

/// Parses `text` (a leading BOM is fine) refusing DTDs.
pub fn parse<'a>(text: &'a str, path: &Path) -> Result<Document<'a>, XmlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: 1_000_000,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected => XmlError::Dtd { path: path.to_path_buf() },
        other => XmlError::Syntax {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// `file:line` of a node, for notes and errors.
pub fn at(doc: &Document<'_>, node: Node<'_, '_>, path: &Path) -> String {
    let p = doc.text_pos_at(node.range().start);
    format!("{}:{}", path.display(), p.row)
}

/// First child element with this local name (case-insensitive).
pub fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name().eq_ignore_ascii_case(name))
}

/// All child elements with this local name (case-insensitive).
pub fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name().eq_ignore_ascii_case(name))
}

/// Trimmed text of the first child element with this local name, if not empty.
pub fn child_text(n: Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Attribute by local name in any namespace (case-insensitive).
pub fn attr<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes().find(|a| a.name().eq_ignore_ascii_case(name)).map(|a| a.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_expansion_is_refused() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Envelope>&lol2;</Envelope>"#;
        let e = parse(bomb, Path::new("bomb.ovf")).unwrap_err();
        assert!(matches!(e, XmlError::Dtd { .. }));
        assert!(e.to_string().contains("bomb.ovf") && e.to_string().contains("DOCTYPE"), "{e}");
        let xxe = r#"<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain>&x;</domain>"#;
        assert!(matches!(parse(xxe, Path::new("x.xml")), Err(XmlError::Dtd { .. })));
        let e = parse("<a><b></a>", Path::new("y.xml")).unwrap_err();
        assert!(e.to_string().contains("y.xml") && e.to_string().contains("1:"), "{e}");
    }
}

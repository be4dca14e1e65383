//! Streaming XML cursor over quick-xml's `NsReader`: names resolved to namespace URIs (never
//! prefixes), a depth limit, DOCTYPE and custom entities refused, errors with line and column.
//! Also the output side: escaping for text and attribute values.

use std::borrow::Cow;

use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Why a document could not be read. Each maps to a SOAP Client fault with a detail code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed XML (or not UTF-8), at a 1-based line and column.
    #[error("malformed XML at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    /// `<!DOCTYPE ...>`: the only way to declare entities, so refusing it rules out XXE and
    /// entity expansion bombs without having to reason about what a DTD could do.
    #[error("DOCTYPE and entity declarations are not allowed (line {line}, column {column})")]
    Doctype { line: usize, column: usize },
    /// An entity reference other than the five predefined ones or a character reference.
    #[error("undeclared entity '&{name};' at line {line}, column {column}")]
    UnknownEntity {
        name: String,
        line: usize,
        column: usize,
    },
    /// Non-blank text where only elements belong (between the fields of a record).
    #[error("unexpected text '{text}' at line {line}, column {column}")]
    UnexpectedText {
        text: String,
        line: usize,
        column: usize,
    },
    /// Elements nested deeper than the configured limit.
    #[error("elements nested deeper than {max} levels (line {line}, column {column})")]
    TooDeep {
        max: usize,
        line: usize,
        column: usize,
    },
}

impl XmlError {
    /// The machine-readable code put into the fault's `detail`.
    pub fn code(&self) -> &'static str {
        match self {
            XmlError::Malformed { .. } | XmlError::UnexpectedText { .. } => "malformed_xml",
            XmlError::Doctype { .. } | XmlError::UnknownEntity { .. } => "dtd_not_allowed",
            XmlError::TooDeep { .. } => "too_deep",
        }
    }
}

/// An element or attribute name: namespace URI (`None` when unqualified) and local name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub ns: Option<String>,
    pub local: String,
}

impl Name {
    /// True when the name is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// How to show the name to a partner: `{uri}local` (Clark notation), as prefixes mean nothing.
    pub fn display(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{{{ns}}}{}", self.local),
            None => self.local.clone(),
        }
    }
}

/// A start tag with its attributes, names resolved.
#[derive(Debug, Clone)]
pub struct Element {
    pub name: Name,
    pub attrs: Vec<(Name, String)>,
}

impl Element {
    /// The value of attribute `local` in namespace `ns` (`None` ns = unqualified attribute).
    pub fn attr(&self, ns: Option<&str>, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n.local == local && n.ns.as_deref() == ns)
            .map(|(_, v)| v.as_str())
    }
}

/// One step through the document. Empty elements come as `Start` then `End`; comments and
/// processing instructions are skipped; text arrives in pieces (entity references resolved).
#[derive(Debug, Clone)]
pub enum Node {
    Start(Element),
    End,
    Text(String),
    Eof,
}

/// A pull cursor over a UTF-8 document held in memory. Memory use is the input plus the
/// current element: no tree is built.
pub struct Cursor<'a> {
    reader: NsReader<&'a [u8]>,
    src: &'a str,
    depth: usize,
    max_depth: usize,
    /// (line, byte where it starts, bytes scanned so far): line counting is incremental, so
    /// positions cost O(n) over the whole parse.
    lines: (usize, usize, usize),
}

/// Parses a body that must be UTF-8 (SOAP toolkits send UTF-8; anything else is refused with
/// the byte where decoding failed).
pub fn utf8(body: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(body).map_err(|e| {
        let (line, column) = line_col(&body[..e.valid_up_to()]);
        XmlError::Malformed {
            line,
            column,
            message: "the body is not valid UTF-8".into(),
        }
    })
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&prefix[start..]).chars().count() + 1;
    (line, column)
}

impl<'a> Cursor<'a> {
    pub fn new(src: &'a str, max_depth: usize) -> Cursor<'a> {
        let mut reader = NsReader::from_str(src);
        let cfg = reader.config_mut();
        cfg.expand_empty_elements = true;
        cfg.check_end_names = true;
        cfg.check_comments = true;
        Cursor {
            reader,
            src,
            depth: 0,
            max_depth,
            lines: (1, 0, 0),
        }
    }

    /// Current nesting depth (1 inside the root element).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Line and column of a byte offset into the document.
    fn position(&mut self, offset: u64) -> (usize, usize) {
        let bytes = self.src.as_bytes();
        let offset = (offset as usize).min(bytes.len());
        let (mut line, mut line_start, mut scanned) = self.lines;
        if offset < scanned {
            (line, line_start, scanned) = (1, 0, 0);
        }
        for (i, b) in bytes[scanned..offset].iter().enumerate() {
            if *b == b'\n' {
                line += 1;
                line_start = scanned + i + 1;
            }
        }
        self.lines = (line, line_start, offset);
        // Columns count characters, not bytes: what an editor shows for Chinese text.
        let column = bytes[line_start..offset]
            .iter()
            .filter(|b| (**b & 0xC0) != 0x80)
            .count()
            + 1;
        (line, column)
    }

    fn here(&mut self) -> (usize, usize) {
        let p = self.reader.buffer_position();
        self.position(p)
    }

    fn malformed(&mut self, message: String, at_error: bool) -> XmlError {
        let pos = if at_error {
            self.reader.error_position()
        } else {
            self.reader.buffer_position()
        };
        let (line, column) = self.position(pos);
        XmlError::Malformed {
            line,
            column,
            message,
        }
    }

    /// The next node.
    pub fn next_node(&mut self) -> Result<Node, XmlError> {
        loop {
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok((r, e)) => (owned_ns(r), e),
                Err(e) => return Err(self.malformed(e.to_string(), true)),
            };
            match event {
                Event::Start(start) => {
                    let ns = match resolved {
                        Ok(ns) => ns,
                        Err(p) => {
                            let msg = format!("undeclared namespace prefix '{p}'");
                            return Err(self.malformed(msg, false));
                        }
                    };
                    self.depth += 1;
                    if self.depth > self.max_depth {
                        // Positions are computed only for errors: on a one-line document the
                        // column count is a scan from the line start.
                        let (line, column) = self.here();
                        return Err(XmlError::TooDeep {
                            max: self.max_depth,
                            line,
                            column,
                        });
                    }
                    let mut attrs = Vec::new();
                    for a in start.attributes() {
                        let a = match a {
                            Ok(a) => a,
                            Err(e) => return Err(self.malformed(e.to_string(), false)),
                        };
                        // Namespace declarations are bookkeeping, not data.
                        if a.key.as_namespace_binding().is_some() {
                            continue;
                        }
                        let (ans, local) = self.reader.resolver().resolve_attribute(a.key);
                        let ans = match owned_ns(ans) {
                            Ok(ns) => ns,
                            Err(p) => {
                                return Err(self.malformed(
                                    format!("undeclared namespace prefix '{p}'"),
                                    false,
                                ));
                            }
                        };
                        let value = match a.normalized_value(XmlVersion::Implicit1_0) {
                            Ok(v) => v.into_owned(),
                            Err(e) => return Err(self.entity_error(e.to_string())),
                        };
                        attrs.push((
                            Name {
                                ns: ans,
                                local: local.as_ref().to_owned(),
                            },
                            value,
                        ));
                    }
                    return Ok(Node::Start(Element {
                        name: Name {
                            ns,
                            local: start.local_name().as_ref().to_owned(),
                        },
                        attrs,
                    }));
                }
                Event::End(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(Node::End);
                }
                Event::Empty(_) => unreachable!("expand_empty_elements is set"),
                Event::Text(t) => return Ok(Node::Text(t.xml10_content().into_owned())),
                Event::CData(c) => return Ok(Node::Text(c.xml10_content().into_owned())),
                Event::GeneralRef(r) => {
                    let name = r.xml10_content().into_owned();
                    if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => return Ok(Node::Text(c.to_string())),
                            _ => {
                                return Err(self.malformed(
                                    format!("invalid character reference '&{name};'"),
                                    false,
                                ));
                            }
                        }
                    }
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => return Ok(Node::Text(s.to_owned())),
                        None => {
                            let (line, column) = self.here();
                            return Err(XmlError::UnknownEntity { name, line, column });
                        }
                    }
                }
                Event::DocType(_) => {
                    let (line, column) = self.position(self.reader.buffer_position());
                    return Err(XmlError::Doctype { line, column });
                }
                Event::Decl(d) => {
                    // The body was decoded as UTF-8; a declaration claiming otherwise would make
                    // us read it wrongly.
                    if let Some(Ok(enc)) = d.encoding() {
                        let enc = enc.to_ascii_lowercase();
                        if enc != "utf-8" && enc != "utf8" {
                            return Err(self.malformed(
                                format!("encoding '{enc}' is not supported; send UTF-8"),
                                false,
                            ));
                        }
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => {
                    if self.depth > 0 {
                        return Err(self.malformed("unexpected end of document".into(), false));
                    }
                    return Ok(Node::Eof);
                }
            }
        }
    }

    fn entity_error(&mut self, message: String) -> XmlError {
        // quick-xml reports unknown entities in attribute values as escape errors.
        self.malformed(message, false)
    }

    /// Resolves a QName written in text content (`soap:Client`) in the current scope: the
    /// namespace URI bound to its prefix (the default namespace when unprefixed) and its local part.
    pub fn resolve_qname(&self, text: &str) -> (Option<String>, String) {
        let q = quick_xml::name::QName(text);
        let (local, prefix) = q.decompose();
        let ns = owned_ns(self.reader.resolver().resolve_prefix(prefix, true))
            .ok()
            .flatten();
        (ns, local.as_ref().to_owned())
    }

    /// Reads the text content of the element just started, up to and including its end tag.
    /// `Err(Ok(name))` when a child element appears (the child and everything up to the end
    /// of this element are consumed), so callers can report a structural problem and go on.
    pub fn text_content(&mut self) -> Result<Result<String, Name>, XmlError> {
        let mut text = String::new();
        loop {
            match self.next_node()? {
                Node::Text(t) => text.push_str(&t),
                Node::End => return Ok(Ok(text)),
                Node::Start(child) => {
                    // Depth 1 = inside the child; skip until we are out of this element.
                    self.skip_rest(2)?;
                    return Ok(Err(child.name));
                }
                Node::Eof => return Err(self.malformed("unexpected end of document".into(), false)),
            }
        }
    }

    /// Consumes nodes until `levels` end tags more than start tags were seen: `skip_rest(1)`
    /// right after a `Start` skips that element's content and its end tag.
    pub fn skip_rest(&mut self, levels: usize) -> Result<(), XmlError> {
        let mut open = levels;
        while open > 0 {
            match self.next_node()? {
                Node::Start(_) => open += 1,
                Node::End => open -= 1,
                Node::Text(_) => {}
                Node::Eof => return Err(self.malformed("unexpected end of document".into(), false)),
            }
        }
        Ok(())
    }

    /// Next element start or end at this level, skipping whitespace; non-blank text is an error
    /// (it is misplaced content in a place where only elements belong).
    pub fn next_element(&mut self) -> Result<Option<Element>, XmlError> {
        loop {
            match self.next_node()? {
                Node::Start(e) => return Ok(Some(e)),
                Node::End | Node::Eof => return Ok(None),
                Node::Text(t) if t.trim().is_empty() => {}
                Node::Text(t) => {
                    let (line, column) = self.here();
                    return Err(XmlError::UnexpectedText {
                        text: t.trim().chars().take(40).collect(),
                        line,
                        column,
                    });
                }
            }
        }
    }
}

fn owned_ns(r: ResolveResult<'_>) -> Result<Option<String>, String> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(ns.0.to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(p),
    }
}

/// Escapes text for element content or a double-quoted attribute value. Characters XML 1.0
/// cannot carry at all (most C0 controls) become U+FFFD, so a partner's garbage echoed in a
/// fault string can never make our answer unparseable.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| matches!(c, '&' | '<' | '>' | '"' | '\'') || !is_xml_char(c))
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if !is_xml_char(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(src: &str) -> Result<Vec<Node>, XmlError> {
        let mut c = Cursor::new(src, 32);
        let mut out = Vec::new();
        loop {
            match c.next_node()? {
                Node::Eof => return Ok(out),
                n => out.push(n),
            }
        }
    }

    #[test]
    fn names_resolve_by_uri_whatever_the_prefix() {
        for src in [
            r#"<a:x xmlns:a="urn:t"><a:y/></a:x>"#,
            r#"<x xmlns="urn:t"><y/></x>"#,
            r#"<b:x xmlns:b="urn:t"><y xmlns="urn:t"/></b:x>"#,
        ] {
            let nodes = all(src).unwrap();
            let names: Vec<_> = nodes
                .iter()
                .filter_map(|n| match n {
                    Node::Start(e) => Some(e.name.clone()),
                    _ => None,
                })
                .collect();
            assert!(names[0].is("urn:t", "x"), "{src}");
            assert!(names[1].is("urn:t", "y"), "{src}");
        }
        let nodes = all(r#"<a:x xmlns:a="urn:other"/>"#).unwrap();
        let Node::Start(e) = &nodes[0] else { panic!() };
        assert!(!e.name.is("urn:t", "x"));
    }

    #[test]
    fn doctype_is_refused_before_any_entity_is_seen() {
        let src = "<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n<x>&xxe;</x>";
        assert!(matches!(all(src), Err(XmlError::Doctype { line: 2, .. })));
    }

    #[test]
    fn unknown_entities_are_refused_and_predefined_ones_resolved() {
        assert!(matches!(
            all("<x>&xxe;</x>"),
            Err(XmlError::UnknownEntity { ref name, .. }) if name == "xxe"
        ));
        let nodes = all("<x>a&amp;b&#x4e2d;&lt;</x>").unwrap();
        let text: String = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "a&b中<");
    }

    #[test]
    fn depth_is_limited() {
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert!(matches!(all(&deep), Err(XmlError::TooDeep { max: 32, .. })));
        let ok = format!("{}{}", "<a>".repeat(32), "</a>".repeat(32));
        assert!(all(&ok).is_ok());
    }

    #[test]
    fn malformed_xml_names_line_and_column() {
        let err = all("<x>\n  <y>\n</x>").unwrap_err();
        match err {
            XmlError::Malformed { line, .. } => assert_eq!(line, 3, "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(all("<x><y></x>"), Err(XmlError::Malformed { .. })));
        assert!(matches!(all("<x>"), Err(XmlError::Malformed { .. })));
        assert!(
            matches!(all("<p:x/>"), Err(XmlError::Malformed { ref message, .. }) if message.contains("prefix"))
        );
        assert!(matches!(
            utf8(b"<x>\n\xff</x>"),
            Err(XmlError::Malformed {
                line: 2,
                column: 1,
                ..
            })
        ));
    }

    #[test]
    fn non_utf8_declarations_are_refused() {
        assert!(all(r#"<?xml version="1.0" encoding="GBK"?><x/>"#).is_err());
        assert!(all(r#"<?xml version="1.0" encoding="utf-8"?><x/>"#).is_ok());
    }

    #[test]
    fn escape_covers_markup_and_illegal_characters() {
        assert_eq!(escape("plain 中文"), "plain 中文");
        assert_eq!(
            escape("<a href=\"x\">'&'</a>\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;\u{fffd}"
        );
    }
}

//! Template names as E2B reads them: `identifier[:tag]`, trimmed and lowercased; the
//! identifier `[a-z0-9-_]+` (at most 128 characters), the tag `[a-z0-9-_.]+` and not a UUID;
//! tag `default` is the same as no tag.

/// The tag a name without one means.
pub const DEFAULT_TAG: &str = "default";

/// A parsed `identifier[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateName {
    /// The alias or template id.
    pub identifier: String,
    /// The tag, if the name had one other than `default`.
    pub tag: Option<String>,
}

/// Why a name or tag is refused (E2B answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadName(pub String);

impl TemplateName {
    /// Parses `text` (see the module docs). A namespace (`team/name`) is refused: a single
    /// node has no teams.
    ///
    /// # Errors
    ///
    /// [`BadName`] naming the rule broken.
    pub fn parse(text: &str) -> Result<Self, BadName> {
        let text = text.trim().to_lowercase();
        if text.contains('/') {
            return Err(BadName(format!(
                "template name {text:?}: namespaces (team/name) are not supported on a single node; use the name alone"
            )));
        }
        let (identifier, tag) = match text.split_once(':') {
            Some((identifier, tag)) => (identifier.to_owned(), Some(parse_tag(tag)?)),
            None => (text.clone(), None),
        };
        if identifier.is_empty()
            || identifier.len() > 128
            || !identifier
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(BadName(format!(
                "template name {identifier:?} must be 1 to 128 characters of a-z, 0-9, - and _"
            )));
        }
        Ok(Self {
            identifier,
            tag: tag.filter(|t| t != DEFAULT_TAG),
        })
    }

    /// The tag this name means (`default` when it has none).
    #[must_use]
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

/// Checks one tag (trimmed, lowercased).
///
/// # Errors
///
/// [`BadName`]: empty, a character outside `[a-z0-9-_.]`, or a UUID (E2B keeps those for
/// build ids).
pub fn parse_tag(tag: &str) -> Result<String, BadName> {
    let tag = tag.trim().to_lowercase();
    if tag.is_empty()
        || tag.len() > 128
        || !tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return Err(BadName(format!(
            "tag {tag:?} must be 1 to 128 characters of a-z, 0-9, -, _ and ."
        )));
    }
    if is_uuid(&tag) {
        return Err(BadName(format!(
            "tag {tag:?} is a UUID, which names a build, not a tag"
        )));
    }
    Ok(tag)
}

/// `8-4-4-4-12` hex digits.
pub(crate) fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(identifier: &str, tag: Option<&str>) -> TemplateName {
        TemplateName {
            identifier: identifier.to_owned(),
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn names_are_read_as_e2b_reads_them() {
        assert_eq!(
            TemplateName::parse(" My-Tpl:V1 "),
            Ok(name("my-tpl", Some("v1")))
        );
        assert_eq!(TemplateName::parse("my_tpl"), Ok(name("my_tpl", None)));
        assert_eq!(
            TemplateName::parse("my-tpl:default"),
            Ok(name("my-tpl", None))
        );
        assert_eq!(
            TemplateName::parse("py:3.12.1").unwrap().tag_or_default(),
            "3.12.1"
        );
        assert_eq!(
            TemplateName::parse("base").unwrap().tag_or_default(),
            "default"
        );
    }

    #[test]
    fn bad_names_and_tags_are_refused() {
        for bad in [
            "",
            ":v1",
            "name:",
            "na me",
            "name:v 1",
            "team/name",
            "name:x:y",
            "ñame",
            &"a".repeat(129),
        ] {
            assert!(TemplateName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_tag("123e4567-e89b-12d3-a456-426614174000").is_err(),
            "a UUID is a build"
        );
        assert_eq!(parse_tag(" Prod "), Ok("prod".to_owned()));
    }
}

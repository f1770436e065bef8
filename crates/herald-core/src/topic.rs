//! Topics and subscription patterns.
//!
//! Invariant: a [`Topic`] is always valid (non-empty, at most
//! [`MAX_TOPIC_BYTES`] bytes, no control characters), so code holding one never
//! re-checks it.

use std::fmt;
use std::sync::Arc;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Longest user id accepted, in bytes (the personal topic adds `user/`).
pub const MAX_USER_ID_BYTES: usize = MAX_TOPIC_BYTES - USER_TOPIC_PREFIX.len();
/// Prefix of every user's personal topic.
pub const USER_TOPIC_PREFIX: &str = "user/";

/// Why a topic, pattern or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is the empty string.
    #[error("a topic must not be empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_BYTES`].
    #[error("a topic must be at most {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    /// The name contains a control character (CR, LF, NUL, ...).
    #[error("a topic must not contain control characters")]
    ControlCharacter,
    /// A user id is empty, too long or contains control characters.
    #[error("a user id must be 1 to {MAX_USER_ID_BYTES} bytes with no control characters")]
    InvalidUserId,
}

/// A validated topic name, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        check_name(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The personal topic `user/{id}` of a user.
    pub fn for_user(user_id: &str) -> Result<Self, TopicError> {
        validate_user_id(user_id)?;
        Ok(Self(Arc::from(format!("{USER_TOPIC_PREFIX}{user_id}"))))
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared name, for indexes that key by it without copying.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

/// Checks a user id: it must make a valid personal topic.
pub fn validate_user_id(user_id: &str) -> Result<(), TopicError> {
    if user_id.is_empty()
        || user_id.len() > MAX_USER_ID_BYTES
        || user_id.chars().any(char::is_control)
    {
        return Err(TopicError::InvalidUserId);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(TopicError::ControlCharacter);
    }
    Ok(())
}

/// What one subscription asks for: an exact topic, a prefix (`orders/*`), or
/// every topic (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(Topic),
    /// Every topic starting with this prefix (the pattern without its `*`).
    Prefix(Arc<str>),
    /// Every topic.
    All,
}

impl TopicPattern {
    /// Parses a subscription: a trailing `*` makes a prefix pattern, `*` alone
    /// matches everything, anything else is an exact topic.
    pub fn parse(spec: &str) -> Result<Self, TopicError> {
        check_name(spec)?;
        match spec.strip_suffix('*') {
            Some("") => Ok(Self::All),
            Some(prefix) => Ok(Self::Prefix(Arc::from(prefix))),
            None => Ok(Self::Exact(Topic(Arc::from(spec)))),
        }
    }

    /// Whether `topic` is matched by this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t.as_str() == topic,
            Self::Prefix(p) => topic.starts_with(&**p),
            Self::All => true,
        }
    }

    /// Whether every topic `other` matches is also matched by `self` — the
    /// rule by which a grant (a token's `herald.subscribe`, a public topic)
    /// authorises a subscription: a pattern is covered only by an equal or
    /// wider pattern, never by an exact topic.
    pub fn covers(&self, other: &TopicPattern) -> bool {
        match (self, other) {
            (Self::All, _) => true,
            (Self::Prefix(_), Self::All) | (Self::Exact(_), Self::All | Self::Prefix(_)) => false,
            (Self::Prefix(p), Self::Prefix(q)) => q.starts_with(&**p),
            (_, Self::Exact(t)) => self.matches(t.as_str()),
        }
    }
}

impl fmt::Display for TopicPattern {
    /// The pattern as it is written (`orders/*`, `*`, `news`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(t) => f.write_str(t.as_str()),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::All => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_validated() {
        assert!(Topic::new("orders/42").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a\nb"), Err(TopicError::ControlCharacter));
        assert_eq!(
            Topic::new(&"x".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TopicError::TooLong)
        );
        assert_eq!(
            Topic::for_user("7777").map(|t| t.to_string()),
            Ok("user/7777".into())
        );
        assert_eq!(Topic::for_user(""), Err(TopicError::InvalidUserId));
    }

    #[test]
    fn patterns_match_as_documented() {
        let p = TopicPattern::parse("orders/*").unwrap_or(TopicPattern::All);
        assert!(p.matches("orders/42"));
        assert!(p.matches("orders/42/items"));
        assert!(!p.matches("order"));
        assert_eq!(TopicPattern::parse("*"), Ok(TopicPattern::All));
        let exact = TopicPattern::parse("news").unwrap_or(TopicPattern::All);
        assert!(exact.matches("news"));
        assert!(!exact.matches("news/1"));
    }

    fn pattern(spec: &str) -> TopicPattern {
        TopicPattern::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn a_pattern_is_covered_only_by_an_equal_or_wider_one() {
        for (grant, wanted, covered) in [
            ("orders/*", "orders/42", true),
            ("orders/*", "orders/4*", true),
            ("orders/*", "orders/*", true),
            ("orders/*", "orders*", false),
            ("orders/*", "*", false),
            ("orders/*", "news", false),
            ("news", "news", true),
            ("news", "news*", false),
            ("news", "news/1", false),
            ("*", "*", true),
            ("*", "anything/*", true),
        ] {
            assert_eq!(
                pattern(grant).covers(&pattern(wanted)),
                covered,
                "{grant} covers {wanted}"
            );
        }
        assert_eq!(pattern("orders/4*").to_string(), "orders/4*");
    }

    proptest::proptest! {
        /// Soundness: whatever a covered pattern matches, its cover matches.
        #[test]
        fn covers_is_sound(
            grant in "(a|ab|abc|b)?\\*?",
            wanted in "(a|ab|abc|b)?\\*?",
            topic in "(a|b|c){0,4}",
        ) {
            let (Ok(grant), Ok(wanted)) = (TopicPattern::parse(&grant), TopicPattern::parse(&wanted)) else {
                return Ok(());
            };
            if grant.covers(&wanted) && wanted.matches(&topic) {
                proptest::prop_assert!(grant.matches(&topic), "{grant} covers {wanted} but not {topic}");
            }
        }
    }
}

//! Request templates, so that one client can measure any SSE server.
//!
//! A template is text with placeholders `{url}` (the base URL, without a
//! trailing `/`), `{i}` (subscriber index), `{topic}`, `{user}` (`u{i}` for
//! subscriber `i`, the addressee for a publish), `{token}` (subscriber `i`'s
//! token, from `--token` or line `i mod n` of `--tokens-file`) and `{data}`
//! (the event data, ASCII `seq ts pad` with no quotes or backslashes, so it
//! can sit inside a JSON string). Anything else in braces is left as it is, so JSON bodies need
//! no escaping. Substitution is one pass: a substituted value is never
//! expanded again. In URL templates every value but `{url}` is
//! percent-encoded where it would otherwise change the URL's structure.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::tls::Tls;
use crate::usage;

/// Herald's subscribe route for one topic (fanout, conns).
pub(crate) const DEFAULT_TOPIC_SUBSCRIBE: &str = "{url}/v1/events?topic={topic}";
/// Herald's subscribe route for one user's personal stream (dev mode).
pub(crate) const DEFAULT_USER_SUBSCRIBE: &str = "{url}/v1/events?user={user}";
/// Herald's publish route.
pub(crate) const DEFAULT_PUBLISH_URL: &str = "{url}/v1/publish";

/// Flags that say how subscribers open their streams.
#[derive(Debug, Clone, Args)]
pub(crate) struct SubscribeArgs {
    /// URL subscriber i opens; placeholders {url} {i} {topic} {user} (= u{i})
    /// {token} [default: {url}/v1/events?topic={topic}; unicast:
    /// {url}/v1/events?user={user}].
    #[arg(long, value_name = "TEMPLATE")]
    pub subscribe_url: Option<String>,
    /// Streams being opened at the same time [default: 32; connect: every
    /// client at once, at most 10,000].
    #[arg(long, value_name = "N")]
    pub open_concurrency: Option<usize>,
    /// With a non-default --subscribe-url: milliseconds to wait once every
    /// subscriber is open, before publishing.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// A subscriber is ready once the 200 response head arrived, without
    /// waiting for the first body bytes (for servers that send nothing at once).
    #[arg(long)]
    pub ready_on_head: bool,
    /// Token every subscriber sends (see --token-in).
    #[arg(long, value_name = "TOKEN", conflicts_with = "tokens_file")]
    pub token: Option<String>,
    /// Tokens, one per line: subscriber i sends line i mod n (blank lines
    /// skipped), so that each can be a different user.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How a subscriber sends its token: `header` (Authorization: Bearer) or
    /// `query` (access_token= added to the URL); a --subscribe-url with
    /// {token} places it itself and neither is added.
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = TokenIn::Header)]
    pub token_in: TokenIn,
}

/// Streams opened at the same time unless `--open-concurrency` says.
pub(crate) const DEFAULT_OPEN_CONCURRENCY: usize = 32;

impl SubscribeArgs {
    /// The template in force, and whether it is Herald's default.
    pub(crate) fn template<'a>(&'a self, default: &'a str) -> (&'a str, bool) {
        match self.subscribe_url.as_deref() {
            None => (default, true),
            Some(t) => (t, t == default),
        }
    }

    /// `--open-concurrency`, at least 1, or `default`.
    pub(crate) fn open_concurrency(&self, default: usize) -> anyhow::Result<usize> {
        match self.open_concurrency {
            Some(0) => Err(usage("--open-concurrency must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default.max(1)),
        }
    }

    /// The tokens of `--token` or `--tokens-file`, checked.
    pub(crate) fn tokens(&self) -> anyhow::Result<Tokens> {
        if let Some(token) = &self.token {
            check_token(token).map_err(|why| usage(format!("--token: {why}")))?;
            return Ok(Tokens(vec![token.as_str().into()]));
        }
        let Some(path) = &self.tokens_file else {
            return Ok(Tokens(Vec::new()));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("--tokens-file {}: {e}", path.display())))?;
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() {
                continue;
            }
            check_token(token).map_err(|why| {
                usage(format!(
                    "--tokens-file {} line {}: {why}",
                    path.display(),
                    n + 1
                ))
            })?;
            tokens.push(token.into());
        }
        if tokens.is_empty() {
            return Err(usage(format!(
                "--tokens-file {}: no token in it",
                path.display()
            )));
        }
        Ok(Tokens(tokens))
    }
}

/// A token goes into a header line or a URL as it is: printable ASCII with
/// no spaces, so that it cannot end the header or change the request.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is printable ASCII with no spaces");
    }
    Ok(())
}

/// Where a subscriber's token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TokenIn {
    /// `Authorization: Bearer TOKEN`.
    Header,
    /// `access_token=TOKEN` in the URL's query.
    Query,
}

/// The subscribers' tokens: subscriber `i` sends `i mod n`; none when empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens(Vec<Arc<str>>);

impl Tokens {
    /// Subscriber `i`'s token.
    pub(crate) fn get(&self, i: usize) -> Option<&Arc<str>> {
        match self.0.len() {
            0 => None,
            n => self.0.get(i % n),
        }
    }

    /// How many distinct lines there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Flags that say how events are published.
#[derive(Debug, Clone, Args)]
pub(crate) struct PublishTemplateArgs {
    /// URL of a publish request; placeholders {url} {topic} {user} {data}.
    #[arg(long, value_name = "TEMPLATE", default_value = DEFAULT_PUBLISH_URL)]
    pub publish_url: String,
    /// HTTP method of a publish request.
    #[arg(long, value_name = "METHOD", default_value = "POST")]
    pub publish_method: String,
    /// Body of a publish request; placeholders {topic} {user} {data}
    /// [default: Herald's JSON, {"topics":["{topic}"],"data":"{data}"} or
    /// {"users":["{user}"],"data":"{data}"}, an array of them for --batch].
    #[arg(long, value_name = "TEMPLATE")]
    pub publish_body: Option<String>,
    /// Content-Type of a publish request.
    #[arg(long, value_name = "TYPE", default_value = "application/json")]
    pub publish_content_type: String,
}

impl PublishTemplateArgs {
    /// The body template, `None` for Herald's own JSON (which can batch).
    pub(crate) fn body_template(&self, addressing: Addressing) -> Option<&str> {
        let body = self.publish_body.as_deref()?;
        (body != addressing.herald_body()).then_some(body)
    }

    /// Checks `--batch` against the body: only Herald's JSON takes arrays.
    pub(crate) fn check_batch(&self, batch: u32, addressing: Addressing) -> anyhow::Result<()> {
        if batch == 0 {
            return Err(usage("--batch must be at least 1"));
        }
        if batch > 1 && self.body_template(addressing).is_some() {
            return Err(usage(format!(
                "--batch {batch} needs the default Herald publish body (a JSON array of events); \
                 with --publish-body each request carries one event, so use --batch 1"
            )));
        }
        Ok(())
    }
}

/// Whom the default Herald body addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressing {
    /// `topics: [topic]`.
    Topic,
    /// `users: [user]`.
    User,
}

impl Addressing {
    /// Herald's body for one event, as a template.
    pub(crate) fn herald_body(self) -> &'static str {
        match self {
            Addressing::Topic => r#"{"topics":["{topic}"],"data":"{data}"}"#,
            Addressing::User => r#"{"users":["{user}"],"data":"{data}"}"#,
        }
    }
}

/// Values of the placeholders.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Vars<'a> {
    pub url: &'a str,
    pub i: Option<usize>,
    pub topic: &'a str,
    pub user: Option<&'a str>,
    pub token: Option<&'a str>,
    pub data: Option<&'a str>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "url" => Some(Cow::Borrowed(self.url.trim_end_matches('/'))),
            "i" => self.i.map(|i| Cow::Owned(i.to_string())),
            "topic" => Some(Cow::Borrowed(self.topic)),
            "user" => Some(match (self.user, self.i) {
                (Some(user), _) => Cow::Borrowed(user),
                (None, Some(i)) => Cow::Owned(format!("u{i}")),
                (None, None) => Cow::Borrowed(""),
            }),
            "token" => self.token.map(Cow::Borrowed),
            "data" => self.data.map(Cow::Borrowed),
            _ => None,
        }
    }
}

/// Where the expanded text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// A URL: values (but `{url}`) are percent-encoded where needed.
    Url,
    /// A body: values go in as they are.
    Body,
}

/// Expands the placeholders of `template` in one pass.
pub(crate) fn expand(template: &str, vars: &Vars<'_>, context: Context) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    // Bounded: every round consumes at least one byte of `rest`.
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let closed = after[name_len..].starts_with('}');
        let value = if !name.is_empty() && closed {
            vars.get(name)
        } else {
            None
        };
        match value {
            Some(value) => {
                if context == Context::Url && name != "url" {
                    encode_into(&value, &mut out);
                } else {
                    out.push_str(&value);
                }
                rest = &after[name_len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes what would change a URL's structure (`&`, `=`, `#`, `?`,
/// `+`, `%`, spaces, quotes, controls, non-ASCII); keeps `/` and `:`.
fn encode_into(value: &str, out: &mut String) {
    for byte in value.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-._~/:@!$'()*,;".contains(&byte);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// Parses an expanded URL template, naming the flag when it is not a URL;
/// the result is as the run uses it (`https` under `--tls`).
pub(crate) fn parse_url(flag: &str, expanded: &str, tls: &Tls) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(expanded).map_err(|e| {
        usage(format!(
            "{flag} expands to {expanded:?}, which is not a URL: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(usage(format!(
            "{flag}: bench speaks http and https only, got {expanded:?}"
        )));
    }
    Ok(tls.apply(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            url: "http://127.0.0.1:8080/",
            i: Some(7),
            topic: "a b&c",
            user: None,
            token: Some("e30.e30.sig-_"),
            data: Some("12 1700000000000000 xxx"),
        }
    }

    #[test]
    fn expands_every_placeholder() {
        assert_eq!(
            expand(DEFAULT_USER_SUBSCRIBE, &vars(), Context::Url),
            "http://127.0.0.1:8080/v1/events?user=u7"
        );
        assert_eq!(
            expand("{url}/s/{i}?t={topic}", &vars(), Context::Url),
            "http://127.0.0.1:8080/s/7?t=a%20b%26c"
        );
        assert_eq!(
            expand("{url}/e?jwt={token}", &vars(), Context::Url),
            "http://127.0.0.1:8080/e?jwt=e30.e30.sig-_"
        );
        assert_eq!(
            expand(Addressing::Topic.herald_body(), &vars(), Context::Body),
            r#"{"topics":["a b&c"],"data":"12 1700000000000000 xxx"}"#
        );
    }

    #[test]
    fn leaves_unknown_braces_and_escapes_alone() {
        let v = vars();
        assert_eq!(expand("{", &v, Context::Body), "{");
        assert_eq!(expand("{}{x}{data", &v, Context::Body), "{}{x}{data");
        assert_eq!(
            expand(r#"{"a":{"b":"{user}\n"}}"#, &v, Context::Body),
            r#"{"a":{"b":"u7\n"}}"#
        );
        // A substituted value is not expanded again.
        let tricky = Vars {
            topic: "{user}",
            ..vars()
        };
        assert_eq!(expand("{topic}", &tricky, Context::Body), "{user}");
    }

    #[test]
    fn batch_needs_the_herald_body() {
        let mut args = PublishTemplateArgs {
            publish_url: DEFAULT_PUBLISH_URL.into(),
            publish_method: "POST".into(),
            publish_body: None,
            publish_content_type: "application/json".into(),
        };
        assert!(args.check_batch(10, Addressing::Topic).is_ok());
        args.publish_body = Some(Addressing::Topic.herald_body().into());
        assert!(args.check_batch(10, Addressing::Topic).is_ok());
        args.publish_body = Some("{data}".into());
        assert!(args.check_batch(1, Addressing::Topic).is_ok());
        let err = args
            .check_batch(10, Addressing::Topic)
            .err()
            .map(|e| e.is::<crate::UsageError>());
        assert_eq!(err, Some(true));
    }
}

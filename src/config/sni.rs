//! Server names an SNI route matches: a DNS host name (`api.example.com`) or a
//! wildcard covering exactly one label (`*.example.org`), folded to lowercase
//! because TLS clients may send any case and the match ignores it.
//!
//! A name that can never be sent in a ClientHello (an IP literal, a trailing
//! dot, a `*` anywhere but the leading label, a non-ASCII name) is refused
//! here, so a route that could never match is a config error, not a silent gap.

/// The longest host name DNS allows, without the trailing dot.
const MAX_NAME: usize = 253;
/// The longest label DNS allows.
const MAX_LABEL: usize = 63;
const EXAMPLE: &str = "like \"api.example.com\" or \"*.example.org\"";

/// `text` as the route matches it (lowercase, the wildcard kept as `*.`), or
/// why it cannot be a server name.
pub(super) fn fold_pattern(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err(format!("\"\" is empty; write a server name, {EXAMPLE}"));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "{text:?} contains {bad:?}; write an internationalised name in its ASCII (punycode) \
             form, as clients send it, like \"xn--bcher-kva.example\""
        ));
    }
    let folded = text.to_ascii_lowercase();
    let host = match folded.strip_prefix("*.") {
        Some(rest) if rest.contains('*') => return Err(misplaced_wildcard(text)),
        Some("") => {
            return Err(format!(
                "{text:?} is a wildcard without a name; write the name it covers after \"*.\", \
                 {EXAMPLE}"
            ));
        }
        Some(rest) => rest,
        None if folded.contains('*') => return Err(misplaced_wildcard(text)),
        None => &folded,
    };
    check_host(text, host)?;
    Ok(folded)
}

fn misplaced_wildcard(text: &str) -> String {
    format!(
        "{text:?} has a \"*\" that is not a whole leading label; a wildcard is \"*.\" followed \
         by a name and covers exactly one label, {EXAMPLE}"
    )
}

/// `host` (the part after any `*.`) is a DNS host name; `text` is what was
/// written, for the message.
fn check_host(text: &str, host: &str) -> Result<(), String> {
    if host.ends_with('.') {
        return Err(format!(
            "{text:?} ends with a dot; clients send server names without it, so write {:?}",
            text.trim_end_matches('.')
        ));
    }
    if host.len() > MAX_NAME {
        return Err(format!(
            "{:?} is {} characters long; a DNS name has at most {MAX_NAME}",
            super::raw::clip(text, 80),
            host.len()
        ));
    }
    for label in host.split('.') {
        check_label(text, label)?;
    }
    // An all-digit last label makes 10.0.0.1 an address, and RFC 6066 keeps
    // IP literals out of SNI: a route for one would never be taken.
    if host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{text:?} looks like an IP address (its last label is all digits); TLS clients send \
             no server name for an address, so route by name, {EXAMPLE}"
        ));
    }
    Ok(())
}

fn check_label(text: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!(
            "{text:?} has an empty label (two dots in a row, or a dot at the start); {EXAMPLE}"
        ));
    }
    if label.len() > MAX_LABEL {
        return Err(format!(
            "{:?} has a label of {} characters; a DNS label has at most {MAX_LABEL}",
            super::raw::clip(text, 80),
            label.len()
        ));
    }
    // `_` is no LDH character, but internal names use it and clients send
    // them; a route for one must be possible.
    if let Some(bad) = label
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(format!(
            "{text:?} contains {bad:?}; a host name has letters, digits, \"-\", \"_\" and dots \
             only, {EXAMPLE}"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "{text:?} has a label {label:?} that starts or ends with \"-\", which a host name \
             may not; {EXAMPLE}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fold_pattern;

    #[test]
    fn names_and_one_label_wildcards_are_folded_to_lowercase() {
        for (written, folded) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("*.example.org", "*.example.org"),
            ("*.EXAMPLE.org", "*.example.org"),
            ("localhost", "localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("a-b.c0.example", "a-b.c0.example"),
            ("1.example.com", "1.example.com"),
            ("my_host.Internal", "my_host.internal"),
        ] {
            assert_eq!(fold_pattern(written).as_deref(), Ok(folded), "{written}");
        }
        let longest_label = format!("{}.example", "a".repeat(63));
        assert!(fold_pattern(&longest_label).is_ok());
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(fold_pattern(&longest).is_ok());
    }

    #[track_caller]
    fn assert_refused(text: &str, needles: &[&str]) {
        let why = fold_pattern(text).expect_err(text);
        for needle in needles {
            assert!(why.contains(needle), "{needle:?} not in: {why}");
        }
    }

    #[test]
    fn names_that_no_client_sends_are_refused_with_the_reason() {
        assert_refused("", &["\"\" is empty", "write a server name"]);
        assert_refused("*", &["\"*\"", "leading label"]);
        assert_refused("*.*.example.org", &["leading label"]);
        assert_refused("api.*.example.org", &["leading label"]);
        assert_refused("a*.example.org", &["leading label"]);
        assert_refused("**.example.org", &["leading label"]);
        assert_refused("*example.org", &["leading label"]);
        assert_refused("example.com.", &["ends with a dot", "\"example.com\""]);
        assert_refused("*.", &["without a name"]);
        assert_refused("a..example", &["empty label"]);
        assert_refused(".example", &["empty label"]);
        assert_refused("my host.example", &["' '"]);
        assert_refused("a/b.example", &["'/'"]);
        assert_refused("api.example.com:443", &["':'"]);
        assert_refused("-api.example", &["\"-api\"", "\"-\""]);
        assert_refused("api-.example", &["\"api-\""]);
        assert_refused("10.0.0.1", &["IP address"]);
        assert_refused("*.10.0.0", &["IP address"]);
        assert_refused("[::1]", &["'['"]);
        assert_refused("bücher.example", &["'ü'", "punycode"]);
        assert_refused(
            &format!("{}.example", "a".repeat(64)),
            &["64 characters", "63"],
        );
        let too_long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
        assert_refused(&too_long, &["254 characters", "253"]);
    }
}

//! SNI routes: which route a TLS server name selects.
//!
//! A route is a list of names, exact (`www.example.org`) or wildcard
//! (`*.example.org`). Matching is case-insensitive and ignores one trailing dot
//! on the client's name; an exact name beats a wildcard; a wildcard covers
//! exactly one label, as in certificates (RFC 6125 6.4.3), so `*.example.org`
//! matches `a.example.org` but neither `example.org` nor `a.b.example.org`.
//! Lookup is two hash probes (the name, then the name without its first label),
//! whatever the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// The longest DNS name in text form, without the trailing dot (RFC 1035 2.3.4).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Routes by server name, built once from the config.
#[derive(Clone, Debug, Default)]
pub struct SniRoutes {
    /// Normalised exact name -> route index.
    exact: HashMap<String, usize>,
    /// `*.example.org` stored as `example.org` -> route index.
    wildcard: HashMap<String, usize>,
}

/// One name claimed by two routes (a config error: which route a client gets
/// would depend on the order of the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The pattern, normalised (lowercase, no trailing dot).
    pub name: String,
    /// The earlier route naming it.
    pub first: usize,
    /// The later one.
    pub second: usize,
}

impl SniRoutes {
    /// Builds the matcher from the routes' name lists (index = route). Fails on
    /// an invalid pattern or a name two routes claim; the config reports those
    /// itself with [`validate_pattern`] and [`duplicates`] so it can name its
    /// keys, this is the backstop.
    pub fn new(routes: &[Vec<String>]) -> Result<SniRoutes, String> {
        if let Some(d) = duplicates(routes).first() {
            return Err(format!(
                "SNI name {:?} is in route {} and route {}; give each name to one route",
                d.name, d.first, d.second
            ));
        }
        let mut table = SniRoutes::default();
        for (route, names) in routes.iter().enumerate() {
            for pattern in names {
                validate_pattern(pattern).map_err(|e| format!("route {route}: {e}"))?;
                let name = normalise(pattern).into_owned();
                match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.insert(suffix.to_owned(), route),
                    None => table.exact.insert(name, route),
                };
            }
        }
        Ok(table)
    }

    /// The route for a client's server name, if any names it.
    pub fn route(&self, sni: &str) -> Option<usize> {
        let name = normalise(sni);
        if let Some(&route) = self.exact.get(name.as_ref()) {
            return Some(route);
        }
        // One label, and not an empty one: `.example.org` is no host under
        // `*.example.org`.
        match name.split_once('.') {
            Some((first, rest)) if !first.is_empty() => self.wildcard.get(rest).copied(),
            _ => None,
        }
    }

    /// True when no route names anything (SNI routing is off).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// Checks one configured pattern: a DNS name, optionally with `*.` as its whole
/// first label. The error names the pattern and the problem.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    if host.contains('*') {
        return Err(format!(
            "SNI pattern {pattern:?}: `*` is allowed only as the whole first label, as in `*.example.org`"
        ));
    }
    match host_name_problem(host.as_bytes()) {
        None => Ok(()),
        Some(problem) => Err(format!(
            "SNI pattern {pattern:?}: {problem}; expected a DNS name like `www.example.org` or `*.example.org`"
        )),
    }
}

/// Every name (exact or wildcard, compared case-insensitively and without a
/// trailing dot) that more than one route lists, in config order. A name a
/// single route repeats is harmless and not reported.
pub fn duplicates(routes: &[Vec<String>]) -> Vec<Duplicate> {
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut found = Vec::new();
    for (route, names) in routes.iter().enumerate() {
        for pattern in names {
            match owner.entry(normalise(pattern).into_owned()) {
                Entry::Vacant(slot) => {
                    slot.insert(route);
                }
                Entry::Occupied(slot) if *slot.get() != route => found.push(Duplicate {
                    name: slot.key().clone(),
                    first: *slot.get(),
                    second: route,
                }),
                Entry::Occupied(_) => {}
            }
        }
    }
    found
}

/// Lowercase without one trailing dot; borrows when the name already is.
fn normalise(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Why `name` is not a usable host name, or None when it is: ASCII letters,
/// digits, `-` and `_` (seen in real internal names) in dot-separated labels of
/// 1..=63 bytes, no label starting or ending with `-`, at most 253 bytes, one
/// trailing dot allowed. Anything else (NUL, spaces, `/`, non-ASCII) could
/// confuse a log reader or a backend and routes nowhere.
pub(crate) fn host_name_problem(name: &[u8]) -> Option<&'static str> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.len() > MAX_NAME {
        return Some("the name is longer than 253 bytes");
    }
    name.split(|&b| b == b'.').find_map(label_problem)
}

fn label_problem(label: &[u8]) -> Option<&'static str> {
    if label.is_empty() {
        return Some("the name has an empty label (two dots in a row, or a leading dot)");
    }
    if label.len() > MAX_LABEL {
        return Some("a label is longer than 63 bytes");
    }
    if !label
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some("the name has a byte other than a letter, digit, '-', '_' or '.'");
    }
    if label.starts_with(b"-") || label.ends_with(b"-") {
        return Some("a label begins or ends with '-'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(lists: &[&[&str]]) -> Vec<Vec<String>> {
        lists
            .iter()
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    fn table(lists: &[&[&str]]) -> SniRoutes {
        match SniRoutes::new(&routes(lists)) {
            Ok(t) => t,
            Err(e) => panic!("routes {lists:?}: {e}"),
        }
    }

    #[test]
    fn exact_names_match_case_insensitively() {
        let t = table(&[&["www.example.org"], &["API.Example.org"]]);
        assert_eq!(t.route("www.example.org"), Some(0));
        assert_eq!(t.route("WWW.EXAMPLE.ORG"), Some(0));
        assert_eq!(t.route("api.example.org"), Some(1));
        assert_eq!(t.route("api.EXAMPLE.org"), Some(1));
        assert_eq!(t.route("mail.example.org"), None);
        assert_eq!(t.route("example.org"), None);
        assert_eq!(t.route(""), None);
    }

    #[test]
    fn trailing_dot_on_the_client_name_is_ignored() {
        let t = table(&[&["www.example.org"], &["*.example.net"]]);
        assert_eq!(t.route("www.example.org."), Some(0));
        assert_eq!(t.route("a.example.net."), Some(1));
        assert_eq!(t.route("."), None);
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let t = table(&[&["*.example.org"]]);
        assert_eq!(t.route("a.example.org"), Some(0));
        assert_eq!(t.route("A.Example.ORG"), Some(0));
        assert_eq!(t.route("example.org"), None);
        assert_eq!(t.route("a.b.example.org"), None);
        assert_eq!(t.route(".example.org"), None);
        assert_eq!(t.route("aexample.org"), None);
        assert_eq!(t.route("a.example.org.evil"), None);
    }

    #[test]
    fn exact_beats_wildcard_whatever_the_order() {
        let t = table(&[&["*.example.org"], &["www.example.org"]]);
        assert_eq!(t.route("www.example.org"), Some(1));
        assert_eq!(t.route("mail.example.org"), Some(0));
        let t = table(&[&["www.example.org"], &["*.example.org"]]);
        assert_eq!(t.route("www.example.org"), Some(0));
        assert_eq!(t.route("mail.example.org"), Some(1));
    }

    #[test]
    fn a_route_may_list_several_names_and_wildcards() {
        let t = table(&[&["a.example", "*.b.example"], &["c.example"]]);
        assert_eq!(t.route("a.example"), Some(0));
        assert_eq!(t.route("x.b.example"), Some(0));
        assert_eq!(t.route("c.example"), Some(1));
        assert!(!t.is_empty());
        assert!(table(&[&[]]).is_empty());
    }

    #[test]
    fn patterns_are_validated_with_the_problem_named() {
        for good in [
            "example.org",
            "*.example.org",
            "*.org",
            "xn--bcher-kva.example",
            "_acme.example.org",
            "Example.ORG.",
            "a-b.example",
        ] {
            assert_eq!(validate_pattern(good), Ok(()), "{good}");
        }
        let cases = [
            ("", "empty"),
            ("*", "`*` is allowed only"),
            ("*.", "empty"),
            ("a.*.example.org", "`*` is allowed only"),
            ("*example.org", "`*` is allowed only"),
            ("*.*.example.org", "`*` is allowed only"),
            ("w*.example.org", "`*` is allowed only"),
            ("a..example.org", "empty label"),
            (".example.org", "empty label"),
            ("exa mple.org", "byte other than"),
            ("exa\0mple.org", "byte other than"),
            ("exämple.org", "byte other than"),
            ("a/b.example.org", "byte other than"),
            ("-a.example.org", "begins or ends with '-'"),
            ("a-.example.org", "begins or ends with '-'"),
        ];
        for (bad, problem) in cases {
            match validate_pattern(bad) {
                Ok(()) => panic!("{bad:?} accepted"),
                Err(e) => {
                    assert!(e.contains(problem), "{bad:?}: {e}");
                    assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
                }
            }
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(validate_pattern(&long_label).is_err_and(|e| e.contains("longer than 63")));
        assert_eq!(
            validate_pattern(&format!("{}.example", "a".repeat(63))),
            Ok(())
        );
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long_name.len(), 255);
        assert!(validate_pattern(&long_name).is_err_and(|e| e.contains("longer than 253")));
        let max_name = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "a".repeat(61));
        assert_eq!(max_name.len(), 253);
        assert_eq!(validate_pattern(&max_name), Ok(()));
    }

    #[test]
    fn duplicates_across_routes_are_found_normalised() {
        let r = routes(&[
            &["www.example.org", "*.example.org", "only.zero"],
            &["WWW.example.org.", "other.example"],
            &["*.Example.org", "only.two", "only.two"],
        ]);
        assert_eq!(
            duplicates(&r),
            vec![
                Duplicate {
                    name: "www.example.org".into(),
                    first: 0,
                    second: 1
                },
                Duplicate {
                    name: "*.example.org".into(),
                    first: 0,
                    second: 2
                },
            ]
        );
        let err = SniRoutes::new(&r).err().unwrap_or_default();
        assert!(
            err.contains("\"www.example.org\" is in route 0 and route 1"),
            "{err}"
        );
        assert_eq!(
            duplicates(&routes(&[&["a.example", "a.example"], &["b.example"]])),
            vec![]
        );
    }

    #[test]
    fn new_rejects_an_invalid_pattern_naming_its_route() {
        let err = SniRoutes::new(&routes(&[&["ok.example"], &["bad..example"]]))
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("route 1: SNI pattern \"bad..example\""),
            "{err}"
        );
    }

    #[test]
    fn host_names_from_clients_are_checked() {
        assert_eq!(host_name_problem(b"x.example.com"), None);
        assert_eq!(host_name_problem(b"x.example.com."), None);
        assert_eq!(host_name_problem(b"localhost"), None);
        assert_eq!(host_name_problem(b"10.0.0.1"), None);
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a.example\0.evil",
            b"a.example\0",
            b"a b",
            b"a:443",
            b"\xff.example",
            b"a..b",
            b"a.example..",
        ] {
            assert!(host_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}

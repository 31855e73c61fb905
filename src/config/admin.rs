//! `[admin]`: the address of the metrics and admin endpoint (HTTP, no TLS, no
//! authentication), or none.
//!
//! A non-loopback address is accepted: a management network is a valid
//! place for it. README says what it exposes.

use std::net::SocketAddr;

use super::addr::parse_listen;
use super::error::ConfigError;
use super::raw::Field;

const KEYS: [&str; 1] = ["listen"];
const LISTEN_EXAMPLE: &str = "listen = \"127.0.0.1:9901\"";

/// `[admin]` as resolved: where `/metrics`, `/ready`, `/live` and `/status` are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPlan {
    pub listen: SocketAddr,
}

/// `None` when there is no `[admin]` section: no endpoint.
pub(super) fn resolve(field: Option<Field<'_>>) -> Result<Option<AdminPlan>, ConfigError> {
    let Some(field) = field else {
        return Ok(None);
    };
    let section = field.table(&format!("[admin] with {LISTEN_EXAMPLE}"))?;
    section.deny_unknown(&KEYS, "in [admin]")?;
    let Some(listen) = section.get("listen") else {
        return Err(field.error(format!(
            "has no listen address; add {LISTEN_EXAMPLE} to [admin], or remove the section for \
             no admin endpoint"
        )));
    };
    let text = listen.string(LISTEN_EXAMPLE)?;
    let addr = parse_listen(text).map_err(|why| listen.error(why))?;
    Ok(Some(AdminPlan { listen: addr }))
}

#[cfg(test)]
mod tests {
    use super::super::{HostFacts, Overrides, Plan};
    use super::*;

    const LISTENER: &str =
        "\n[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";

    fn resolve(admin: &str) -> Result<Plan, ConfigError> {
        let text = format!("{admin}\n{LISTENER}");
        let host = HostFacts {
            available_cpus: vec![0, 1],
        };
        Plan::resolve(Some(("f.toml", &text)), &Overrides::default(), &host)
    }

    #[test]
    fn no_section_means_no_endpoint() {
        assert_eq!(resolve("").unwrap().admin, None);
    }

    #[test]
    fn listen_is_an_address_to_bind() {
        let plan = resolve("[admin]\nlisten = \"127.0.0.1:9901\"").unwrap();
        assert_eq!(
            plan.admin,
            Some(AdminPlan {
                listen: "127.0.0.1:9901".parse().unwrap()
            })
        );
        let plan = resolve("[admin]\nlisten = \"[::1]:0\"").unwrap();
        assert_eq!(plan.admin.unwrap().listen, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn rejections_name_the_key_and_say_what_to_write() {
        let cases: [(&str, &str, &str); 5] = [
            (
                "[admin]\nlisten = \"localhost:9901\"",
                "admin.listen",
                "IP address",
            ),
            ("[admin]\nlisten = 9901", "admin.listen", "127.0.0.1:9901"),
            ("[admin]\n", "admin", "listen = \"127.0.0.1:9901\""),
            (
                "[admin]\nlisen = \"127.0.0.1:1\"",
                "admin.lisen",
                "did you mean \"listen\"",
            ),
            ("admin = \"127.0.0.1:1\"", "admin", "[admin]"),
        ];
        for (text, key, needle) in cases {
            let err = resolve(text).expect_err(text);
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(
                err.message.contains(needle),
                "{text}: {needle:?} not in {err}"
            );
        }
    }

    #[test]
    fn check_renders_the_section() {
        let plan = resolve("[admin]\nlisten = \"127.0.0.1:9901\"").unwrap();
        assert!(
            plan.to_string()
                .contains("[admin]\nlisten = \"127.0.0.1:9901\"\n"),
            "{plan}"
        );
        let host = HostFacts {
            available_cpus: vec![0, 1],
        };
        let shown = plan.to_string();
        let again = Plan::resolve(Some(("f.toml", &shown)), &Overrides::default(), &host);
        assert_eq!(again, Ok(plan), "check's output resolves back");
        let plan = resolve("").unwrap();
        assert!(
            plan.to_string()
                .contains("# [admin]: unset (no admin endpoint)"),
            "{plan}"
        );
    }
}

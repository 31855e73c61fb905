//! Tests for the `ringfwd echo` server modes: `--tcp-sink`, `--tcp-source`,
//! `--tcp-rr` and its `--request-size` / `--response-size`.

use super::*;

fn host() -> HostFacts {
    HostFacts {
        available_cpus: vec![0, 1],
    }
}

fn rr(request: Option<&str>, response: Option<&str>) -> Result<Plan, ConfigError> {
    let overrides = Overrides {
        echo_rr: vec!["127.0.0.1:9003".into()],
        echo_request_size: request.map(str::to_owned),
        echo_response_size: response.map(str::to_owned),
        ..Overrides::default()
    };
    Plan::resolve(None, &overrides, &host())
}

#[test]
fn every_mode_becomes_an_echo_listener_with_its_mode() {
    let overrides = Overrides {
        echo: vec!["127.0.0.1:9000".into()],
        echo_sink: vec!["127.0.0.1:9001".into(), "[::1]:9001".into()],
        echo_source: vec!["127.0.0.1:9002".into()],
        echo_rr: vec!["127.0.0.1:9003".into(), "127.0.0.1:9004".into()],
        echo_request_size: Some("100".into()),
        echo_response_size: Some("4KiB".into()),
        ..Overrides::default()
    };
    let plan = Plan::resolve(None, &overrides, &host()).unwrap();
    let got: Vec<(&str, EchoMode, &str)> = plan
        .echo
        .iter()
        .map(|e| (e.name.as_str(), e.mode, e.mode.kind()))
        .collect();
    let rr = EchoMode::RequestResponse {
        request: 100,
        response: 4096,
    };
    assert_eq!(
        got,
        vec![
            ("127.0.0.1:9000", EchoMode::Echo, "echo"),
            ("127.0.0.1:9001", EchoMode::Sink, "echo-sink"),
            ("[::1]:9001", EchoMode::Sink, "echo-sink"),
            ("127.0.0.1:9002", EchoMode::Source, "echo-source"),
            ("127.0.0.1:9003", rr, "echo-rr"),
            ("127.0.0.1:9004", rr, "echo-rr"),
        ]
    );
    assert!(plan.echo.iter().all(|e| e.proto == Proto::Tcp));
    let shown = plan.to_string();
    assert!(
        shown.contains(
            "listen = \"127.0.0.1:9003\"\nmode = \"rr\"\nrequest_size = 100\nresponse_size = 4096\n"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("listen = \"127.0.0.1:9001\"\nmode = \"sink\"\n"),
        "{shown}"
    );
}

#[test]
fn request_and_response_sizes_default_to_64_and_take_units() {
    let modes = |plan: Plan| plan.echo.into_iter().map(|e| e.mode).collect::<Vec<_>>();
    assert_eq!(
        modes(rr(None, None).unwrap()),
        vec![EchoMode::RequestResponse {
            request: 64,
            response: 64
        }]
    );
    assert_eq!(
        modes(rr(Some("1"), Some("16MiB")).unwrap()),
        vec![EchoMode::RequestResponse {
            request: 1,
            response: 16 << 20
        }]
    );
}

#[test]
fn bad_sizes_are_rejected_naming_the_flag() {
    let cases = [
        (Some("0"), None, "echo --request-size", "out of range"),
        (Some("16MiB1"), None, "echo --request-size", "not a size"),
        (
            None,
            Some("16777217"),
            "echo --response-size",
            "out of range",
        ),
        (None, Some("-5"), "echo --response-size", "not a size"),
        (Some("1.5KiB"), None, "echo --request-size", "fractions"),
        (None, Some("1TiB"), "echo --response-size", "16MiB"),
    ];
    for (request, response, key, needle) in cases {
        let err = rr(request, response).expect_err("expected a rejection");
        assert_eq!(err.key, key, "{err}");
        let text = err.to_string();
        assert!(text.starts_with(key), "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
}

#[test]
fn mode_addresses_are_checked_like_echo_addresses() {
    let bad = Overrides {
        echo_source: vec!["localhost:9002".into()],
        ..Overrides::default()
    };
    let err = Plan::resolve(None, &bad, &host()).unwrap_err();
    assert_eq!(err.key, "echo --tcp-source[0]", "{err}");
    // One address, two modes: the second is refused, naming the first.
    let twice = Overrides {
        echo: vec!["127.0.0.1:9000".into()],
        echo_rr: vec!["127.0.0.1:9000".into()],
        ..Overrides::default()
    };
    let err = Plan::resolve(None, &twice, &host()).unwrap_err();
    assert_eq!(err.key, "echo --tcp-rr[0]", "{err}");
    assert!(err.to_string().contains("echo --tcp[0]"), "{err}");
    // Port 0 asks for fresh ports: any number of them, of any mode.
    let fresh = Overrides {
        echo: vec!["127.0.0.1:0".into()],
        echo_sink: vec!["127.0.0.1:0".into()],
        echo_source: vec!["127.0.0.1:0".into(), "127.0.0.1:0".into()],
        echo_rr: vec!["127.0.0.1:0".into()],
        ..Overrides::default()
    };
    assert_eq!(Plan::resolve(None, &fresh, &host()).unwrap().echo.len(), 5);
}

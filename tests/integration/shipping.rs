//! What an operator and a packager rely on: the JSON application log, the
//! systemd readiness notifications, the signal summary in `--help`, the
//! generated completions and man page, and the deploy files (systemd unit,
//! Kubernetes manifests, seccomp profile) accepted by their own checkers.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, Proc, run_to_end, temp_path};

const SUBCOMMANDS: [&str; 7] = [
    "run",
    "check",
    "echo",
    "demo",
    "bench",
    "completions",
    "man",
];
/// After drain_timeout, how long the shards get to close before ringfwd
/// exits anyway (runtime's STOP_GRACE): a supervisor's stop timeout must
/// cover both.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The default `runtime.drain_timeout`, which the unit is written for.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
const SIGNALS: [&str; 6] = [
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` runs; if not, says why the test skips.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIP {test}: {tool} is not installed (.ci/run installs it)");
    }
    found
}

#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    let mut p = Proc::start(
        &[
            "--log-format",
            "json",
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
        1,
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "no exit");
    let log = p.log();
    assert!(log.lines().count() >= 3, "too few log lines:\n{log}");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nwhole log:\n{log}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(
            v["fields"]["message"].is_string(),
            "no fields.message: {line}"
        );
    }
    assert!(log.contains("draining"), "{log}");
}

/// The next datagram on `sock` that is not a STATUS line, within `deadline`.
fn next_state(sock: &UnixDatagram, deadline: Instant) -> String {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification before the deadline");
        sock.set_read_timeout(Some(left)).expect("timeout");
        let n = sock
            .recv(&mut buf)
            .expect("a notification before the deadline");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !msg.starts_with("STATUS=") {
            return msg;
        }
    }
}

#[test]
fn systemd_is_told_ready_once_serving_reloading_around_a_reload_and_stopping_at_drain() {
    let path = temp_path("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut p = Proc::start_with_env(
        &[("NOTIFY_SOCKET", path.as_os_str())],
        &["echo", "--tcp", "127.0.0.1:0", "--shards", "2"],
        1,
    );
    let ready = next_state(&sock, Instant::now() + Duration::from_secs(15));
    assert_eq!(ready, format!("READY=1\nMAINPID={}", p.pid()));
    p.signal(libc::SIGHUP);
    let reloading = next_state(&sock, Instant::now() + Duration::from_secs(15));
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let ready = next_state(&sock, Instant::now() + Duration::from_secs(15));
    assert!(ready.starts_with("READY=1"), "{ready}");
    p.signal(libc::SIGTERM);
    let stopping = next_state(&sock, Instant::now() + Duration::from_secs(15));
    assert_eq!(stopping, "STOPPING=1");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "no exit");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unreachable_notify_socket_is_logged_once_and_serving_goes_on() {
    let path = temp_path("nobody-listens.sock");
    let mut p = Proc::start_with_env(
        &[("NOTIFY_SOCKET", path.as_os_str())],
        &["echo", "--tcp", "127.0.0.1:0", "--shards", "1"],
        1,
    );
    p.wait_log("NOTIFY_SOCKET", Duration::from_secs(10));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "no exit");
    let log = p.log();
    assert_eq!(log.matches("NOTIFY_SOCKET").count(), 1, "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn run_help_and_readme_summarise_every_signal() {
    let (code, help, _) = run_to_end(&["run", "--help"]);
    assert_eq!(code, Some(0));
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let summary = readme
        .split("### Signals")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a \"### Signals\" section");
    for sig in SIGNALS {
        assert!(
            help.contains(sig),
            "run --help does not name {sig}:\n{help}"
        );
        assert!(
            summary.contains(sig),
            "README \"Signals\" does not name {sig}"
        );
    }
}

#[test]
fn bash_completions_parse_and_name_the_commands_and_options() {
    let (code, out, err) = run_to_end(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("run") && out.contains("--config"), "{out}");
    let file = temp_path("ringfwd.bash");
    std::fs::write(&file, &out).expect("write");
    let ok = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(ok.success(), "bash -n rejects the completion script");
    let _ = std::fs::remove_file(&file);
    for (shell, check) in [
        ("zsh", ["-n"].as_slice()),
        ("fish", ["--no-execute"].as_slice()),
    ] {
        let (code, out, err) = run_to_end(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(out.contains("--config"), "{shell}: {out}");
        if have(shell, "completions syntax check") {
            let file = temp_path(&format!("ringfwd.{shell}"));
            std::fs::write(&file, &out).expect("write");
            let ok = Command::new(shell)
                .args(check)
                .arg(&file)
                .status()
                .expect(shell);
            assert!(ok.success(), "{shell} rejects its completion script");
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = temp_path("man1");
    std::fs::create_dir_all(&dir).expect("dir");
    let (code, _, err) = run_to_end(&["man", "--dir", dir.to_str().expect("utf-8 temp path")]);
    assert_eq!(code, Some(0), "{err}");
    for sub in SUBCOMMANDS {
        let page = std::fs::read_to_string(dir.join(format!("ringfwd-{sub}.1")))
            .unwrap_or_else(|e| panic!("no page for {sub}: {e}"));
        assert!(
            page.contains(&format!(".TH ringfwd-{sub} 1")),
            "{sub}: {page}"
        );
    }
    let top = std::fs::read_to_string(dir.join("ringfwd.1")).expect("ringfwd.1");
    assert!(top.contains(".SH SIGNALS"), "{top}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_page_is_roff_naming_every_subcommand_and_signal() {
    let (code, out, err) = run_to_end(&["man"]);
    assert_eq!(code, Some(0), "{err}");
    // clap_mangen opens with two string definitions (.ie/.el), then the title.
    let first_macro = out
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap_or("");
    assert!(first_macro.starts_with(".TH ringfwd 1"), "{first_macro}");
    for sub in SUBCOMMANDS {
        assert!(
            out.contains(&format!("ringfwd\\-{sub}(1)")),
            "man page does not list the subcommand {sub}"
        );
    }
    let signals = out
        .split("\n.SH SIGNALS\n")
        .nth(1)
        .expect("the man page has a SIGNALS section");
    for sig in SIGNALS {
        assert!(
            signals.contains(sig),
            "the man page's SIGNALS does not name {sig}"
        );
    }
    if have("groff", "man page rendering") {
        let file = temp_path("ringfwd.1");
        std::fs::write(&file, &out).expect("write");
        let o = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file)
            .output()
            .expect("groff");
        let _ = std::fs::remove_file(&file);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// `deploy/ringfwd.service` with ExecStart pointing at the binary under test:
/// `systemd-analyze verify` checks that every command it names is executable.
fn unit_under_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(root().join("deploy/ringfwd.service")).expect("unit");
    let unit = unit.replace("/usr/local/bin/ringfwd", BIN);
    std::fs::create_dir_all(dir).expect("temp dir");
    let path = dir.join("ringfwd.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(root().join("deploy/ringfwd.service")).expect("unit");
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/ringfwd run --config /etc/ringfwd/ringfwd.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_IPC_LOCK",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    for key in ["LimitMEMLOCK=", "LimitNOFILE=", "TimeoutStopSec="] {
        assert!(
            unit.lines().any(|l| l.starts_with(key)),
            "the unit lacks {key}"
        );
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        Duration::from_secs(stop) > DEFAULT_DRAIN + STOP_GRACE,
        "TimeoutStopSec={stop}s would SIGKILL a drain of the default drain_timeout"
    );
    if let Some(filter) = unit.lines().find(|l| l.starts_with("SystemCallFilter=")) {
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(filter.contains(call), "{filter} does not allow {call}");
        }
    }
    if !have("systemd-analyze", "systemd unit verification") {
        return;
    }
    let dir = temp_path("unit");
    let path = unit_under_test(&dir);
    // Documentation=man:ringfwd(1) is checked too: give it the generated page.
    let man1 = dir.join("man/man1");
    std::fs::create_dir_all(&man1).expect("man dir");
    let (code, page, _) = run_to_end(&["man"]);
    assert_eq!(code, Some(0));
    std::fs::write(man1.join("ringfwd.1"), page).expect("write man page");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.join("man"))
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings (exit 0): any output is a failure.
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {}\n{err}",
        out.status
    );
}

/// The TOML of `deploy/kubernetes/configmap.yaml` (the block under
/// `ringfwd.toml: |`, indented by four spaces).
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml"))
        .expect("configmap.yaml");
    let block = yaml
        .split("ringfwd.toml: |\n")
        .nth(1)
        .expect("configmap.yaml has a ringfwd.toml block");
    block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_manifests_pass_the_schema_check_and_outlast_the_drain() {
    use ringfwd::config::{HostFacts, Overrides, Plan};
    let host = HostFacts {
        available_cpus: vec![0],
    };
    let toml = configmap_toml();
    let plan = Plan::resolve(
        Some(("configmap.yaml", &toml)),
        &Overrides::default(),
        &host,
    )
    .unwrap_or_else(|e| panic!("configmap.yaml's ringfwd.toml is invalid: {e}"));
    let ds = std::fs::read_to_string(root().join("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml");
    let grace: u64 = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("daemonset.yaml sets terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > plan.runtime.drain_timeout + STOP_GRACE,
        "terminationGracePeriodSeconds {grace} must exceed drain_timeout {:?} + {STOP_GRACE:?} for the shards to close",
        plan.runtime.drain_timeout
    );
    for needle in [
        "hostNetwork: true",
        "path: /ready",
        "path: /live",
        "type: Localhost",
        "preStop",
    ] {
        assert!(ds.contains(needle), "daemonset.yaml lacks {needle}");
    }
    if !have("kubernetes-validate", "Kubernetes schema check") {
        return;
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(root().join("deploy/kubernetes/configmap.yaml"))
        .arg(root().join("deploy/kubernetes/daemonset.yaml"))
        .output()
        .expect("kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn seccomp_profile_denies_by_default_and_allows_what_ringfwd_calls() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/seccomp/ringfwd.json"))
        .expect("seccomp/ringfwd.json");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("the profile is JSON");
    let default = profile["defaultAction"].as_str().expect("defaultAction");
    assert_ne!(
        default, "SCMP_ACT_ALLOW",
        "an allow-all profile filters nothing"
    );
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|rule| rule["names"].as_array().into_iter().flatten())
        .filter_map(|n| n.as_str())
        .collect();
    // `strace -f -c ringfwd run` of a config with TCP, UDP, health checks,
    // the admin endpoint and an access log, through USR1 and TERM.
    let observed = "accept4 access arch_prctl bind brk clone3 close connect eventfd2 execve \
        fcntl futex getpeername getpid getrandom getsockname getsockopt gettid io_uring_enter \
        io_uring_register io_uring_setup ioctl listen madvise mmap mprotect munmap newfstatat \
        openat pipe2 poll prctl pread64 prlimit64 read recvfrom recvmsg restart_syscall rseq \
        rt_sigaction rt_sigprocmask rt_sigtimedwait sched_getaffinity sched_setaffinity sendto \
        set_robust_list set_tid_address setsockopt shutdown sigaltstack socket statx write";
    // The preStop hook's `sh -c 'kill ...; sleep'` runs under the same profile.
    let pre_stop = "wait4 kill clock_nanosleep execve";
    for call in observed
        .split_whitespace()
        .chain(pre_stop.split_whitespace())
    {
        assert!(
            allowed.contains(&call),
            "the seccomp profile does not allow {call}"
        );
    }
}

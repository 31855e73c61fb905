//! ringfwd's entry point: parse the command line, build the validated plan,
//! dispatch, and map the outcome to an exit code. No logic lives here.

use std::process::ExitCode;

use clap::Parser;
use ringfwd::cli::{Cli, Command, LogFormat, PlanArgs};
use ringfwd::config::{HostFacts, Overrides, Plan};
use ringfwd::runtime::{self, exit};
use ringfwd::sys::host;
use ringfwd::sys::output::{self, LogWriter, Printed};

fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| {
            format!("--log-level {l:?} is not a level ({e}); use error, warn, info, debug or trace")
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A closed or full stderr must cost log lines, not the process: the
        // writer swallows (and counts) errors, and tracing-subscriber's own
        // report of a failed write would panic on that same broken stderr.
        .with_writer(LogWriter::stderr)
        .log_internal_errors(false)
        .with_target(false)
        .with_thread_names(true);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // No colour codes inside JSON strings, whatever stderr is.
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Echo listeners, for `ringfwd echo`: TCP and UDP echo, TCP sink, source and
/// request/response (with its sizes, raw).
#[derive(Clone, Default)]
struct EchoAddrs {
    tcp: Vec<String>,
    udp: Vec<String>,
    sink: Vec<String>,
    source: Vec<String>,
    rr: Vec<String>,
    request_size: Option<String>,
    response_size: Option<String>,
}

fn resolve(args: &PlanArgs, echo: EchoAddrs) -> Result<Plan, String> {
    let file = match &args.config {
        Some(path) => {
            let text = ringfwd::config::file::read(path).map_err(|e| e.to_string())?;
            Some((path.display().to_string(), text))
        }
        None => None,
    };
    let overrides = Overrides {
        shards: args.shards.shards,
        cpus: args.shards.cpus.clone(),
        busy_poll: args.shards.busy_poll.clone(),
        tcp: args.tcp.clone(),
        udp: args.udp.clone(),
        echo: echo.tcp,
        echo_udp: echo.udp,
        echo_sink: echo.sink,
        echo_source: echo.source,
        echo_rr: echo.rr,
        echo_request_size: echo.request_size,
        echo_response_size: echo.response_size,
    };
    let host = HostFacts {
        available_cpus: host::available_cpus(),
    };
    Plan::resolve(
        file.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        &overrides,
        &host,
    )
    .map_err(|e| e.to_string())
}

fn config_error(msg: &str) -> ExitCode {
    output::message(&format!("ringfwd: {msg}"));
    ExitCode::from(exit::CONFIG)
}

/// `ringfwd check`: the host checks `run` makes (binding every listener
/// included), then the plan on stdout. A reader that closes stdout early
/// (`check | head`) ends the command quietly with the check's own result; any
/// other write error is a failure (exit 1).
fn check(plan: &Plan) -> ExitCode {
    let report = match runtime::check(plan) {
        Ok(report) => report,
        Err(e) => {
            output::message(&format!("ringfwd: {e}"));
            return ExitCode::from(exit::HOST);
        }
    };
    for n in report.warnings.iter().chain(&report.notes) {
        output::message(&format!("ringfwd: note: {n}"));
    }
    match output::print(&plan.to_string()) {
        Printed::All | Printed::ReaderGone => ExitCode::from(exit::OK),
        Printed::Failed(e) => {
            output::message(&format!("ringfwd: cannot write the plan to stdout: {e}"));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `ringfwd completions` / `ringfwd man`: the generated text on stdout.
fn print_generated(text: std::io::Result<String>) -> ExitCode {
    let printed = text.map(|t| output::print(&t));
    match printed {
        Ok(Printed::All | Printed::ReaderGone) => ExitCode::from(exit::OK),
        Ok(Printed::Failed(e)) | Err(e) => {
            output::message(&format!("ringfwd: cannot write to stdout: {e}"));
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; only warnings and errors go to the log
    // unless asked otherwise.
    let level = match (&cli.command, cli.log_level.as_deref()) {
        (Command::Demo(_), None) if std::env::var_os("RUST_LOG").is_none() => Some("warn"),
        (_, l) => l,
    };
    if let Err(e) = init_logging(level, cli.log_format) {
        return config_error(&e);
    }
    match cli.command {
        Command::Run(args) => match resolve(&args, EchoAddrs::default()) {
            Ok(plan) => {
                let reread = || resolve(&args, EchoAddrs::default());
                ExitCode::from(runtime::serve(&plan, &reread))
            }
            Err(e) => config_error(&e),
        },
        Command::Check(args) => match resolve(&args, EchoAddrs::default()) {
            Ok(plan) => check(&plan),
            Err(e) => config_error(&e),
        },
        Command::Echo(args) => {
            let plan_args = PlanArgs {
                config: None,
                tcp: Vec::new(),
                udp: Vec::new(),
                shards: args.shards,
            };
            let echo = EchoAddrs {
                tcp: args.tcp,
                udp: args.udp,
                sink: args.tcp_sink,
                source: args.tcp_source,
                rr: args.tcp_rr,
                request_size: args.request_size,
                response_size: args.response_size,
            };
            match resolve(&plan_args, echo.clone()) {
                Ok(plan) => {
                    let reread = || resolve(&plan_args, echo.clone());
                    ExitCode::from(runtime::serve(&plan, &reread))
                }
                Err(e) => config_error(&e),
            }
        }
        Command::Demo(args) => ExitCode::from(ringfwd::demo::run(&args)),
        Command::Bench(args) => ExitCode::from(ringfwd::bench::run(&args)),
        Command::Completions(args) => print_generated(Ok(ringfwd::cli::completions(args.shell))),
        Command::Man(args) => match &args.dir {
            None => print_generated(ringfwd::cli::man_page()),
            Some(dir) => match ringfwd::cli::write_man_pages(dir) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    output::message(&format!("ringfwd: cannot write the man pages: {e}"));
                    ExitCode::from(exit::FAILURE)
                }
            },
        },
    }
}

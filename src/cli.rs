//! Command-line interface: clap definitions and their help text. Raw values are
//! turned into one validated `config::Plan` before anything runs.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ringfwd",
    version,
    about = "Thread-per-core io_uring TCP and UDP forwarder",
    long_about = "ringfwd forwards TCP streams and UDP datagrams on io_uring: one pinned shard per \
CPU, each with its own ring, SO_REUSEPORT listeners, provided buffers and UDP session maps.\n\nExit codes: 0 ok, 1 failure after start \
(or forced exit), 2 invalid configuration or usage, 3 host not ready (io_uring, limits, CPUs, \
address in use)."
)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Application log format on stderr: text (default) or json (one object per line, for a
    /// log collector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How the application log (stderr) is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: timestamp, level, fields.message, threadName.
    Json,
}

/// The signals `run` (and `echo`) act on, shown by `ringfwd run --help` and
/// the man page; README "Signals" says the same at length.
pub const SIGNALS_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  Drain: /ready turns 503, listeners close, open connections get up to
                   drain_timeout to finish, then exit 0. A second one exits at once (status 1).
  SIGQUIT          Drains as SIGTERM does (NGINX's graceful stop).
  SIGHUP           Reload the configuration file: validated as `ringfwd check` does; an invalid
                   file keeps the running configuration (logged, counted in reload_failed).
                   Under systemd: `systemctl reload ringfwd`.
  SIGUSR1          Reopen the access log ([log] access) after logrotate renamed it.
  SIGUSR2          Binary upgrade: start the binary at the same path with the same arguments,
                   hand it the listening sockets; once it is ready this process drains and exits.
  SIGPIPE          Ignored: a write to a closed socket or pipe fails with EPIPE instead.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Forward TCP connections and UDP datagrams (listeners from --config, --tcp and --udp).
    #[command(after_help = SIGNALS_HELP)]
    Run(PlanArgs),
    /// Validate the configuration and the host (binding every listener as run does), print the
    /// resolved plan; exit 0, 2 (configuration) or 3 (host) with the reason.
    Check(PlanArgs),
    /// Built-in upstream: echo every byte (TCP, half-close aware) or datagram (UDP) back, or
    /// serve as a TCP sink, source or request/response server for load tests.
    Echo(EchoArgs),
    /// Start an echo upstream and a forwarder on loopback, push a verified load through, report.
    Demo(DemoArgs),
    /// Load generator: request/response, connection-rate, stream and UDP loads with HDR latency.
    Bench(Box<BenchArgs>),
    /// Print a shell completion script to stdout, e.g.
    /// `ringfwd completions bash > /etc/bash_completion.d/ringfwd`.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout, e.g. `ringfwd man > /usr/local/share/man/man1/ringfwd.1`,
    /// or with --dir write it and one page per subcommand (ringfwd-run.1, ...) into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ringfwd.1 and a page per subcommand into DIR instead of ringfwd.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// Shells `ringfwd completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Add a TCP listener: LISTEN=UPSTREAM[,UPSTREAM...], e.g. 127.0.0.1:8080=127.0.0.1:9000,127.0.0.1:9001.
    #[arg(long = "tcp", value_name = "LISTEN=UPSTREAMS")]
    pub tcp: Vec<String>,

    /// Add a UDP listener: LISTEN=UPSTREAM[,UPSTREAM...], e.g. 127.0.0.1:5353=127.0.0.1:53.
    #[arg(long = "udp", value_name = "LISTEN=UPSTREAMS")]
    pub udp: Vec<String>,

    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Args)]
pub struct ShardArgs {
    /// Number of shards (default: one per CPU this process may use).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// CPUs to pin the shards to, comma-separated (default: the first N available).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,

    /// Spin on the completion queue this long (e.g. 50us) before sleeping, trading CPU for
    /// latency; "off" (default) never spins. Overrides runtime.busy_poll.
    #[arg(long, value_name = "DURATION")]
    pub busy_poll: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("addresses")
        .required(true)
        .multiple(true)
        .args(["tcp", "udp", "tcp_sink", "tcp_source", "tcp_rr"])
))]
pub struct EchoArgs {
    /// Echo TCP streams on this address (repeatable), e.g. 127.0.0.1:9000.
    #[arg(long = "tcp", value_name = "ADDR")]
    pub tcp: Vec<String>,

    /// Echo each UDP datagram back to its sender on this address (repeatable).
    #[arg(long = "udp", value_name = "ADDR")]
    pub udp: Vec<String>,

    /// TCP sink on this address (repeatable): discard every byte, answer the FIN with a FIN.
    #[arg(long = "tcp-sink", value_name = "ADDR")]
    pub tcp_sink: Vec<String>,

    /// TCP source on this address (repeatable): send the periodic verification pattern from
    /// accept on, until the client's FIN (answered with a FIN) or reset.
    #[arg(long = "tcp-source", value_name = "ADDR")]
    pub tcp_source: Vec<String>,

    /// TCP request/response server on this address (repeatable): for every --request-size
    /// bytes received, send the next --response-size bytes of the periodic pattern.
    #[arg(long = "tcp-rr", value_name = "ADDR")]
    pub tcp_rr: Vec<String>,

    /// Request size of every --tcp-rr listener, 1 to 16MiB, e.g. 64 or 4KiB [default: 64].
    #[arg(long, value_name = "BYTES", requires = "tcp_rr")]
    pub request_size: Option<String>,

    /// Response size of every --tcp-rr listener, 1 to 16MiB [default: 64].
    #[arg(long, value_name = "BYTES", requires = "tcp_rr")]
    pub response_size: Option<String>,

    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Concurrent verified streams (random sizes and write splits, half-closed).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub streams: usize,

    /// Largest stream, in bytes (sizes are random from 0 to this).
    #[arg(long, default_value_t = 2 << 20, value_name = "BYTES")]
    pub max_stream: usize,

    /// Measured time of each load (tcp-rr, tcp-stream, udp-rr), direct and through ringfwd; shared by its 3 interleaved runs.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub duration: String,

    /// Warmup before each load is measured; shared by its 3 interleaved runs.
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub warmup: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: BenchMode,
}

/// The load each bench mode offers. Every response is verified (content and
/// size), so a forwarder that corrupts data fails the run instead of looking fast.
#[derive(Debug, Subcommand)]
pub enum BenchMode {
    /// Requests and responses on long-lived connections (against `ringfwd echo --tcp`,
    /// or `--tcp-rr` when --response-size differs from --size).
    TcpRr(TcpRrArgs),
    /// Connect, send one request, read the response, close, repeat.
    TcpCrr(TcpCrrArgs),
    /// Bulk transfer: up (to `echo --tcp-sink`), down (from `echo --tcp-source`) or both (to `echo --tcp`).
    TcpStream(TcpStreamArgs),
    /// One datagram out, wait for its echo (`ringfwd echo --udp`), repeat; loss counted.
    UdpRr(UdpRrArgs),
    /// Datagrams offered as fast as possible (or at --rate); offered vs delivered.
    UdpStream(UdpStreamArgs),
}

#[derive(Debug, Args)]
pub struct BenchCommon {
    /// Address to load: a forwarder, or the upstream itself for a direct baseline.
    #[arg(long, value_name = "ADDR")]
    pub target: String,

    /// Measured time (after the warmup), e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub duration: String,

    /// Time the load runs before measuring starts.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub warmup: String,

    /// Open loop at this total rate (requests or datagrams per second, e.g. 20k/s); latency
    /// is measured from each request's intended send time (coordinated omission corrected).
    #[arg(long, value_name = "N/s")]
    pub rate: Option<String>,

    /// A connect, response or datagram later than this counts as a timeout.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub timeout: String,

    /// Write every figure and the exact settings as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Write the latency histogram as HdrHistogram's percentile distribution text (the table
    /// wrk2 prints and HdrHistogram's plotter reads), values in microseconds.
    #[arg(long, value_name = "FILE")]
    pub percentiles: Option<String>,

    /// Write the latency histogram as an HdrHistogram interval log (V2, compressed): one
    /// interval covering the measured window, values in nanoseconds.
    #[arg(long, value_name = "FILE")]
    pub histogram_log: Option<String>,

    #[command(flatten)]
    pub shards: ShardArgs,
}

/// Any protocol's bytes instead of the verified pattern.
#[derive(Debug, Args)]
pub struct PayloadArgs {
    /// Request bytes: TEXT with \r \n \t \\ \xHH escapes, or @FILE (raw bytes, up to 16MiB);
    /// needs --expect or --expect-size (they tell where a response ends).
    #[arg(long, value_name = "TEXT|@FILE", conflicts_with = "size")]
    pub payload: Option<String>,
    /// The exact response to every --payload request (TEXT with escapes, or @FILE); any other
    /// response is a verification error.
    #[arg(
        long,
        value_name = "TEXT|@FILE",
        requires = "payload",
        conflicts_with = "expect_size"
    )]
    pub expect: Option<String>,
    /// Every response to a --payload request is exactly this many bytes (content unchecked).
    #[arg(long, value_name = "BYTES", requires = "payload")]
    pub expect_size: Option<String>,
}

/// `--capacity`: search for the highest offered rate that meets the latency
/// objectives (tcp-rr, tcp-crr and udp-rr).
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Search for the highest open-loop rate at which every --slo holds, errors stay within
    /// --max-errors and the achieved rate is within 5% of the offered one: rates double from
    /// --start-rate until a step breaks, then bisect to 5%. Each step is a full run (--warmup,
    /// then --step-duration).
    #[arg(long, conflicts_with_all = ["rate", "duration"], requires = "slo")]
    pub capacity: bool,

    /// Latency objective PERCENTILE=LIMIT (repeatable), e.g. p99=1ms or p50=200us.
    #[arg(long, value_name = "pNN=DURATION", requires = "capacity")]
    pub slo: Vec<String>,

    /// Largest share of failed requests a step may have, e.g. 0.1% or 0 [default: 0.1%].
    #[arg(long, value_name = "RATIO", requires = "capacity")]
    pub max_errors: Option<String>,

    /// First rate offered [default: 1000/s].
    #[arg(long, value_name = "N/s", requires = "capacity")]
    pub start_rate: Option<String>,

    /// Highest rate offered; if it holds, the capacity is reported as at least this
    /// [default: 2M/s].
    #[arg(long, value_name = "N/s", requires = "capacity")]
    pub max_rate: Option<String>,

    /// Measured time of each step, after its --warmup [default: 3s].
    #[arg(long, value_name = "DURATION", requires = "capacity")]
    pub step_duration: Option<String>,

    /// Write the latency-against-offered-rate chart (SVG) to FILE [default: beside --json FILE,
    /// with the extension .svg].
    #[arg(long, value_name = "FILE", requires = "capacity")]
    pub chart: Option<String>,
}

#[derive(Debug, Args)]
pub struct TcpRrArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub connections: u64,
    /// Request size, e.g. 64 or 4KiB.
    #[arg(long, default_value = "64", value_name = "BYTES")]
    pub size: String,
    /// Response size (default: the request size, as an echo answers).
    #[arg(long, value_name = "BYTES")]
    pub response_size: Option<String>,
    /// Requests outstanding per connection.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pipeline: u32,
    #[command(flatten)]
    pub payload: PayloadArgs,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(Debug, Args)]
pub struct TcpCrrArgs {
    /// Connections in flight at once.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub connections: u64,
    /// Request size.
    #[arg(long, default_value = "64", value_name = "BYTES")]
    pub size: String,
    /// Response size (default: the request size).
    #[arg(long, value_name = "BYTES")]
    pub response_size: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(Debug, Args)]
pub struct TcpStreamArgs {
    /// Concurrent streams.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub connections: u64,
    /// up, down or both.
    #[arg(long, default_value = "both", value_name = "DIR")]
    pub direction: String,
    /// Bytes per write, 1 to 4MiB.
    #[arg(long, default_value = "256KiB", value_name = "BYTES")]
    pub size: String,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(Debug, Args)]
pub struct UdpRrArgs {
    /// Concurrent flows (one socket each).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub flows: u64,
    /// Datagram size (at least 24: each carries a flow, sequence and time header).
    #[arg(long, default_value = "64", value_name = "BYTES")]
    pub size: String,
    #[command(flatten)]
    pub payload: PayloadArgs,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub common: BenchCommon,
}

#[derive(Debug, Args)]
pub struct UdpStreamArgs {
    /// Concurrent flows (one socket each).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub flows: u64,
    /// Datagram size (at least 24).
    #[arg(long, default_value = "1200", value_name = "BYTES")]
    pub size: String,
    /// Sends in flight per flow.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub window: u32,
    #[command(flatten)]
    pub common: BenchCommon,
}

/// The completion script for `shell`, generated from these definitions.
pub fn completions(shell: CompletionShell) -> String {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ringfwd", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The command as the man pages show it: without clap's `help` subcommand,
/// which has no page of its own.
fn man_command() -> clap::Command {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `ringfwd man --dir DIR`: ringfwd.1 (as `man_page`) and one page per
/// subcommand, which ringfwd.1 refers to as ringfwd-run(1) and so on.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    clap_mangen::generate_to(man_command(), dir).map_err(named)?;
    std::fs::write(dir.join("ringfwd.1"), man_page()?).map_err(named)
}

/// The man page (roff), generated from these definitions, with the signal
/// summary as its own section: the top-level page lists the subcommands but
/// not their `after_help`.
pub fn man_page() -> std::io::Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(man_command()).render(&mut out)?;
    out.extend_from_slice(b".SH SIGNALS\n.nf\n");
    for line in SIGNALS_HELP.lines().skip(1) {
        // A roff line must not start with a control character.
        out.extend_from_slice(format!("\\&{}\n", line.replace('\\', "\\e")).as_bytes());
    }
    out.extend_from_slice(b".fi\n");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

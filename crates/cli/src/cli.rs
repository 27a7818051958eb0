//! Flags of `tidepool` and its subcommands; each subcommand calls one function.

use crate::{commands, up};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Tidepool: one scheduler for a shared fleet of CPU and GPU nodes.
#[derive(Parser, Debug)]
#[command(name = "tidepool", version, about, after_help = "Slurm's commands, with Slurm's options (each has --help):\n  sbatch   Submit a batch script\n  squeue   List queued and running jobs\n  scancel  Cancel jobs or array tasks\n  sacct    Report finished and running jobs\n  sinfo    List nodes\nRun them as `tidepool sbatch ...`, or through a link named like them (tasks find those on their PATH).")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane and a local agent in one process (SQLite in DATA_DIR).
    Up(UpArgs),
    /// Run the control plane alone.
    Server(ServerArgs),
    /// Run a node agent that dials out to a server.
    Agent(AgentArgs),
    /// Submit a job: `tidepool submit [OPTIONS] -- CMD [ARG...]`; prints the job id.
    Submit(Box<commands::SubmitArgs>),
    /// List jobs.
    Jobs(commands::JobsArgs),
    /// Show one job.
    Show(commands::ShowArgs),
    /// Cancel a job or one task (`JOB` or `JOB.INDEX`).
    Cancel(commands::CancelArgs),
    /// Print a task's output (`JOB.INDEX`).
    Logs(commands::LogsArgs),
    /// List nodes (with --identities: which project runs as what on which node).
    Nodes(commands::NodesArgs),
    /// The images each node (or NODE) holds unpacked (admin).
    Images {
        /// Only this node.
        node: Option<String>,
    },
    /// Drain a node: it finishes what it runs and takes nothing new.
    Drain {
        /// The node's name.
        node: String,
    },
    /// Put a drained node back into service.
    Resume {
        /// The node's name.
        node: String,
        /// Give only this failed GPU work again (until its health check fails it anew).
        #[arg(long)]
        gpu: Option<u32>,
    },
    /// Wait until a job ends; exit 0 only if every task succeeded.
    Wait(commands::WaitArgs),
    /// Projects: who pays, with quotas (admin).
    Project {
        #[command(subcommand)]
        action: ProjectAction,
    },
    /// A project's logins to private image registries.
    Registry {
        #[command(subcommand)]
        action: crate::registry::RegistryAction,
    },
    /// Project-scoped API tokens (admin).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Simulate a scenario or replay a log on the real scheduling core, on virtual time.
    Sim(crate::sim::SimArgs),
    /// Run the OpenAI-compatible inference gateway from a TOML file.
    Gateway(GatewayArgs),
    /// Run an emulated OpenAI-compatible replica with a batching model.
    ReplicaEmulator(EmulatorArgs),
}

/// `tidepool project ...`.
#[derive(Subcommand, Debug)]
pub enum ProjectAction {
    /// Create a project.
    Create {
        /// Its name.
        name: String,
        /// Guaranteed cores.
        #[arg(long)]
        quota: Option<u64>,
        /// Cores it may borrow beyond its quota.
        #[arg(long)]
        borrow: Option<u64>,
        /// Fair-share weight.
        #[arg(long)]
        share: Option<u32>,
        /// The user its tasks run as on every node: a uid, or a user name looked up here
        /// (whose primary group and groups then apply unless given); never root.
        #[arg(long)]
        uid: Option<String>,
        /// The group id its tasks run as (default: the uid, or the named user's group).
        #[arg(long)]
        gid: Option<u32>,
        /// Supplementary groups of its tasks, comma-separated ids (for shared storage).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
    },
    /// List projects.
    List,
}

/// `tidepool token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token for a project, or a join token for agents; prints it as the last line.
    Create {
        /// The project it acts for.
        #[arg(long, required_unless_present = "join", conflicts_with = "join")]
        project: Option<String>,
        /// A join token for agents (`tidepool agent --join-token`) instead.
        #[arg(long)]
        join: bool,
    },
    /// List tokens: id, kind, project, revoked (never the tokens themselves).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The id printed at creation (`tok_...`).
        id: String,
    },
}

/// Flags of `gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// The gateway's TOML file (replicas, tenants).
    #[arg(long)]
    pub config: PathBuf,
    /// Overrides the file's listen address.
    #[arg(long)]
    pub listen: Option<String>,
}

/// Flags of `replica-emulator`.
#[derive(Args, Debug)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Model name it serves.
    #[arg(long, default_value = "tidepool-demo")]
    pub model: String,
    /// Best batch size.
    #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(u32).range(1..))]
    pub best_concurrency: u32,
    /// Time between tokens at or below the best batch, ms.
    #[arg(long, default_value_t = 20.0)]
    pub itl_ms: f64,
    /// Prefill cost per prompt token, µs.
    #[arg(long, default_value_t = 100.0)]
    pub prefill_us_per_token: f64,
    /// Output tokens when a request sets no limit.
    #[arg(long, default_value_t = 16)]
    pub default_output_tokens: u32,
    /// A file holding the key every request must carry (the gateway's replica `api_key`).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
}


/// Flags shared by `up` and `server`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Where the journal, tokens and logs live.
    #[arg(long, default_value = "tidepool-data", env = "TIDEPOOL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// Largest array index accepted, plus one (Slurm's MaxArraySize).
    #[arg(long, default_value_t = 1_000_001, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_array_size: u32,
    /// A project's guaranteed cores, borrowing limit and fair-share weight:
    /// NAME=CORES[:BORROW[:SHARE]] (repeatable). Projects not named are unlimited.
    #[arg(long)]
    pub project: Vec<String>,
    /// Take a snapshot of the state every this many journaled events (restarts replay less).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Seconds a finished job stays in memory (Slurm's MinJobAge); after that the journal alone
    /// answers for it (show, sacct -j, logs), and passes and memory follow live work only.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub keep_finished: u64,
    /// Seconds an agent may stay silent before its node is lost and its tasks run elsewhere.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_lease: u64,
    /// Serve the API over TLS with this certificate chain (PEM; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client has to send a request's head before its connection is closed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Seconds a connection may stay without traffic either way before it is closed.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,
    /// Connections served at once; more are closed as they come.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// The largest request body, MiB (a bigger one is answered 413).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_body_mib: u64,
}

/// Flags of `up`.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Cores the local agent offers (default: all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// The local node's pool (Slurm's partition), as jobs name it with `-p`.
    #[arg(long, default_value = "local")]
    pub pool: String,
    /// Address of the inference gateway.
    #[arg(long, default_value = "127.0.0.1:7879")]
    pub gateway_listen: String,
    /// The gateway's TOML file; without it, two emulated replicas and a demo tenant.
    #[arg(long)]
    pub gateway_config: Option<PathBuf>,
    /// The CA (PEM) that signed --tls-cert, for the local agent to trust.
    #[arg(long, env = "TIDEPOOL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// On SIGINT/SIGTERM leave the local tasks running for the next start to re-attach to
    /// (default: stop them; they run again as new attempts at the next start).
    #[arg(long)]
    pub keep_tasks: bool,
}

/// Flags of `agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The server's URL.
    #[arg(long)]
    pub server: String,
    /// A file holding the join token (the server's DATA_DIR/join.token, or one from
    /// `tidepool token create --join`).
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// The join token itself; visible to every user of this machine in `ps` when given here,
    /// so prefer --join-token-file or the environment variable.
    #[arg(long, env = "TIDEPOOL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// On SIGINT/SIGTERM leave the tasks running for the next agent to re-attach to (default:
    /// stop them; the server runs them again as new attempts).
    #[arg(long)]
    pub keep_tasks: bool,
    /// A CA certificate (PEM) to trust for the server's TLS.
    #[arg(long, env = "TIDEPOOL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// `local` runs tasks here; `slurm` hands them to a Slurm cluster with sbatch (an overflow
    /// site: it gets only what local nodes cannot take; --cpus caps what is queued there).
    #[arg(long, default_value = "local", value_parser = ["local", "slurm"])]
    pub executor: String,
    /// Extra sbatch argument for the Slurm executor (repeatable), e.g. --sbatch-arg=--partition=debug.
    #[arg(long, allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// Where this agent keeps its attempt directories.
    #[arg(long, default_value = "tidepool-agent")]
    pub data_dir: PathBuf,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The node's pool.
    #[arg(long, default_value = "local")]
    pub pool: String,
    /// Cores offered (default: all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// GPUs offered, as indexes 0..N (default: those nvidia-smi lists, each model a feature
    /// such as gpu=h100; none where it does not answer).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub gpus: Option<u32>,
    /// A node feature (repeatable), e.g. rdma or gpu=h100; CPU features are detected.
    #[arg(long)]
    pub feature: Vec<String>,
    /// A named countable resource, NAME=COUNT (repeatable), e.g. fpga=2.
    #[arg(long)]
    pub resource: Vec<String>,
    /// The user (NAME or UID[:GID]) the operator's work runs as here: jobs submitted with the
    /// admin token to no project of the catalog. Without it (or --allow-root-tasks) this node
    /// runs only projects' tasks, each as its project's uid.
    #[arg(long)]
    pub admin_runs_as: Option<String>,
    /// Let the operator's work run as root here (off by default; projects never run as root).
    #[arg(long)]
    pub allow_root_tasks: bool,
    /// A shell command that checks one GPU (its index in TIDEPOOL_GPU): exit 0 when healthy,
    /// else its first line says why, and the GPU gets no task until it passes again.
    #[arg(long)]
    pub gpu_health_command: Option<String>,
    /// Seconds between GPU health checks.
    #[arg(long, default_value_t = 30)]
    pub gpu_health_every: u64,
    /// Keep at most this many GB of unpacked images; the least recently used go first, never
    /// one a task runs in (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub image_cache_gb: Option<u64>,
    /// Percent of the image cache's disk in use above which images are removed, least
    /// recently used first (as the kubelet's image garbage collection).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub image_gc_high_percent: u8,
    /// Percent of that disk in use that removal brings it down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_percent: u8,
    /// A registry (`HOST[:PORT]`) images may be pulled from (repeatable); when given, no other.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub allowed_registry: Vec<String>,
}

/// Parses `args` (program name first) and runs the command.
pub async fn run(args: Vec<String>) -> Result<u8, String> {
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return Ok(if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { 2 } else { 0 });
            }
            return Err(first_line_of(&e.render().to_string()));
        }
    };
    match cli.command {
        Command::Up(a) => up::up(a).await,
        Command::Server(a) => up::server(a).await,
        Command::Agent(a) => up::agent(a).await,
        Command::Submit(a) => commands::submit(*a).await,
        Command::Jobs(a) => commands::jobs(a).await,
        Command::Show(a) => commands::show(a).await,
        Command::Cancel(a) => commands::cancel(a).await,
        Command::Logs(a) => commands::logs(a).await,
        Command::Nodes(a) => commands::nodes(a).await,
        Command::Images { node } => commands::images(node.as_deref()).await,
        Command::Drain { node } => commands::drain(&node, true).await,
        Command::Resume { node, gpu: Some(gpu) } => commands::resume_gpu(&node, gpu).await,
        Command::Resume { node, gpu: None } => commands::drain(&node, false).await,
        Command::Wait(a) => commands::wait(a).await,
        Command::Sim(a) => crate::sim::run(a),
        Command::Project { action } => commands::project(action).await,
        Command::Token { action } => commands::token(action).await,
        Command::Registry { action } => crate::registry::registry(action).await,
        Command::Gateway(a) => up::gateway(a).await,
        Command::ReplicaEmulator(a) => up::replica_emulator(a).await,
    }
}

/// clap's message without its "error:" prefix and usage block, plus its tip if any.
fn first_line_of(rendered: &str) -> String {
    let mut lines = rendered.lines().filter(|l| !l.trim().is_empty());
    let mut first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
    if first.ends_with(':') {
        if let Some(next) = lines.next() {
            first = format!("{first} {}", next.trim());
        }
    }
    let tip = rendered.lines().find_map(|l| l.trim().strip_prefix("tip: ")).map(str::to_string);
    match tip {
        Some(tip) => format!("{first} ({tip})"),
        None => format!("{first} (see --help)"),
    }
}

//! The Slurm front: `sbatch`, `squeue`, `scancel`, `sacct`, `sinfo`, with Slurm's options,
//! `#SBATCH` directives, columns and state names, so scripts written for Slurm keep working.

use crate::client::Client;
use crate::commands::{absolute, current_dir, current_env, parse_target};
use crate::output::{iso_time, line};
use std::collections::BTreeMap;
use tidepool_api::{CancelRequest, CancelResponse, JobView, NodeView, SubmitRequest, SubmitResponse, TaskView};
use tidepool_core::resources::{format_elapsed, parse_mem_size};

/// Runs one of the Slurm commands with its arguments.
pub async fn run(command: &str, args: Vec<String>) -> Result<u8, String> {
    if asks_for_help(command, &args) {
        crate::output::line(usage(command).trim_end());
        return Ok(0);
    }
    match command {
        "sbatch" => sbatch(args).await,
        "squeue" => squeue(args).await,
        "scancel" => scancel(args).await,
        "sacct" => sacct(args).await,
        _ => sinfo(args).await,
    }
}

/// True when `--help` or `--usage` comes among the command's own options (for `sbatch`, before
/// the script, whose own arguments may be anything).
fn asks_for_help(command: &str, args: &[String]) -> bool {
    let own = args.iter().take_while(|a| command != "sbatch" || a.starts_with('-') || !std::path::Path::new(a.as_str()).is_file());
    own.take_while(|a| a.as_str() != "--").any(|a| a == "--help" || a == "--usage")
}

/// The usage of one of the Slurm commands, as Slurm's own `--help` lays it out.
fn usage(command: &str) -> String {
    let mut text = match command {
        "sbatch" => String::from("Usage: sbatch [OPTIONS(0)...] [ : [OPTIONS(N)...]] script(0) [args(0)...]\n\nOptions:\n"),
        "squeue" => String::from("Usage: squeue [OPTIONS]\n\nOptions:\n"),
        "scancel" => String::from("Usage: scancel [OPTIONS] [job_id[_array_id]...]\n\nJobs are named JOB or JOB_INDEX (JOB.INDEX also works).\n"),
        "sacct" => String::from("Usage: sacct [OPTIONS]\n\nOptions:\n"),
        _ => String::from("Usage: sinfo [OPTIONS]\n\nOptions:\n"),
    };
    let lines: Vec<String> = match command {
        "sbatch" => SBATCH_OPTIONS
            .iter()
            .map(|(long, short, takes)| {
                let short = short.map_or("    ".to_string(), |c| format!("-{c}, "));
                let value = match takes {
                    Takes::Value => "=VALUE",
                    Takes::OptionalValue => "[=VALUE]",
                    Takes::Flag => "",
                };
                let note = if NO_MEANING_HERE.contains(long) { "  (accepted; no effect on this fleet)" } else { "" };
                format!("  {short}--{long}{value}{note}")
            })
            .chain(["      --wrap=COMMAND runs COMMAND as a one-line script".to_string()])
            .collect(),
        "squeue" => ["-j, --jobs=LIST", "-t, --states=LIST", "-h, --noheader", "-u, --user, -A, --account, -p, --partition=NAME (accepted)", "--me, -a, --all, -l, --long, -r, --array (accepted)"]
            .iter()
            .map(|l| format!("  {l}"))
            .collect(),
        "sacct" => ["-j, --jobs=LIST", "-o, --format=FIELDS", "-n, --noheader", "-P, --parsable2", "-p, --parsable", "-X, -a, -b, -l (accepted)", "-S, -E, -u, -A, -s VALUE (accepted)"]
            .iter()
            .map(|l| format!("  {l}"))
            .collect(),
        "scancel" => Vec::new(),
        _ => ["-h, --noheader", "-N, --Node, -l, --long, -a, --all (accepted)"].iter().map(|l| format!("  {l}")).collect(),
    };
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str("\nThis is Tidepool's front for Slurm's command; `tidepool --help` lists its own commands.\n");
    text
}

/// How an sbatch option takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Value,
    Flag,
    OptionalValue,
}

/// sbatch's options: (long, short, takes).
const SBATCH_OPTIONS: &[(&str, Option<char>, Takes)] = &[
    ("job-name", Some('J'), Takes::Value),
    ("array", Some('a'), Takes::Value),
    ("cpus-per-task", Some('c'), Takes::Value),
    ("mem", None, Takes::Value),
    ("mem-per-cpu", None, Takes::Value),
    ("gres", None, Takes::Value),
    ("gpus", Some('G'), Takes::Value),
    ("gpus-per-node", None, Takes::Value),
    ("gpus-per-task", None, Takes::Value),
    ("time", Some('t'), Takes::Value),
    ("output", Some('o'), Takes::Value),
    ("error", Some('e'), Takes::Value),
    ("partition", Some('p'), Takes::Value),
    ("account", Some('A'), Takes::Value),
    ("chdir", Some('D'), Takes::Value),
    ("dependency", Some('d'), Takes::Value),
    ("wrap", None, Takes::Value),
    ("export", None, Takes::Value),
    ("parsable", None, Takes::Flag),
    ("nodes", Some('N'), Takes::Value),
    ("ntasks", Some('n'), Takes::Value),
    ("ntasks-per-node", None, Takes::Value),
    ("constraint", Some('C'), Takes::Value),
    ("qos", Some('q'), Takes::Value),
    ("requeue", None, Takes::Flag),
    ("no-requeue", None, Takes::Flag),
    ("signal", None, Takes::Value),
    ("open-mode", None, Takes::Value),
    ("exclusive", None, Takes::OptionalValue),
    ("mail-type", None, Takes::Value),
    ("mail-user", None, Takes::Value),
    ("comment", None, Takes::Value),
    ("nice", None, Takes::OptionalValue),
    ("quiet", Some('Q'), Takes::Flag),
    ("verbose", Some('v'), Takes::Flag),
    ("input", Some('i'), Takes::Value),
    ("hint", None, Takes::Value),
    ("threads-per-core", None, Takes::Value),
    ("distribution", Some('m'), Takes::Value),
    ("tmp", None, Takes::Value),
    ("kill-on-invalid-dep", None, Takes::Value),
    ("get-user-env", None, Takes::OptionalValue),
];

/// Options accepted that have no meaning on this fleet: one warning line each.
const NO_MEANING_HERE: &[&str] = &[
    "mail-type", "mail-user", "comment", "quiet", "verbose", "hint", "threads-per-core",
    "distribution", "tmp", "get-user-env", "nice", "requeue", "no-requeue", "signal", "kill-on-invalid-dep",
];

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unknown_option(name: &str) -> String {
    let bare = name.trim_start_matches('-');
    let best = SBATCH_OPTIONS
        .iter()
        .map(|(long, _, _)| (edit_distance(bare, long), *long))
        .min();
    match best {
        Some((d, long)) if d <= 3 || long.starts_with(bare) => {
            format!("unrecognized option '{name}' (did you mean '--{long}'?)")
        }
        _ => format!("unrecognized option '{name}'"),
    }
}

/// Splits a directive line like a shell would (quotes, backslashes), stopping at a `#`.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Parsed options: long name to values, in order, plus the arguments left over.
struct Parsed {
    options: Vec<(String, String)>,
    rest: Vec<String>,
}

/// Parses sbatch options from `args`; stops at the first non-option (the script).
fn parse_options(args: &[String], stop_at_positional: bool) -> Result<Parsed, String> {
    let mut options = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            return Ok(Parsed { options, rest: args[i + 1..].to_vec() });
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some((long, _, takes)) = SBATCH_OPTIONS.iter().find(|(l, _, _)| *l == name) else {
                return Err(unknown_option(&format!("--{name}")));
            };
            let value = match (takes, inline) {
                (Takes::Flag, Some(_)) => return Err(format!("option '--{long}' takes no value")),
                (Takes::Flag, None) | (Takes::OptionalValue, None) => String::new(),
                (_, Some(v)) => v,
                (Takes::Value, None) => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("option '--{long}' needs a value"))?
                }
            };
            options.push((long.to_string(), value));
        } else if arg.len() > 1 && arg.starts_with('-') {
            let short = arg[1..].chars().next().unwrap_or('-');
            let Some((long, _, takes)) = SBATCH_OPTIONS.iter().find(|(_, s, _)| *s == Some(short)) else {
                return Err(unknown_option(&format!("-{short}")));
            };
            let attached = &arg[1 + short.len_utf8()..];
            let value = match takes {
                Takes::Flag if !attached.is_empty() => return Err(format!("option '-{short}' takes no value")),
                Takes::Flag | Takes::OptionalValue => attached.to_string(),
                Takes::Value if !attached.is_empty() => attached.trim_start_matches('=').to_string(),
                Takes::Value => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("option '-{short}' needs a value"))?
                }
            };
            options.push((long.to_string(), value));
        } else if stop_at_positional {
            return Ok(Parsed { options, rest: args[i..].to_vec() });
        } else {
            return Err(format!("unexpected '{arg}' in an #SBATCH line"));
        }
        i += 1;
    }
    Ok(Parsed { options, rest: Vec::new() })
}

/// The `#SBATCH` directives of a script: those before its first command line.
fn directives(script: &str) -> Result<Vec<(String, String)>, String> {
    let mut options = Vec::new();
    for (n, raw) in script.lines().enumerate().skip(1) {
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        if !text.starts_with('#') {
            break;
        }
        let Some(body) = text.strip_prefix("#SBATCH") else { continue };
        if !body.starts_with(char::is_whitespace) {
            continue;
        }
        let words = split_words(body);
        let parsed = parse_options(&words, false).map_err(|e| format!("line {}: {e}", n + 1))?;
        options.extend(parsed.options);
    }
    Ok(options)
}

fn number(option: &str, value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("--{option}: '{value}' is not a whole number"))
}

/// Reads a `--gres` value: `gpu:N`, `gpu:TYPE:N`, comma lists.
fn gpus_from_gres(value: &str) -> Result<u32, String> {
    let mut total = 0;
    for item in value.split(',') {
        let parts: Vec<&str> = item.split(':').collect();
        match parts.as_slice() {
            ["gpu"] => total += 1,
            ["gpu", n] if n.parse::<u32>().is_ok() => total += n.parse::<u32>().unwrap_or(0),
            ["gpu", _model] => total += 1,
            ["gpu", _model, n] => total += number("gres", n)?,
            _ => return Err(format!("--gres: '{item}' is not understood here (use gpu:N or gpu:TYPE:N)")),
        }
    }
    Ok(total)
}

/// Reads `--dependency`: `afterok:ID[:ID...]`, several joined by `,`.
fn after_ok(value: &str) -> Result<Vec<u64>, String> {
    let mut ids = Vec::new();
    for item in value.split([',', '?']) {
        let mut parts = item.split(':');
        let kind = parts.next().unwrap_or("");
        if kind != "afterok" {
            return Err(format!("--dependency: '{kind}' is not supported here yet (only afterok:JOB)"));
        }
        for id in parts {
            let (job, _) = parse_target(id.split('+').next().unwrap_or(id))
                .map_err(|e| format!("--dependency: {e}"))?;
            ids.push(job);
        }
    }
    if ids.is_empty() {
        return Err("--dependency: no job named (example: afterok:12)".into());
    }
    Ok(ids)
}

/// Builds the submission from sbatch options (directives first, command line last wins).
fn build_request(options: &[(String, String)], script: String, warn: &mut Vec<String>) -> Result<(SubmitRequest, bool), String> {
    let mut o: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in options {
        o.insert(k.as_str(), v.as_str());
        if NO_MEANING_HERE.contains(&k.as_str()) && !warn.iter().any(|w| w.contains(&format!("--{k}"))) {
            warn.push(format!("sbatch: warning: --{k} has no effect on this fleet; ignored"));
        }
    }
    let nodes = match o.get("nodes") {
        Some(v) => {
            let first = v.split('-').next().unwrap_or(v);
            number("nodes", first)?
        }
        None => 1,
    };
    if nodes > 1 {
        return Err(format!(
            "--nodes={nodes}: a multi-node batch script needs srun inside its allocation, which Tidepool does not provide; start the ranks as a gang instead: tidepool submit --nodes {nodes} --tasks-per-node M -- PROGRAM"
        ));
    }
    let ntasks = match (o.get("ntasks"), o.get("ntasks-per-node")) {
        (Some(n), _) => number("ntasks", n)?,
        (None, Some(n)) => number("ntasks-per-node", n)?,
        (None, None) => 1,
    };
    if ntasks == 0 {
        return Err("--ntasks: must be at least 1".into());
    }
    let cpus_per_task = match o.get("cpus-per-task") {
        Some(c) => number("cpus-per-task", c)?,
        None => 1,
    };
    if cpus_per_task == 0 {
        return Err("--cpus-per-task: must be at least 1".into());
    }
    let cpus = cpus_per_task * ntasks;
    let mem = match (o.get("mem"), o.get("mem-per-cpu")) {
        (Some(m), _) => Some(m.to_string()),
        (None, Some(m)) => {
            let bytes = parse_mem_size(m).map_err(|e| format!("--mem-per-cpu: {e}"))?;
            Some(format!("{}K", bytes * u64::from(cpus) / 1024))
        }
        (None, None) => None,
    };
    let mut gpus = 0;
    if let Some(g) = o.get("gres") {
        gpus = gpus_from_gres(g)?;
    }
    if let Some(g) = o.get("gpus").or(o.get("gpus-per-node")) {
        gpus = number("gpus", g.rsplit(':').next().unwrap_or(g))?;
    }
    if let Some(g) = o.get("gpus-per-task") {
        gpus = number("gpus-per-task", g.rsplit(':').next().unwrap_or(g))? * ntasks;
    }
    let constraint: Vec<String> = match o.get("constraint") {
        Some(c) if c.contains(['|', '[', '*']) => {
            return Err(format!("--constraint={c}: only AND lists (a&b or a,b) are supported here"))
        }
        Some(c) => c.split(['&', ',']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
        None => vec![],
    };
    if o.contains_key("exclusive") {
        warn.push("sbatch: warning: --exclusive is not honoured yet; the job shares nodes".into());
    }
    if let Some(mode) = o.get("open-mode") {
        if *mode != "truncate" {
            warn.push(format!("sbatch: warning: --open-mode={mode} is not honoured yet; output is truncated"));
        }
    }
    if o.contains_key("input") {
        warn.push("sbatch: warning: --input is not honoured; standard input is /dev/null".into());
    }
    let tier = match o.get("qos") {
        Some(q) => match q.parse::<tidepool_core::Tier>() {
            Ok(t) => Some(t.name().to_string()),
            Err(_) => {
                warn.push(format!("sbatch: warning: --qos={q} is not a tier here; using batch"));
                None
            }
        },
        None => None,
    };
    let after = match o.get("dependency") {
        Some(d) if !d.is_empty() => after_ok(d)?,
        _ => vec![],
    };
    let workdir = match o.get("chdir") {
        Some(d) => absolute(d)?,
        None => current_dir()?,
    };
    let mut env = BTreeMap::new();
    let export = o.get("export").copied().unwrap_or("ALL");
    let items: Vec<&str> = export.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.iter().any(|i| i.eq_ignore_ascii_case("ALL")) {
        env = current_env();
    }
    if !items.iter().any(|i| i.eq_ignore_ascii_case("NONE")) {
        let here = current_env();
        for item in items.iter().filter(|i| !i.eq_ignore_ascii_case("ALL")) {
            match item.split_once('=') {
                Some((k, v)) => {
                    env.insert(k.to_string(), v.to_string());
                }
                None => {
                    if let Some(v) = here.get(*item) {
                        env.insert(item.to_string(), v.clone());
                    }
                }
            }
        }
    }
    if ntasks > 1 {
        env.insert("SLURM_NTASKS".into(), ntasks.to_string());
    }
    let req = SubmitRequest {
        name: o.get("job-name").map(|s| s.to_string()),
        command: vec![],
        script: Some(script),
        array: o.get("array").map(|s| s.to_string()),
        cpus: Some(cpus),
        mem,
        gpus: (gpus > 0).then_some(gpus),
        project: o.get("account").map(|s| s.to_string()),
        tier,
        time_limit: o.get("time").map(|s| s.to_string()),
        after,
        output: o.get("output").map(|s| s.to_string()),
        error: o.get("error").map(|s| s.to_string()),
        workdir: Some(workdir),
        env,
        pool: o.get("partition").map(|s| s.to_string()),
        constraint,
        resources: BTreeMap::new(),
        nodes: None,
        tasks_per_node: None,
        secret_env: BTreeMap::new(),
    };
    Ok((req, o.contains_key("parsable")))
}

async fn sbatch(args: Vec<String>) -> Result<u8, String> {
    let cli = parse_options(&args, true)?;
    let cli_has_wrap = cli.options.iter().any(|(k, _)| k == "wrap");
    let (script, script_name) = if let Some((_, wrap)) = cli.options.iter().find(|(k, _)| k == "wrap") {
        (format!("#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{wrap}\n"), "wrap".to_string())
    } else {
        match cli.rest.first() {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
                (text, path.clone())
            }
            None => {
                use std::io::Read;
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map_err(|e| format!("reading the script from standard input: {e}"))?;
                (text, "stdin".to_string())
            }
        }
    };
    if !script.starts_with("#!") {
        return Err("This does not look like a batch script. The first line must start with #! followed by the path to an interpreter.".into());
    }
    // Script arguments become positional parameters, as in `sbatch job.sh a b`.
    let script_args: Vec<String> = if cli_has_wrap { vec![] } else { cli.rest.iter().skip(1).cloned().collect() };
    let mut options = directives(&script)?;
    options.extend(cli.options);
    let mut warnings = Vec::new();
    let (mut req, parsable) = build_request(&options, script, &mut warnings)?;
    if req.name.is_none() {
        req.name = Some(script_name.rsplit('/').next().unwrap_or(&script_name).to_string());
    }
    if !script_args.is_empty() {
        let body = req.script.take().unwrap_or_default();
        let quoted: Vec<String> = script_args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
        req.script = Some(wrap_with_args(&body, &quoted.join(" ")));
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    let client = Client::from_env()?;
    let resp: SubmitResponse = client.post("/jobs", &req).await?;
    if parsable {
        line(&resp.job_id.to_string());
    } else {
        line(&format!("Submitted batch job {}", resp.job_id));
    }
    Ok(0)
}

/// A script that runs `body` with arguments: the body is kept as is under its interpreter, the
/// wrapper passes the arguments on.
fn wrap_with_args(body: &str, args: &str) -> String {
    let interpreter = body.lines().next().unwrap_or("#!/bin/sh").trim_start_matches("#!").trim();
    let marker = "TIDEPOOL_SCRIPT_END_7f3a";
    format!(
        "#!/bin/sh\ntmp=$(mktemp) || exit 1\ncat > \"$tmp\" <<'{marker}'\n{body}\n{marker}\nchmod +x \"$tmp\"\n{interpreter} \"$tmp\" {args}\nrc=$?\nrm -f \"$tmp\"\nexit $rc\n"
    )
}

fn slurm_state(state: &str) -> &'static str {
    match state {
        "pending" => "PENDING",
        "running" => "RUNNING",
        "succeeded" => "COMPLETED",
        "failed" => "FAILED",
        "cancelled" => "CANCELLED",
        "timeout" => "TIMEOUT",
        _ => "UNKNOWN",
    }
}

/// Elapsed time as squeue prints it: `0:05`, `12:34`, `1:02:03`, `2-01:02:03`.
fn squeue_time(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h) {
        (0, 0) => format!("{m}:{s:02}"),
        (0, h) => format!("{h}:{m:02}:{s:02}"),
        (d, h) => format!("{d}-{h:02}:{m:02}:{s:02}"),
    }
}

use tidepool_api::dates::now_ms;

fn fit(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// Walks `--opt=value`, `--opt value` and `-o value` arguments of squeue and sacct.
struct OptionReader<'a> {
    args: &'a [String],
    i: usize,
}

impl OptionReader<'_> {
    fn next_option(&mut self) -> Option<(String, Option<String>)> {
        let a = self.args.get(self.i)?;
        self.i += 1;
        Some(match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        })
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self.args.get(self.i).cloned().ok_or_else(|| format!("option '{name}' needs a value"))?;
        self.i += 1;
        Ok(v)
    }
}

async fn squeue(args: Vec<String>) -> Result<u8, String> {
    let mut jobs_filter: Option<Vec<u64>> = None;
    let mut header = true;
    let mut states: Option<Vec<String>> = None;
    let mut reader = OptionReader { args: &args, i: 0 };
    while let Some((name, inline)) = reader.next_option() {
        let mut value = || reader.value(&name, inline.clone());
        match name.as_str() {
            "-j" | "--jobs" => {
                let v = value()?;
                jobs_filter = Some(v.split(',').map(|t| parse_target(t).map(|(j, _)| j)).collect::<Result<_, _>>()?);
            }
            "-h" | "--noheader" => header = false,
            "-t" | "--states" => states = Some(value()?.split(',').map(|s| s.to_uppercase()).collect()),
            "-u" | "--user" | "-A" | "--account" | "-p" | "--partition" => {
                value()?;
            }
            "--me" | "-a" | "--all" | "-l" | "--long" | "-r" | "--array" => {}
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let client = Client::from_env()?;
    let jobs: Vec<JobView> = client.get("/jobs?active=true").await?;
    if header {
        line(&format!("{:>18} {:>9} {:>8} {:>8} {:>2} {:>10} {:>6} {}", "JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "NODES", "NODELIST(REASON)"));
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let now = now_ms();
    let want = |st: &str| states.as_ref().is_none_or(|s| s.iter().any(|x| x == st || x == slurm_state(if st == "PD" { "pending" } else { "running" })));
    for j in jobs {
        if jobs_filter.as_ref().is_some_and(|f| !f.contains(&j.id)) {
            continue;
        }
        let partition = j.pool.clone().unwrap_or_else(|| "local".into());
        for t in &j.tasks {
            if !want("R") {
                continue;
            }
            let id = if j.array.is_some() { format!("{}_{}", j.id, t.index) } else { j.id.to_string() };
            let elapsed = t.started_ms.map_or(0, |s| now.saturating_sub(s) / 1000);
            line(&format!(
                "{:>18} {:>9} {:>8} {:>8} {:>2} {:>10} {:>6} {}",
                id, fit(&partition, 9), fit(&j.name, 8), fit(&user, 8), "R", squeue_time(elapsed), 1,
                t.node.as_deref().unwrap_or("")
            ));
        }
        if j.counts.pending > 0 && want("PD") {
            let id = match &j.array {
                Some(spec) => {
                    let throttle = spec.split_once('%').map(|(_, t)| format!("%{t}")).unwrap_or_default();
                    format!("{}_[{}{}]", j.id, j.pending_indices, throttle)
                }
                None => j.id.to_string(),
            };
            let reason = j.pending_code.clone().unwrap_or_else(|| "Priority".into());
            line(&format!(
                "{:>18} {:>9} {:>8} {:>8} {:>2} {:>10} {:>6} ({})",
                id, fit(&partition, 9), fit(&j.name, 8), fit(&user, 8), "PD", "0:00", 1, reason
            ));
        }
    }
    Ok(0)
}

async fn scancel(args: Vec<String>) -> Result<u8, String> {
    let mut targets = Vec::new();
    for a in &args {
        if a.starts_with('-') {
            return Err(format!("unrecognized option '{a}'"));
        }
        targets.push(parse_target(a)?);
    }
    if targets.is_empty() {
        return Err("no job identification provided".into());
    }
    let client = Client::from_env()?;
    let mut code = 0;
    for (job_id, index) in targets {
        let r: Result<CancelResponse, String> = client.post(&format!("/jobs/{job_id}/cancel"), &CancelRequest { index }).await;
        if let Err(e) = r {
            eprintln!("scancel: error: Kill job error on job id {job_id}: {e}");
            code = 1;
        }
    }
    Ok(code)
}

/// The columns sacct shows when not told otherwise (Slurm's default, plus usage).
const SACCT_DEFAULT: &str = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode,TotalCPU,MaxRSS";

fn sacct_width(field: &str) -> usize {
    match field.to_ascii_lowercase().as_str() {
        "jobid" | "jobidraw" => 12,
        "exitcode" => 8,
        "start" | "end" | "submit" => 19,
        _ => 10,
    }
}

fn cpu_time(ms: u64) -> String {
    let (m, s, milli) = (ms / 60_000, ms / 1000 % 60, ms % 1000);
    if m >= 60 {
        format!("{}:{:02}:{:02}", m / 60, m % 60, s)
    } else {
        format!("{m:02}:{s:02}.{milli:03}")
    }
}

fn sacct_field(field: &str, j: &JobView, t: &TaskView) -> Result<String, String> {
    let elapsed = match (t.started_ms, t.ended_ms) {
        (Some(s), Some(e)) => format_elapsed(e.saturating_sub(s) / 1000),
        (Some(s), None) => format_elapsed(now_ms().saturating_sub(s) / 1000),
        _ => "00:00:00".into(),
    };
    Ok(match field.to_ascii_lowercase().as_str() {
        "jobid" => if j.array.is_some() { format!("{}_{}", j.id, t.index) } else { j.id.to_string() },
        "jobidraw" => j.id.to_string(),
        "jobname" => j.name.clone(),
        "partition" => j.pool.clone().unwrap_or_else(|| "local".into()),
        "account" => j.project.clone(),
        "alloccpus" | "reqcpus" | "ncpus" => format!("{}", j.cpus),
        "state" => slurm_state(&t.state).to_string(),
        "exitcode" => format!("{}:{}", t.exit_code.unwrap_or(0), t.signal.unwrap_or(0)),
        "totalcpu" => t.cpu_ms.map(cpu_time).unwrap_or_default(),
        "maxrss" => t.peak_mem_bytes.map(|b| format!("{}K", b / 1024)).unwrap_or_default(),
        "reqmem" => if j.mem_bytes > 0 { tidepool_core::resources::format_bytes(j.mem_bytes) } else { "0".into() },
        "elapsed" => elapsed,
        "start" => t.started_ms.map(iso_time).unwrap_or_else(|| "Unknown".into()),
        "end" => t.ended_ms.map(iso_time).unwrap_or_else(|| "Unknown".into()),
        "submit" => iso_time(j.submitted_ms),
        "nodelist" => t.node.clone().unwrap_or_else(|| "None assigned".into()),
        "timelimit" => j.time_limit_s.map(format_elapsed).unwrap_or_else(|| "UNLIMITED".into()),
        "user" => std::env::var("USER").unwrap_or_default(),
        "restarts" => t.attempt.saturating_sub(1).to_string(),
        other => return Err(format!("invalid field requested: '{other}'")),
    })
}

async fn sacct(args: Vec<String>) -> Result<u8, String> {
    let mut jobs_filter: Option<Vec<u64>> = None;
    let mut format = std::env::var("SACCT_FORMAT").unwrap_or_else(|_| SACCT_DEFAULT.to_string());
    let mut header = true;
    let mut delimiter: Option<(&str, bool)> = None;
    let mut reader = OptionReader { args: &args, i: 0 };
    while let Some((name, inline)) = reader.next_option() {
        let mut value = || reader.value(&name, inline.clone());
        match name.as_str() {
            "-j" | "--jobs" => {
                jobs_filter = Some(value()?.split(',').map(|t| parse_target(t).map(|(j, _)| j)).collect::<Result<_, _>>()?);
            }
            "-o" | "--format" => format = value()?,
            "-n" | "--noheader" => header = false,
            "-P" | "--parsable2" => delimiter = Some(("|", false)),
            "-p" | "--parsable" => delimiter = Some(("|", true)),
            "-X" | "--allocations" | "-a" | "--allusers" | "-b" | "--brief" | "-l" | "--long" => {}
            "-S" | "--starttime" | "-E" | "--endtime" | "-u" | "--user" | "-A" | "--accounts" | "-s" | "--state" => {
                value()?;
            }
            other if !other.starts_with('-') && jobs_filter.is_none() => {
                return Err(format!("unexpected argument '{other}' (use -j JOB)"));
            }
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let fields: Vec<(String, usize)> = format
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('%') {
            Some((name, w)) => (name.to_string(), w.parse().unwrap_or(sacct_width(name))),
            None => (f.to_string(), sacct_width(f)),
        })
        .collect();
    let client = Client::from_env()?;
    let ids: Vec<u64> = match jobs_filter {
        Some(ids) => ids,
        None => client.get::<Vec<JobView>>("/jobs").await?.into_iter().map(|j| j.id).collect(),
    };
    let render = |cells: Vec<String>| -> String {
        match delimiter {
            Some((d, trailing)) => {
                let mut s = cells.join(d);
                if trailing {
                    s.push_str(d);
                }
                s
            }
            None => cells
                .iter()
                .zip(&fields)
                .map(|(c, (name, w))| {
                    let c = fit(c, *w);
                    if name.eq_ignore_ascii_case("jobid") || name.eq_ignore_ascii_case("jobname") {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    // Validate the format before printing anything.
    let probe_job = JobView {
        id: 0, name: String::new(), project: String::new(), tier: String::new(), pool: None, state: String::new(),
        array: None, n_tasks: 0, counts: Default::default(), cpus: 0.0, mem_bytes: 0, gpus: 0, time_limit_s: None,
        submitted_ms: 0, ended_ms: None, pending_code: None, pending_reason: None, pending_indices: String::new(),
        command: vec![], workdir: String::new(), tasks: vec![],
    };
    let probe_task = TaskView { index: 0, state: String::new(), attempt: 0, node: None, started_ms: None, ended_ms: None, exit_code: None, signal: None, cpu_ms: None, peak_mem_bytes: None };
    for (f, _) in &fields {
        sacct_field(f, &probe_job, &probe_task)?;
    }
    if header {
        line(&render(fields.iter().map(|(f, _)| f.clone()).collect()));
        if delimiter.is_none() {
            line(&fields.iter().map(|(_, w)| "-".repeat(*w)).collect::<Vec<_>>().join(" "));
        }
    }
    for id in ids {
        let j: JobView = client.get(&format!("/jobs/{id}?tasks=true")).await?;
        for t in &j.tasks {
            let cells = fields.iter().map(|(f, _)| sacct_field(f, &j, t)).collect::<Result<Vec<_>, _>>()?;
            line(&render(cells));
        }
    }
    Ok(0)
}

async fn sinfo(args: Vec<String>) -> Result<u8, String> {
    let mut header = true;
    for a in &args {
        match a.as_str() {
            "-h" | "--noheader" => header = false,
            "-N" | "--Node" | "-l" | "--long" | "-a" | "--all" => {}
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let client = Client::from_env()?;
    let nodes: Vec<NodeView> = client.get("/nodes").await?;
    if header {
        line(&format!("{:<9} {:>5} {:>10} {:>6} {:>5} {}", "PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"));
    }
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in nodes {
        let state = match n.state.as_str() {
            "allocated" => "alloc",
            "mixed" => "mix",
            "down" => "down",
            "draining" => "drng",
            "drained" => "drain",
            _ => "idle",
        };
        groups.entry((n.pool.clone(), state.to_string())).or_default().push(n.name);
    }
    let first_pool = groups.keys().next().map(|(p, _)| p.clone());
    for ((pool, state), names) in groups {
        let mark = if Some(&pool) == first_pool.as_ref() { "*" } else { "" };
        line(&format!("{:<9} {:>5} {:>10} {:>6} {:>5} {}", format!("{pool}{mark}"), "up", "infinite", names.len(), state, names.join(",")));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(script: &str) -> Result<Vec<(String, String)>, String> {
        directives(script)
    }

    #[test]
    fn directives_in_every_spelling() {
        let script = "#!/bin/bash\n#SBATCH --job-name=sim -c 4\n\n#SBATCH --array 1-20%4   # twenty\n#SBATCH -o out_%A_%a.txt\n# plain comment\n#SBATCH --mail-type=END --mail-user=a@b\necho hi\n#SBATCH --mem=1G\n";
        let o = opts(script).unwrap();
        let names: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["job-name", "cpus-per-task", "array", "output", "mail-type", "mail-user"]);
        assert_eq!(o[2].1, "1-20%4");
        assert_eq!(o[3].1, "out_%A_%a.txt");
    }

    #[test]
    fn misspelt_options_get_a_suggestion() {
        let err = opts("#!/bin/sh\n#SBATCH --cpus-per-tsk=2\n").unwrap_err();
        assert!(err.contains("--cpus-per-task"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse_options(&["--arary=1-3".into()], true).err().unwrap();
        assert!(err.contains("did you mean '--array'"), "{err}");
    }

    #[test]
    fn requests_map_slurm_semantics() {
        let options: Vec<(String, String)> = [
            ("ntasks", "2"), ("cpus-per-task", "3"), ("mem-per-cpu", "1G"), ("gres", "gpu:a100:2"),
            ("dependency", "afterok:7:8"), ("partition", "local"), ("account", "chem"), ("time", "1:00:00"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut warn = vec![];
        let (req, parsable) = build_request(&options, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert!(!parsable);
        assert_eq!(req.cpus, Some(6));
        assert_eq!(req.mem.as_deref(), Some("6291456K"));
        assert_eq!(req.gpus, Some(2));
        assert_eq!(req.after, vec![7, 8]);
        assert_eq!(req.pool.as_deref(), Some("local"));
        let gang = vec![("nodes".to_string(), "2".to_string())];
        assert!(build_request(&gang, "#!/bin/sh\n".into(), &mut warn).unwrap_err().contains("multi-node"));
        let mail = vec![("mail-type".to_string(), "ALL".to_string())];
        let mut warn = vec![];
        build_request(&mail, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert_eq!(warn.len(), 1);
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words(" -J 'a b' --x=\"c d\" # note"), vec!["-J", "a b", "--x=c d"]);
    }
}

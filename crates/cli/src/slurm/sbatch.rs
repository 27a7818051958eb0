//! `sbatch`: Slurm's options on the command line and in `#SBATCH` directives (with a suggestion
//! for a misspelt one), read into a `SubmitRequest` with Slurm's meaning.

use super::*;

/// How an sbatch option takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Takes {
    Value,
    Flag,
    OptionalValue,
}

/// sbatch's options: (long, short, takes).
pub(super) const SBATCH_OPTIONS: &[(&str, Option<char>, Takes)] = &[
    ("job-name", Some('J'), Takes::Value),
    ("array", Some('a'), Takes::Value),
    ("cpus-per-task", Some('c'), Takes::Value),
    ("mem", None, Takes::Value),
    ("mem-per-cpu", None, Takes::Value),
    ("gres", None, Takes::Value),
    ("gpus", Some('G'), Takes::Value),
    ("container-image", None, Takes::Value),
    ("container-mounts", None, Takes::Value),
    ("container-workdir", None, Takes::Value),
    ("container-env", None, Takes::Value),
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
    ("test-only", None, Takes::Flag),
    ("nodes", Some('N'), Takes::Value),
    ("ntasks", Some('n'), Takes::Value),
    ("ntasks-per-node", None, Takes::Value),
    ("tasks-per-node", None, Takes::Value),
    ("gpu-bind", None, Takes::Value),
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
pub(super) const NO_MEANING_HERE: &[&str] = &[
    "mail-type", "mail-user", "comment", "quiet", "verbose", "hint", "threads-per-core",
    "distribution", "tmp", "get-user-env", "nice",
    "gpu-bind",
];

/// Slurm's other names for an option: (alias, the name this parser files it under).
const ALIASES: &[(&str, &str)] = &[("tasks-per-node", "ntasks-per-node")];

fn canonical(name: &str) -> &str {
    ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, canonical)| canonical)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
            options.push((canonical(long).to_string(), value));
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
            options.push((canonical(long).to_string(), value));
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
    if nodes == 0 {
        return Err("--nodes: must be at least 1".into());
    }
    // The allocation's tasks: -n, else --ntasks-per-node on each node, else one per node.
    let ntasks = match (o.get("ntasks"), o.get("ntasks-per-node")) {
        (Some(n), _) => number("ntasks", n)?,
        (None, Some(n)) => number("ntasks-per-node", n)?.saturating_mul(nodes),
        (None, None) => nodes,
    };
    if ntasks != 0 && ntasks < nodes {
        return Err(format!("--ntasks={ntasks} is fewer than --nodes={nodes}: each node of an allocation runs at least one task"));
    }
    // Each node's share holds the most tasks any node runs.
    let tasks_per_node = match o.get("ntasks-per-node") {
        Some(n) => number("ntasks-per-node", n)?,
        None => ntasks.div_ceil(nodes.max(1)),
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
    // What one node's share holds (memory, GPUs and cores are per node in Slurm).
    let tasks_here = if nodes > 1 { tasks_per_node } else { ntasks };
    let cpus = cpus_per_task * tasks_here;
    let ntasks_given = o.contains_key("ntasks") || o.contains_key("ntasks-per-node");
    let mem_per_cpu = o.get("mem-per-cpu").map(|m| parse_mem_size(m).map_err(|e| format!("--mem-per-cpu: {e}"))).transpose()?;
    let mem = match (o.get("mem"), mem_per_cpu) {
        (Some(m), _) => Some(m.to_string()),
        (None, Some(bytes)) => Some(format!("{}K", bytes * u64::from(cpus) / 1024)),
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
        gpus = number("gpus-per-task", g.rsplit(':').next().unwrap_or(g))? * tasks_here;
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
    let open_mode = match o.get("open-mode").copied() {
        None => None,
        Some(mode @ ("append" | "truncate")) => Some(mode.to_string()),
        Some(other) => return Err(format!("--open-mode={other}: use append or truncate")),
    };
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
    // The server reads the dependency (every Slurm type, ',' and '?', +minutes, singleton).
    let dependency = o.get("dependency").filter(|d| !d.is_empty()).map(|d| d.to_string());
    let kill_on_invalid_dep = match o.get("kill-on-invalid-dep").copied() {
        None | Some("no") => false,
        Some("yes") => true,
        Some(other) => return Err(format!("--kill-on-invalid-dep={other}: use yes or no")),
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
    if let Some(typed) = o.get("export") {
        env.insert("SLURM_EXPORT_ENV".into(), typed.to_string());
    }
    if !items.iter().any(|i| i.eq_ignore_ascii_case("ALL")) {
        // As Slurm's: the node gives the script its user's login variables (HOME, USER, LOGNAME,
        // SHELL) from the user database of the identity it runs as.
        env.insert("SLURM_GET_USER_ENV".into(), "1".into());
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
    env.insert("SLURM_SUBMIT_HOST".into(), crate::up::host_name());
    // What Slurm's sbatch itself passes on of the options it was given.
    if let Some(n) = o.get("ntasks-per-node") {
        env.insert("SLURM_NTASKS_PER_NODE".into(), n.to_string());
    }
    if let Some(bytes) = mem_per_cpu {
        env.insert("SLURM_MEM_PER_CPU".into(), (bytes >> 20).to_string());
    }

    let req = SubmitRequest {
        name: o.get("job-name").map(|s| s.to_string()),
        command: vec![],
        script: Some(script),
        array: o.get("array").map(|s| s.to_string()),
        // Without -c, the server gives one core per task, and the script is not told a count.
        cpus: o.contains_key("cpus-per-task").then_some(cpus),
        mem,
        gpus: (gpus > 0).then_some(gpus),
        project: o.get("account").map(|s| s.to_string()),
        tier,
        time_limit: o.get("time").map(|s| s.to_string()),
        after: vec![],
        dependency,
        kill_on_invalid_dep,
        output: o.get("output").map(|s| s.to_string()),
        error: o.get("error").map(|s| s.to_string()),
        workdir: Some(workdir),
        env,
        pool: o.get("partition").map(|s| s.to_string()),
        constraint,
        resources: BTreeMap::new(),
        nodes: (nodes > 1).then_some(nodes),
        tasks_per_node: (nodes > 1).then_some(tasks_per_node),
        ntasks: ntasks_given.then_some(ntasks),
        secret_env: BTreeMap::new(),
        // pyxis's options: the batch script runs in the image.
        image: o.get("container-image").map(|s| s.to_string()),
        container_mounts: o.get("container-mounts").map(|m| m.split(',').map(str::to_string).collect()).unwrap_or_default(),
        container_workdir: o.get("container-workdir").map(|s| s.to_string()),
        shm_size: None,
        network: None,
        container_env: o.get("container-env").map(|m| m.split(',').map(str::to_string).collect()).unwrap_or_default(),
        open_mode,
        signal: o.get("signal").map(|s| s.to_string()),
        // The later of the two wins, as Slurm reads its options.
        requeue: options.iter().rev().find_map(|(k, _)| match k.as_str() {
            "requeue" => Some(true),
            "no-requeue" => Some(false),
            _ => None,
        }),
    };
    Ok((req, o.contains_key("parsable")))
}

pub(super) async fn sbatch(args: Vec<String>) -> Result<u8, String> {
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
    if options.iter().any(|(k, _)| k == "test-only") {
        // As Slurm's: where and when it would start, on standard error; nothing submitted.
        let trial: tidepool_api::TrialAnswer = client.post("/jobs/test", &req).await?;
        let when = trial.start_ms.map_or_else(|| "an unknown time".to_string(), |ms| tidepool_api::dates::iso_time(ms / 1000));
        let nodes = if trial.nodes.is_empty() { String::new() } else { format!(" on nodes {}", trial.nodes.join(",")) };
        let pool = trial.pool.map_or_else(String::new, |p| format!(" in partition {p}"));
        let wait = trial.pending_reason.map_or_else(String::new, |r| format!(" (it would wait: {r})"));
        eprintln!("sbatch: Job {} to start at {when} using {} processors{nodes}{pool}{wait}", trial.job_id, trial.cpus);
        return Ok(0);
    }
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
        assert_eq!(req.dependency.as_deref(), Some("afterok:7:8"));
        assert_eq!(req.pool.as_deref(), Some("local"));
        assert_eq!(req.env.get("SLURM_MEM_PER_CPU").map(String::as_str), Some("1024"), "told per core, as asked");
        // Two nodes of 4 tasks: one share per node holding 4 tasks' cores and memory.
        let two = [("nodes", "2"), ("ntasks-per-node", "4"), ("cpus-per-task", "2"), ("mem", "1G")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let (req, _) = build_request(&two, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert_eq!((req.nodes, req.tasks_per_node, req.ntasks, req.cpus), (Some(2), Some(4), Some(8), Some(8)));
        let odd = [("nodes", "2"), ("ntasks", "5")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let (req, _) = build_request(&odd, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert_eq!((req.tasks_per_node, req.ntasks, req.cpus), (Some(3), Some(5), None), "the busier node's share; one core per task by default");
        let thin = [("nodes", "3"), ("ntasks", "2")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert!(build_request(&thin, "#!/bin/sh\n".into(), &mut warn).unwrap_err().contains("fewer than --nodes"));
        let both = [("requeue", ""), ("no-requeue", "")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(build_request(&both, "#!/bin/sh\n".into(), &mut warn).unwrap().0.requeue, Some(false), "the later wins");
        let mail = vec![("mail-type".to_string(), "ALL".to_string())];
        let mut warn = vec![];
        build_request(&mail, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert_eq!(warn.len(), 1);
    }

    #[test]
    fn slurm_aliases_and_export_none_behave_as_slurm() {
        let o = opts("#!/bin/sh\n#SBATCH --tasks-per-node=4 --gpu-bind=closest\n").unwrap();
        assert_eq!(o[0], ("ntasks-per-node".to_string(), "4".to_string()), "an alias is filed under Slurm's main name");
        let mut warn = vec![];
        let (req, _) = build_request(&o, "#!/bin/sh\n".into(), &mut warn).unwrap();
        assert_eq!(req.ntasks, Some(4));
        assert!(warn.iter().any(|w| w.contains("--gpu-bind")), "{warn:?}");
        let none = vec![("export".to_string(), "NONE".to_string())];
        let (req, _) = build_request(&none, "#!/bin/sh\n".into(), &mut warn).unwrap();
        // The node gives the login variables of the identity the task runs as (SLURM_GET_USER_ENV).
        assert_eq!(req.env.get("SLURM_GET_USER_ENV").map(String::as_str), Some("1"));
        assert_eq!(req.env.get("SLURM_EXPORT_ENV").map(String::as_str), Some("NONE"));
        assert!(!req.env.contains_key("HOME") && !req.env.contains_key("PWD"), "nothing of the submitter's");
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words(" -J 'a b' --x=\"c d\" # note"), vec!["-J", "a b", "--x=c d"]);
    }
}

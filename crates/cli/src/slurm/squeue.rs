//! `squeue`: one row per running task and one per job's pending tasks, in Slurm's default
//! columns or in the fields `-o/--format` names (`%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R`) or
//! `-O/--Format` lists (`JobID:10,Name,State`).

use super::{fit, parse_target, slurm_state, squeue_time, OptionReader};
use crate::client::Client;
use crate::output::line;
use tidepool_api::dates::now_ms;
use tidepool_api::JobView;

/// Slurm's default format, which the plain listing follows.
const DEFAULT_FORMAT: &str = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R";

/// One line of squeue.
struct Row {
    id: String,
    array_job: String,
    array_task: String,
    partition: String,
    name: String,
    user: String,
    account: String,
    short_state: &'static str,
    state: &'static str,
    time: String,
    time_limit: String,
    cpus: String,
    nodelist: String,
    reason: String,
}

impl Row {
    fn field(&self, code: char) -> Result<String, String> {
        Ok(match code {
            'i' => self.id.clone(),
            'A' => self.array_job.clone(),
            'K' => self.array_task.clone(),
            'P' => self.partition.clone(),
            'j' => self.name.clone(),
            'u' => self.user.clone(),
            'a' => self.account.clone(),
            't' => self.short_state.to_string(),
            'T' => self.state.to_string(),
            'M' => self.time.clone(),
            'l' => self.time_limit.clone(),
            'C' => self.cpus.clone(),
            'D' => "1".to_string(),
            'N' => self.nodelist.clone(),
            'r' => self.reason.clone(),
            'R' => if self.short_state == "PD" { format!("({})", self.reason) } else { self.nodelist.clone() },
            other => return Err(format!("squeue: error: unknown format field '%{other}'")),
        })
    }

    fn header(code: char) -> &'static str {
        match code {
            'i' => "JOBID",
            'A' => "ARRAY_JOB_ID",
            'K' => "ARRAY_TASK_ID",
            'P' => "PARTITION",
            'j' => "NAME",
            'u' => "USER",
            'a' => "ACCOUNT",
            't' => "ST",
            'T' => "STATE",
            'M' => "TIME",
            'l' => "TIME_LIMIT",
            'C' => "CPUS",
            'D' => "NODES",
            'N' => "NODELIST",
            'r' => "REASON",
            _ => "NODELIST(REASON)",
        }
    }
}

/// A format's pieces: literal text, or a field with its width and whether it is right-justified
/// (`%.10M`) or left (`%10M`, `%M`).
enum Piece {
    Text(String),
    Field { code: char, width: Option<usize>, right: bool },
}

/// `-O/--Format`'s field names and the `-o` letters they stand for.
const LONG_FIELDS: &[(&str, char)] = &[
    ("jobid", 'i'), ("arrayjobid", 'A'), ("arraytaskid", 'K'), ("partition", 'P'), ("name", 'j'), ("username", 'u'),
    ("account", 'a'), ("statecompact", 't'), ("state", 'T'), ("timeused", 'M'), ("timelimit", 'l'), ("numcpus", 'C'),
    ("numnodes", 'D'), ("nodelist", 'N'), ("reason", 'r'), ("reasonlist", 'R'),
];

/// Reads `-O/--Format` (`JobID:10,Name,State:.8`): each field padded to its width (20 unless
/// given after `:`, right-justified after `:.`), as Slurm prints them, one after the other.
fn parse_long_format(format: &str) -> Result<Vec<Piece>, String> {
    format
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|item| {
            let (name, size) = item.split_once(':').unwrap_or((item, ""));
            let code = LONG_FIELDS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, c)| *c)
                .ok_or_else(|| format!("squeue: error: Invalid job format specification: {name}"))?;
            let right = size.starts_with('.');
            let width = match size.trim_start_matches('.') {
                "" => 20,
                w => w.parse::<usize>().ok().filter(|w| *w <= 1000).ok_or_else(|| format!("squeue: error: '{item}': the width is not a number"))?,
            };
            Ok(Piece::Field { code, width: Some(width), right })
        })
        .collect()
}

fn parse_format(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut chars = format.chars().peekable();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            text.push('%');
            continue;
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        let right = chars.peek() == Some(&'.');
        if right {
            chars.next();
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let code = chars.next().ok_or("squeue: error: the format ends in a '%'")?;
        let width = digits.parse::<usize>().ok().filter(|w| *w <= 1000);
        pieces.push(Piece::Field { code, width, right });
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// One line of a format: each field cut to its width and padded, as Slurm prints them.
fn render(pieces: &[Piece], field: impl Fn(char) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field { code, width, right } => {
                let value = field(*code)?;
                match width {
                    Some(w) => {
                        let value = fit(&value, *w);
                        if *right {
                            out.push_str(&format!("{value:>w$}"));
                        } else {
                            out.push_str(&format!("{value:<w$}"));
                        }
                    }
                    None => out.push_str(&value),
                }
            }
        }
    }
    Ok(out)
}

/// The rows of `jobs`; `pool_of` names a node's pool (a running task's partition), `fleet_pool`
/// the one pool of the fleet if it has only one (where a job that named none will run).
fn rows(jobs: &[JobView], user: &str, pool_of: &dyn Fn(&str) -> Option<String>, fleet_pool: Option<&str>) -> Vec<Row> {
    let now = now_ms();
    let mut rows = Vec::new();
    for j in jobs {
        let partition = j.pool.clone().or_else(|| fleet_pool.map(str::to_string)).unwrap_or_else(|| "(any)".into());
        let time_limit = j.time_limit_s.map_or_else(|| "UNLIMITED".to_string(), squeue_time);
        let base = |id: String, array_task: String, st: &'static str, state: &'static str| Row {
            id,
            array_job: j.id.to_string(),
            array_task,
            partition: partition.clone(),
            name: j.name.clone(),
            user: user.to_string(),
            account: j.project.clone(),
            short_state: st,
            state,
            time: "0:00".into(),
            time_limit: time_limit.clone(),
            cpus: format!("{}", j.cpus.ceil() as u64),
            nodelist: String::new(),
            reason: String::new(),
        };
        for t in &j.tasks {
            let id = if j.array.is_some() { format!("{}_{}", j.id, t.index) } else { j.id.to_string() };
            let task = if j.array.is_some() { t.index.to_string() } else { "N/A".into() };
            let mut row = base(id, task, "R", slurm_state("running"));
            row.time = squeue_time(t.started_ms.map_or(0, |s| now.saturating_sub(s) / 1000));
            row.nodelist = t.node.clone().unwrap_or_default();
            if let Some(pool) = t.node.as_deref().and_then(pool_of) {
                row.partition = pool;
            }
            rows.push(row);
        }
        if j.counts.pending > 0 {
            let id = match &j.array {
                Some(spec) => {
                    let throttle = spec.split_once('%').map(|(_, t)| format!("%{t}")).unwrap_or_default();
                    format!("{}_[{}{}]", j.id, j.pending_indices, throttle)
                }
                None => j.id.to_string(),
            };
            let task = if j.array.is_some() { format!("[{}]", j.pending_indices) } else { "N/A".into() };
            let mut row = base(id, task, "PD", slurm_state("pending"));
            row.reason = j.pending_code.clone().unwrap_or_else(|| "Priority".into());
            rows.push(row);
        }
    }
    rows
}

pub(super) async fn squeue(args: Vec<String>) -> Result<u8, String> {
    let mut jobs_filter: Option<Vec<u64>> = None;
    let mut header = true;
    let mut states: Option<Vec<String>> = None;
    let mut names: Option<Vec<String>> = None;
    let mut format = DEFAULT_FORMAT.to_string();
    let mut long_format: Option<String> = None;
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
            "-n" | "--name" => names = Some(value()?.split(',').map(str::to_string).collect()),
            "-o" | "--format" => format = value()?,
            "-O" | "--Format" => long_format = Some(value()?),
            "-u" | "--user" | "-A" | "--account" | "-p" | "--partition" => {
                value()?;
            }
            "--me" | "-a" | "--all" | "-l" | "--long" | "-r" | "--array" => {}
            other => return Err(format!("unrecognized option '{other}'")),
        }
    }
    let pieces = match &long_format {
        Some(f) => parse_long_format(f)?,
        None => parse_format(&format)?,
    };
    let client = Client::from_env()?;
    let jobs: Vec<JobView> = client.get("/jobs?active=true").await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let nodes: Vec<tidepool_api::NodeView> = client.get("/nodes").await.unwrap_or_default();
    let pools: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.pool.as_str()).collect();
    let fleet_pool = if pools.len() == 1 { pools.first().copied() } else { None };
    let pool_of = |node: &str| nodes.iter().find(|n| n.name == node).map(|n| n.pool.clone());
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .filter(|j| jobs_filter.as_ref().is_none_or(|f| f.contains(&j.id)))
        .filter(|j| names.as_ref().is_none_or(|n| n.contains(&j.name)))
        .collect();
    let wanted = |row: &Row| states.as_ref().is_none_or(|s| s.iter().any(|x| x == row.short_state || x == row.state));
    if header {
        line(&render(&pieces, |code| Ok(Row::header(code).to_string()))?);
    }
    for row in rows(&jobs, &user, &pool_of, fleet_pool).iter().filter(|r| wanted(r)) {
        line(&render(&pieces, |code| row.field(code))?);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read_and_padded_as_slurm_prints_them() {
        let pieces = parse_format("%.6i|%4j|%T %%").unwrap();
        let line = render(&pieces, |c| Ok(match c { 'i' => "42".into(), 'j' => "simulation".into(), 'T' => "RUNNING".into(), _ => String::new() })).unwrap();
        assert_eq!(line, "    42|simu|RUNNING %");
        let pieces = parse_format("%4j.").unwrap();
        assert_eq!(render(&pieces, |_| Ok("ab".into())).unwrap(), "ab  .");
        assert!(parse_format("%.10").is_err());
        let long = parse_long_format("JobID:6,name:.5,State").unwrap();
        let line = render(&long, |c| Ok(match c { 'i' => "42".into(), 'j' => "sim".into(), 'T' => "RUNNING".into(), _ => String::new() })).unwrap();
        assert_eq!(line, format!("42      sim{:<20}", "RUNNING"));
        assert!(parse_long_format("JobID,Bogus").err().unwrap_or_default().contains("Bogus"));
    }

    #[test]
    fn pending_rows_give_their_reason_and_running_ones_their_node() {
        let job: JobView = serde_json::from_value(serde_json::json!({
            "id": 7, "name": "sim", "project": "chem", "tier": "batch", "pool": null, "state": "running",
            "array": "0-3", "n_tasks": 4, "counts": {"pending": 3, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0, "timeout": 0},
            "cpus": 2.0, "mem_bytes": 0, "gpus": 0, "time_limit_s": 3600, "submitted_ms": 0, "ended_ms": null,
            "pending_code": "Resources", "pending_reason": "busy", "pending_indices": "1-3", "command": ["true"], "workdir": "/",
            "tasks": [{"index": 0, "state": "running", "attempt": 1, "node": "n1", "started_ms": 0, "ended_ms": null,
                       "exit_code": null, "signal": null, "cpu_ms": null, "peak_mem_bytes": null}]
        }))
        .unwrap();
        let rows = rows(&[job], "alice", &|_| None, None);
        let pieces = parse_format("%i %t %R %a %l %K").unwrap();
        let lines: Vec<String> = rows.iter().map(|r| render(&pieces, |c| r.field(c)).unwrap()).collect();
        assert_eq!(lines, ["7_0 R n1 chem 1:00:00 0", "7_[1-3] PD (Resources) chem 1:00:00 [1-3]"]);
        assert!(rows[0].field('Z').unwrap_err().contains("%Z"));
    }
}

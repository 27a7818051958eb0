//! The Standard Workload Format of the Parallel Workloads Archive: one job per line, 18 fields
//! separated by white space, `;` starting a comment, -1 for unknown. Read here: submit time
//! (field 2), run time (4), allocated processors (5), requested processors (8) and requested
//! time (9), which becomes the job's time limit, so that backfilling has the estimates users gave.

use crate::batch::SimJob;

/// The latest submit time read, seconds (about 300 years): anything later is a broken log.
const MAX_SUBMIT_S: f64 = 1e10;
/// The longest run or requested time read, seconds (about 30 years).
const MAX_RUN_S: f64 = 1e9;
/// The most processors (or nodes) a job may ask for.
const MAX_PROCESSORS: f64 = 1e7;

/// How the processor fields count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessorUnit {
    /// Cores (the format's meaning): a job wider than a node becomes a gang over as many nodes
    /// as it needs.
    #[default]
    Cores,
    /// Whole nodes, as machines that allocate whole nodes log them: a job of N holds N nodes.
    Nodes,
}

/// Jobs of a log left out, by reason.
pub type Skipped = std::collections::BTreeMap<&'static str, usize>;

/// Reads an SWF text into jobs for a fleet of `node_cores`-core nodes, and counts the jobs left
/// out by reason (never ran, no processor count, submitted before the log began). Errors name
/// the line and the field.
pub fn read(text: &str, node_cores: u64, unit: ProcessorUnit) -> Result<(Vec<SimJob>, Skipped), String> {
    let mut jobs = Vec::new();
    let mut skipped = Skipped::new();
    let mut first_submit: Option<f64> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let at = |field: usize, why: String| format!("line {}, field {field}: {why}", n + 1);
        let fields: Vec<f64> = line
            .split_whitespace()
            .enumerate()
            .map(|(i, f)| match f.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(at(i + 1, format!("'{f}' is not a finite number"))),
            })
            .collect::<Result<_, _>>()?;
        if fields.len() < 8 {
            return Err(format!("line {}: {} fields, the format has 18", n + 1, fields.len()));
        }
        let (submit, run, allocated, requested) = (fields[1], fields[3], fields[4], fields[7]);
        let requested_time = fields.get(8).copied().unwrap_or(-1.0);
        if submit > MAX_SUBMIT_S {
            return Err(at(2, format!("submit time {submit} s is beyond any log's span")));
        }
        for (field, value) in [(4, run), (9, requested_time)] {
            if value > MAX_RUN_S {
                return Err(at(field, format!("{value} s is longer than any job runs")));
            }
        }
        for (field, value) in [(5, allocated), (8, requested)] {
            if value > MAX_PROCESSORS {
                return Err(at(field, format!("{value} processors is more than any machine has")));
            }
        }
        let procs = if requested > 0.0 { requested } else { allocated };
        let left_out = if run <= 0.0 {
            Some("never ran (run time 0 or unknown)")
        } else if procs < 1.0 {
            Some("no processor count")
        } else if submit < 0.0 {
            Some("no submit time")
        } else {
            None
        };
        if let Some(reason) = left_out {
            *skipped.entry(reason).or_default() += 1;
            continue;
        }
        let start = *first_submit.get_or_insert(submit);
        let procs = procs as u64;
        let node_cores = node_cores.max(1);
        let (cores, gang) = match unit {
            ProcessorUnit::Cores if procs <= node_cores => (procs, None),
            ProcessorUnit::Cores => (node_cores, Some(procs.div_ceil(node_cores) as u32)),
            ProcessorUnit::Nodes if procs == 1 => (node_cores, None),
            ProcessorUnit::Nodes => (node_cores, Some(procs as u32)),
        };
        let n_tasks = gang.unwrap_or(1) as usize;
        let limit_s = (requested_time > 0.0).then_some(requested_time);
        jobs.push(SimJob { submit_s: (submit - start).max(0.0), cores, run_s: vec![run; n_tasks], gang_nodes: gang, limit_s });
    }
    jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
    Ok((jobs, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jobs_skips_comments_and_unrun_jobs_and_names_bad_lines() {
        let text = "; Version: 2.2\n;\n1 100 5 3600 4 -1 -1 4 7200 -1 1 1 1 -1 1 -1 -1 -1\n2 160 0 0 8 -1 -1 8 7200 -1 0 1 1 -1 1 -1 -1 -1\n3 200 0 60 -1 -1 -1 64 100 -1 1 1 1 -1 1 -1 -1 -1\n";
        let (jobs, skipped) = read(text, 24, ProcessorUnit::Cores).unwrap();
        assert_eq!(jobs.len(), 2, "the job that never ran is left out");
        assert_eq!(skipped.values().sum::<usize>(), 1, "{skipped:?}");
        assert_eq!(jobs[0], SimJob { submit_s: 0.0, cores: 4, run_s: vec![3600.0], gang_nodes: None, limit_s: Some(7200.0) });
        assert_eq!(jobs[1].gang_nodes, Some(3), "64 processors on 24-core nodes");
        assert_eq!(jobs[1].submit_s, 100.0);
        let err = read("1 x 3\n", 24, ProcessorUnit::Cores).unwrap_err();
        assert!(err.starts_with("line 1, field 2:"), "{err}");
        let (nodes, _) = read(text, 24, ProcessorUnit::Nodes).unwrap();
        assert_eq!((nodes[0].gang_nodes, nodes[0].cores), (Some(4), 24), "4 whole nodes");
    }

    #[test]
    fn broken_numbers_are_refused_with_their_line_and_field() {
        let line = |field: usize, value: &str| {
            let mut f = vec!["1", "0", "0", "60", "4", "-1", "-1", "4", "120", "-1", "1", "1", "1", "-1", "1", "-1", "-1", "-1"];
            f[field - 1] = value;
            f.join(" ")
        };
        for (field, value) in [(4, "NaN"), (4, "inf"), (4, "1e30"), (2, "1e300"), (8, "1e12"), (5, "-inf"), (9, "1e30")] {
            let err = read(&format!("; header\n{}\n", line(field, value)), 24, ProcessorUnit::Cores).unwrap_err();
            assert!(err.starts_with(&format!("line 2, field {field}:")), "{field}={value}: {err}");
        }
    }
}

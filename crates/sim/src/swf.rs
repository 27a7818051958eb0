//! The Standard Workload Format of the Parallel Workloads Archive: one job per line, 18 fields
//! separated by white space, `;` starting a comment, -1 for unknown. Read here: submit time
//! (field 2), run time (4), allocated processors (5) and requested processors (8).

use crate::batch::SimJob;

/// Reads an SWF text into jobs for a fleet of `node_cores`-core nodes: a job that asks for more
/// processors than a node has becomes a gang over as many nodes as it needs. Jobs that never
/// ran (run time 0 or unknown) are left out. Errors name the line.
pub fn read(text: &str, node_cores: u64) -> Result<Vec<SimJob>, String> {
    let mut jobs = Vec::new();
    let mut first_submit: Option<f64> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let fields: Vec<f64> = line
            .split_whitespace()
            .map(|f| f.parse::<f64>().map_err(|_| format!("line {}: '{f}' is not a number", n + 1)))
            .collect::<Result<_, _>>()?;
        if fields.len() < 8 {
            return Err(format!("line {}: {} fields, the format has 18", n + 1, fields.len()));
        }
        let (submit, run, allocated, requested) = (fields[1], fields[3], fields[4], fields[7]);
        let procs = if requested > 0.0 { requested } else { allocated };
        if run <= 0.0 || procs <= 0.0 || submit < 0.0 {
            continue;
        }
        let start = *first_submit.get_or_insert(submit);
        let procs = procs as u64;
        let node_cores = node_cores.max(1);
        let (cores, gang) = if procs <= node_cores { (procs, None) } else { (node_cores, Some(procs.div_ceil(node_cores) as u32)) };
        let n_tasks = gang.unwrap_or(1) as usize;
        jobs.push(SimJob { submit_s: (submit - start).max(0.0), cores, run_s: vec![run; n_tasks], gang_nodes: gang });
    }
    jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jobs_skips_comments_and_unrun_jobs_and_names_bad_lines() {
        let text = "; Version: 2.2\n;\n1 100 5 3600 4 -1 -1 4 7200 -1 1 1 1 -1 1 -1 -1 -1\n2 160 0 0 8 -1 -1 8 7200 -1 0 1 1 -1 1 -1 -1 -1\n3 200 0 60 -1 -1 -1 64 100 -1 1 1 1 -1 1 -1 -1 -1\n";
        let jobs = read(text, 24).unwrap();
        assert_eq!(jobs.len(), 2, "the job that never ran is left out");
        assert_eq!(jobs[0], SimJob { submit_s: 0.0, cores: 4, run_s: vec![3600.0], gang_nodes: None });
        assert_eq!(jobs[1].gang_nodes, Some(3), "64 processors on 24-core nodes");
        assert_eq!(jobs[1].submit_s, 100.0);
        let err = read("1 x 3\n", 24).unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }
}

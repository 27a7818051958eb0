//! Multi-node batch scripts: `sbatch --nodes N` runs the script once on the first node, and
//! its `srun` steps run ranks on every node of the allocation, their output back in the
//! script's; the steps answer only to the job's own step key.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{http, Env};

#[test]
fn a_two_node_allocation_runs_steps_on_both_nodes_and_steps_answer_only_to_the_jobs_key() {
    let mut env = Env::new("steps");
    env.add_agent("second", &["--cpus", "4"]);
    let script = "#!/bin/sh\n\
        #SBATCH --nodes=2 --ntasks-per-node=4 -o alloc.out\n\
        echo \"nodes $SLURM_JOB_NUM_NODES tasks $SLURM_NTASKS per node $SLURM_TASKS_PER_NODE first $SLURM_NODEID\"\n\
        echo \"$TIDEPOOL_STEP_KEY\" > key.txt\n\
        echo \"hostname lines $(srun hostname | wc -l)\"\n\
        srun sh -c 'echo \"rank $SLURM_PROCID node $SLURM_NODEID local $SLURM_LOCALID on $SLURMD_NODENAME of $SLURM_STEP_NODELIST\"' | sort -k2 -n\n\
        srun -n 2 sh -c 'echo two $SLURM_PROCID on $SLURM_NODEID' | sort\n\
        srun -l -N 1 -n 1 echo single\n\
        srun -n 3 sh -c 'exit $SLURM_PROCID'; echo worst $?\n\
        srun -n 9 true || echo refused $?\n";
    std::fs::write(env.dir.join("alloc.sh"), script).unwrap();
    let job = env.ok(&["sbatch", "--parsable", "alloc.sh"]);
    let job = job.trim();
    let waited = env.run(&["wait", job]);
    let out = std::fs::read_to_string(env.dir.join("alloc.out")).unwrap_or_default();
    assert!(waited.status.success(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "nodes 2 tasks 8 per node 4(x2) first 0", "{out}");
    assert_eq!(lines[1], "hostname lines 8", "srun hostname prints 8 lines, 4 per node: {out}");
    let ranks: Vec<Vec<&str>> = lines[2..10].iter().map(|l| l.split_whitespace().collect()).collect();
    let nodelist = ranks[0][9];
    let names: Vec<&str> = nodelist.split(',').collect();
    assert_eq!(names.len(), 2, "{out}");
    for (rank, words) in ranks.iter().enumerate() {
        let node = rank / 4;
        assert_eq!(words[1], rank.to_string(), "{out}");
        assert_eq!(words[3], node.to_string(), "ranks 0-3 on the first node, 4-7 on the second: {out}");
        assert_eq!(words[5], (rank % 4).to_string(), "{out}");
        assert_eq!(words[7], names[node], "each rank runs on its node: {out}");
    }
    assert_eq!(&lines[10..12], ["two 0 on 0", "two 1 on 1"], "srun -n 2 runs 2, one on each node: {out}");
    assert_eq!(lines[12], "0: single", "{out}");
    assert!(out.contains("task 2: Exited with exit code 2") && out.contains("worst 2"), "a rank on the other node fails the step: {out}");
    assert!(out.contains("More processors requested than permitted") && out.contains("refused 1"), "{out}");

    // The key opens this job's steps and nothing else; other tokens find no steps at all.
    let key = std::fs::read_to_string(env.dir.join("key.txt")).unwrap().trim().to_string();
    assert!(key.starts_with("tpk_"), "{key}");
    let auth = format!("Bearer {key}");
    let other = env.ok(&["submit", "--", "true"]);
    let (status, _, _) = http(&env.url, "GET", &format!("/api/v1/jobs/{}/steps?node=1", other.trim()), &[("authorization", &auth)], "");
    assert_eq!(status, 404, "a job's step key opens no other job's steps");
    let (status, _, _) = http(&env.url, "GET", "/api/v1/jobs", &[("authorization", &auth)], "");
    assert_eq!(status, 401, "a step key is no API token");
    let (status, _, _) = http(&env.url, "GET", &format!("/api/v1/jobs/{job}/steps?node=1"), &[], "");
    assert_eq!(status, 401);
    env.ok(&["project", "create", "bio"]);
    let bio = env.ok(&["token", "create", "--project", "bio"]).trim().lines().last().unwrap().to_string();
    let bio_auth = format!("Bearer {bio}");
    let post = r#"{"step_id":99,"ntasks":2,"command":["touch","/tmp/pwned"],"ranks":[{"node":1,"first":1,"count":1}]}"#;
    let (status, _, _) = http(&env.url, "POST", &format!("/api/v1/jobs/{job}/steps"), &[("authorization", &bio_auth), ("content-type", "application/json")], post);
    assert_eq!(status, 404, "another project's token cannot start steps in this job");
    // Once the script has ended, even its own key starts nothing.
    let (status, _, _) = http(&env.url, "POST", &format!("/api/v1/jobs/{job}/steps"), &[("authorization", &auth), ("content-type", "application/json")], post);
    assert_eq!(status, 404, "the allocation is over");
    let shown: serde_json::Value = serde_json::from_str(&env.ok(&["show", job, "--json"])).unwrap();
    assert_eq!(shown["state"], "succeeded", "{shown}");
}

//! GPUs by index: each task is given GPUs of its own and told which, a task that finds none
//! free waits, and a GPU that fails its node's health check gets no task while its task runs
//! again elsewhere. GPUs are stand-in indexes here (`agent --gpus N`).
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;

fn json(env: &Env, job: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap()
}

#[test]
fn each_task_gets_gpus_of_its_own_and_a_failed_gpu_sends_its_task_elsewhere() {
    let mut env = Env::new("gpus");
    let flags = env.dir.join("failing");
    std::fs::create_dir_all(&flags).unwrap();
    let check = format!("test ! -e {}/$TIDEPOOL_GPU || {{ echo \"XID 79 on GPU $TIDEPOOL_GPU\"; exit 1; }}", flags.display());
    env.add_agent("four", &["--cpus", "8", "--gpus", "4", "--feature", "gpu", "--gpu-health-command", &check, "--gpu-health-every", "1"]);
    let seen = env.dir.join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let script = format!(
        "echo \"$CUDA_VISIBLE_DEVICES $TIDEPOOL_GPUS $SLURM_JOB_GPUS $CUDA_DEVICE_ORDER\" > {}/$TIDEPOOL_TASK_INDEX.$TIDEPOOL_ATTEMPT; exec sleep 60",
        seen.display()
    );
    let job = env.ok(&["submit", "--gpus", "1", "--constraint", "gpu", "--array", "0-3", "--", "sh", "-c", &script]).trim().to_string();
    env.eventually(20, "four tasks to run", |e| json(e, &job)["counts"]["running"] == 4);
    let written = |name: String| std::fs::read_to_string(seen.join(name)).is_ok_and(|s| s.ends_with('\n'));
    env.eventually(10, "each task's GPUs", |_| (0..4).all(|i| written(format!("{i}.1"))));
    let mut given: Vec<String> = (0..4)
        .map(|i| std::fs::read_to_string(seen.join(format!("{i}.1"))).unwrap().trim().to_string())
        .collect();
    for line in &given {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert!(fields[0] == fields[1] && fields[1] == fields[2] && fields[3] == "PCI_BUS_ID", "{line}");
    }
    given.sort();
    assert_eq!(given.iter().map(|l| l.split(' ').next().unwrap()).collect::<Vec<_>>(), ["0", "1", "2", "3"], "four distinct GPUs");

    // A fifth finds none free and says so.
    let fifth = env.ok(&["submit", "--gpus", "1", "--constraint", "gpu", "--", "true"]).trim().to_string();
    env.eventually(10, "the fifth's reason", |e| e.ok(&["squeue", "-h", "-j", &fifth]).contains("(Resources)"));
    env.ok(&["cancel", &fifth]);

    // A task without GPUs on a GPU node is shown none.
    let plain = env.ok(&["submit", "--constraint", "gpu", "--", "sh", "-c", "echo \"[$CUDA_VISIBLE_DEVICES] $NVIDIA_VISIBLE_DEVICES\""]).trim().to_string();
    assert!(env.run(&["wait", &plain]).status.success());
    assert_eq!(env.ok(&["logs", &plain]).trim(), "[] void");

    // GPU 2 fails its check: its task stops and runs again on the one GPU of another node.
    env.add_agent("one", &["--cpus", "2", "--gpus", "1", "--feature", "gpu"]);
    let on_two = (0..4).find(|i| std::fs::read_to_string(seen.join(format!("{i}.1"))).unwrap().starts_with("2 ")).unwrap();
    std::fs::write(flags.join("2"), "").unwrap();
    env.eventually(20, "GPU 2 to fail", |e| e.ok(&["nodes"]).contains("gpu 2 failed its health check: XID 79 on GPU 2"));
    env.eventually(30, "its task to run again elsewhere", |e| {
        json(e, &job)["tasks"].as_array().unwrap().iter().any(|t| t["index"] == on_two && t["attempt"] == 2 && t["node"] == "one" && t["state"] == "running")
    });
    env.eventually(10, "the new attempt's GPUs", |_| written(format!("{on_two}.2")));
    assert_eq!(std::fs::read_to_string(seen.join(format!("{on_two}.2"))).unwrap().split(' ').next(), Some("0"));
    let v = json(&env, &job);
    assert_eq!(v["counts"]["failed"], 0, "a GPU failure is not the task's: {v}");

    // The check passes again: the GPU takes work again.
    std::fs::remove_file(flags.join("2")).unwrap();
    env.eventually(10, "GPU 2 back", |e| !e.ok(&["nodes"]).contains("gpu 2 failed"));
    let again = env.ok(&["submit", "--gpus", "1", "--constraint", "gpu", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]).trim().to_string();
    assert!(env.run(&["wait", &again]).status.success());
    assert_eq!(env.ok(&["logs", &again]).trim(), "2", "the only free GPU is the one back");
    let bad = env.run(&["resume", "four", "--gpu", "2"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("has not failed"), "{bad:?}");
    env.ok(&["cancel", &job]);
}

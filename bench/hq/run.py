"""HyperQueue on this machine, for `tidepool bench batch`: its Python API's LocalCluster runs a
server and one worker (all cores) in this process; N tasks of `true` are submitted as one job.

Usage: run.py N WORKDIR. Prints one JSON line: submit_ms, run_s, tasks_per_s, rss_mb.
"""
import json
import pathlib
import sys
import time

from hyperqueue import Job, LocalCluster


def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    n = int(sys.argv[1])
    work = pathlib.Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    # The native layer takes paths as str, not pathlib objects.
    with LocalCluster(server_dir=str(work / "server")) as cluster:
        cluster.start_worker()
        client = cluster.client()
        job = Job(default_workdir=str(work))
        for _ in range(n):
            # No output files, as with Slurm's -o /dev/null and Tidepool's default.
            job.program(["true"], stdout=None, stderr=None)
        started = time.time()
        submitted = client.submit(job)
        submit_ms = (time.time() - started) * 1000
        client.wait_for_jobs([submitted])
        run_s = time.time() - started
        print(json.dumps({"submit_ms": submit_ms, "run_s": run_s, "tasks_per_s": n / run_s, "rss_mb": rss_mb()}))


if __name__ == "__main__":
    main()

"""Running jobs on an adapter with the sampler attached: one job, or several at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harness.enforcement.adapters import Adapter, Launched
from harness.enforcement.model import Finished, Job
from harness.enforcement.sampler import Extra, Sampler

TAIL_S = 0.5  # the load's cgroup is kept this long after it ends, so its final counters are sampled

During = Callable[[Launched, Sampler], None]


def shell(script: str) -> tuple[str, ...]:
    """argv running script in the image's sh, then idling TAIL_S with the script's status kept."""
    return ("sh", "-c", f"{script}\nrc=$?; sleep {TAIL_S}; exit $rc")


def run_jobs(
    adapter: Adapter,
    jobs: Sequence[tuple[Job, str]],
    during: During | None = None,
    extra: Extra | None = None,
) -> list[Finished]:
    """Launch every (job, instance) at once, sample each cgroup, wait for all; in the given order.

    during(first handle, its sampler) runs while the jobs run (freeze tests use it).
    """
    launched: list[tuple[Launched, Sampler]] = []
    try:
        for job, instance in jobs:
            handle = adapter.launch(job, instance)
            sampler = Sampler(handle.cgroup, job.columns, job.effective_files, extra)
            sampler.start()
            launched.append((handle, sampler))
        if during is not None:
            during(*launched[0])
        finished = []
        for (job, _), (handle, sampler) in zip(jobs, launched, strict=True):
            end = handle.wait(job.timeout_s)
            sampler.stop()
            finished.append(
                Finished(
                    end.exit_code,
                    end.stdout,
                    end.stderr,
                    sampler.series,
                    sampler.effective,
                    end.wall_s,
                )
            )
        return finished
    finally:
        for handle, sampler in launched:  # after an error: nothing keeps running
            if handle.running():
                handle.wait(0)
            sampler.stop()

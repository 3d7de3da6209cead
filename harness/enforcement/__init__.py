"""Cgroup-limit enforcement tests (issue 6): set a limit, push a load against it, measure, judge.

model.py      the records a test writes (requested, effective, measured, verdict, series)
verdicts.py   pure functions: series -> measured value -> verdict
sampler.py    the cgroup sampled at 20 Hz from the host while a job runs
adapters.py   "apply limit X / run load / read counters" per platform (the protocol, the registry)
suite.py      the tests of MEASUREMENT.md's table, written against an adapter
run.py        `isobench run --bench enforce`: every test on every platform, one results file
"""

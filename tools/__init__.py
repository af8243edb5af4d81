"""Development tooling, not installed with fastlm (pyproject.toml packages only `fastlm*`): run it
from a checkout's root (`python -m tools.bench`), or put the root on sys.path as pytest
(`pythonpath`) and scripts/ do.

    tools.benchmarking     how speed is measured, shared by tools.bench and `pytest bench/`
    tools.bench            `python -m tools.bench`: a quick embedding latency/throughput table
    tools.plotting         charts of benchmark and training results (matplotlib)
    tools.aot              ahead-of-time compile of every Triton kernel variant, no GPU needed
    tools.serve_process    start `fastlm serve` in a child process (tests and benchmarks)
"""

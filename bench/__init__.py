"""Benchmarks: each module measures one property and prints it next to what it is compared with.

`python -m bench` runs them all at a small scale and prints one table; `--full` for full
scale. Each module also runs alone: `python -m bench.turn_overhead [--full]`. Everything
talks to local fakes on 127.0.0.1 (tests/fakes); nothing reaches the internet.
"""

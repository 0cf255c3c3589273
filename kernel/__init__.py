"""Shared, stateless kernels: scheduling, the agent turn, per-user tools, memory, commands."""

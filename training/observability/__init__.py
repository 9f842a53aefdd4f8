"""What a running job tells about itself beyond loss and throughput:

config.py      the `profile:` config section
phases.py      PhaseTimer: seconds per step in data wait / forward / backward / optimizer
stragglers.py  StragglerMonitor: per-rank step figures every N steps, a persistently slow rank named
profiler.py    StepProfiler (torch.profiler trace of a few steps), CUDA memory snapshots (on request, on OOM)
"""

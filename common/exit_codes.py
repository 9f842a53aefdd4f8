"""Process exit codes with a meaning for launchers and SLURM scripts (documented in the README)."""

OK = 0
FAILURE = 1  # an unexpected error (traceback in the per-rank log)
USER_ERROR = 2  # bad input or config; nothing was started or written
PREEMPTED = 75  # a preemption signal was received; a checkpoint was committed; requeue and resume
HANG = 76  # the watchdog saw no step complete in time; stacks dumped to the run folder
BAD_STEPS = 77  # too many non-finite steps in a row, even after a rollback
LOSS_SPIKE = 78  # a confirmed loss spike with train.loss_spike.action=stop (or rollbacks did not help)

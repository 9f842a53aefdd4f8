"""What keeps a long job alive or stops it cleanly: preemption signals (`preemption`), the hang
watchdog (`watchdog`), the non-finite step guard (`bad_steps`), the loss-spike policy (`loss_spike`)
and the test-only fault hooks (`fault_injection`)."""

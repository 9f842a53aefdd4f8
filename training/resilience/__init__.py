"""What keeps a long job alive or stops it cleanly: preemption signals (`preemption`), the hang
watchdog (`watchdog`), the non-finite step guard (`bad_steps`) and the test-only fault hooks
(`fault_injection`)."""

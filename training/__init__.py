"""MetaLM training: config/, model/, data/, the DeepSpeed engine and loop (engine.py, trainer.py),
checkpoint/, resilience/, tracking; export and the learning check consume a trained run.

Importing changes no process state: entry points call `common.process_setup.setup_process()`."""

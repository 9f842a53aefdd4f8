"""Process groups, Megatron-core TP layers glue, DeepSpeed ZeRO glue, activation checkpointing, CPU compatibility."""

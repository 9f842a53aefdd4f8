"""Training data: streaming MDS loaders (`loader`), semi-causal row assembly (`semicausal`), the batch
(`batch`), held-out samples for checks and evaluation (`held_out`). Import the submodules directly:
`loader` imports mosaicml-streaming (seconds), which the model tests do not need."""

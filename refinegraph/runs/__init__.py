"""A run's jobs, one module each: start (runs.start), resume (runs.resume), replay
(runs.replay), what they share (runs.execute), the stores and checkpointer they use
(runs.stores, runs.checkpoints); the compiled-graph cache is refinegraph.compiled.
`refinegraph.runner` is the one place to import them from."""

"""Nodes: each renders its prompt, calls a model through the run context, parses the
reply, and returns a state update plus the decision event that explains it."""

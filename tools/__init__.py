"""What nodes use besides models: answers (extraction, equivalence), voting, stopping rules,
reward scoring, structured-output parsing, and sql/ (safe execution, schema, comparison)."""

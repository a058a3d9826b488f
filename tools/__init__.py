"""What nodes use besides models: structured-output parsing (more tools come with later methods)."""

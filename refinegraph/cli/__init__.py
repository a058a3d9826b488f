"""The `refinegraph` command line (typer + rich)."""

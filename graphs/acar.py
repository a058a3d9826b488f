"""Placeholder: filled in by the method-library work (issue 3)."""

"""Placeholder: `refinegraph serve` (issue 5) registers here."""

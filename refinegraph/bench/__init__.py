"""The evaluation commands a user runs on their own data and models: `refinegraph bench
spider|gsm8k|pool|allocation|sampling` (and their journal, metrics and report writer).

They print figures and write a report; they are commands, not tests: nothing here asserts
a threshold. The reliability and performance harnesses are not installed: they live in
`benchmarks/` at the top of the repository (`python -m benchmarks ...`).
"""

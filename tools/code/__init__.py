"""Running model-written Python in a sandbox: bubblewrap namespaces plus rlimits.

    result = run_python("print(1 + 1)", timeout_s=5, memory_mb=256)
    result.status, result.stdout, result.message     # never raises for what the code does
    result = await arun_python(source, stdin="...")  # the same, off the event loop
"""

from refinegraph.tools.code.limits import Limits
from refinegraph.tools.code.programs import CandidateProgram, extract_code, program_with_tests
from refinegraph.tools.code.result import CodeResult, Isolation, Status
from refinegraph.tools.code.sandbox import IsolationMode, arun_python, run_python

__all__ = ["CandidateProgram", "CodeResult", "Isolation", "IsolationMode", "Limits", "Status", "arun_python",
           "extract_code", "run_python", "program_with_tests"]

"""Run a snippet in a fresh Python process where `modeling_lmd` cannot be imported (remote-code users).

The package is installed editable, so removing sys.path entries is not enough: the child starts with
`sys.modules["modeling_lmd"] = None`, which makes every `import modeling_lmd` raise ImportError.
"""

import os
import subprocess
import sys
import textwrap

PRELUDE = """
import sys
sys.modules["modeling_lmd"] = None  # the package is not available in this process
try:
    import modeling_lmd  # noqa: F401
    raise SystemExit("modeling_lmd should not be importable here")
except ImportError:
    pass
"""


def run_without_package(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` (dedented) after the blocking prelude; fail with the child's stderr if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    code = PRELUDE + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result

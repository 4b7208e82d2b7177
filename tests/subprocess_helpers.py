"""Child Python processes for the tests: the same thread settings as the parent, and a "package blocked" mode.

Thread count. Matrix products split their work by thread count, and different splits round differently on some
CPUs (seen on one without AVX-512: a 1-ulp change in a latent flips a decoded uint8 pixel). So every child the
tests start runs with the parent's torch thread count, set here and nowhere else. Comparisons across processes
still allow a stated tolerance (1e-5 for floats, one level for uint8 pixels, none for masks), because the same
thread count does not promise the same kernels in a fresh process (memory alignment can pick another path).

Remote code. The package is installed editable, so removing sys.path entries is not enough: `run_without_package`
starts the child with `sys.modules["modeling_lmd"] = None`, which makes every `import modeling_lmd` raise
ImportError, as for a user who only has the checkpoint.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

PRELUDE = """
import sys
sys.modules["modeling_lmd"] = None  # the package is not available in this process
try:
    import modeling_lmd  # noqa: F401
    raise SystemExit("modeling_lmd should not be importable here")
except ImportError:
    pass
"""

#: Cross-process tolerance for float outputs.
FLOAT_ATOL = 1e-5


def child_env(**overrides: str) -> dict:
    """`os.environ` for a child process: offline, and with this process's torch thread count."""
    threads = str(torch.get_num_threads())
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    env.update(overrides)
    return env


def hub_env(endpoint: str, home: str) -> dict:
    """A child's environment that talks to the local Hub server of `tests/hub_server.py` (online mode, a fake token,
    its own HF_HOME)."""
    return child_env(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_TOKEN="hf_fake_token_for_the_local_test_server",
        HF_HOME=home,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )


def run_python(args: list[str], cwd, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python *args` in a child with `child_env()` (or `env`); fail with the child's output if it fails."""
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env=child_env() if env is None else env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def run_without_package(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` (dedented) after the blocking prelude."""
    return run_python(["-c", PRELUDE + textwrap.dedent(script)], cwd=cwd, timeout=timeout)


def assert_images_close(actual, expected, max_levels: int = 1) -> None:
    """uint8 images from two processes: same shape, no pixel more than `max_levels` apart."""
    actual, expected = np.asarray(actual).astype(np.int16), np.asarray(expected).astype(np.int16)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    difference = int(np.abs(actual - expected).max()) if actual.size else 0
    assert difference <= max_levels, f"images differ by up to {difference} levels (allowed {max_levels})"

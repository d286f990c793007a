"""apply's fixed cost (issue 14): what a run pays before and between its round trips."""

from __future__ import annotations

import subprocess
import sys


def test_ssh_transport_does_not_import_invoke() -> None:
    # paramiko.config tries `import invoke` (for ssh_config's Match exec, which nixmig never
    # reads): ~35 ms of every apply's start-up; nixmig.remote.ssh keeps it out, for that import only
    code = (
        "import sys\n"
        "import nixmig.remote.ssh\n"
        "print('invoke' in sys.modules, 'paramiko' in sys.modules)\n"
        "import invoke\n"
        "print(invoke.__name__, sys.modules['invoke'] is invoke)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "invoke", "True"], out.stdout + out.stderr


def test_ssh_transport_keeps_an_invoke_already_imported() -> None:
    code = "import sys, invoke\nimport nixmig.remote.ssh\nprint(sys.modules['invoke'] is invoke)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stdout + out.stderr

"""PyInstaller runtime hook: runs before any app code in the bundle.

The bundle must never touch the network: Hugging Face libraries are told they are offline (they
then read only local files and never try a download or send telemetry). Set unconditionally: an
``HF_HUB_OFFLINE=0`` left in a user's shell must not make the app reach out.
"""

import os

from lego_studio.selftest import OFFLINE_ENVIRONMENT

for _name, _value in OFFLINE_ENVIRONMENT.items():
    os.environ[_name] = _value
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

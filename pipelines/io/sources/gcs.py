"""gs:// access details: a local GCS emulator (STORAGE_EMULATOR_HOST) needs no credentials.

google-cloud-storage honours STORAGE_EMULATOR_HOST, but Beam first looks for Application
Default Credentials and, with none to find, retries for 20-27 s per process. With the emulator
variable set, credential discovery is skipped and Beam uses an anonymous client.
medprep.pipelines.io.sources.files calls it on import, so every worker process gets it too.
"""

from __future__ import annotations

import os


def use_emulator_if_configured() -> bool:
    """True (and Beam set to anonymous GCS access) when STORAGE_EMULATOR_HOST is set."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return False
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None
    return True

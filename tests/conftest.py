import os

# The embedded engines must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

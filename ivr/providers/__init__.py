"""Provider interfaces (`ivr.providers.base`) and their implementations, one module each.

The embedded engines (`local_vad`, `local_stt`, `local_tts`) need the `local` install extra;
importing this package does not import them. `ivr.providers.registry.build()` makes the providers
that the settings choose.
"""

from ivr.providers.base import *  # noqa: F401,F403
from ivr.providers.base import __all__  # noqa: F401

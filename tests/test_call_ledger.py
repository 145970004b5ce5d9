from ivr.call.ledger import HeardLedger
from ivr.call.splitter import SplitOptions, TextSplitter
from ivr.providers.base import WordTiming


def turn(*texts_ms):
    """A turn whose pieces are made whole, `ms` of audio each."""
    led = HeardLedger()
    for i, (text, ms) in enumerate(texts_ms):
        led.add(i, text)
        led.audio(i, ms // 20)
        led.complete(i, f"m{i}")
    return led


def test_a_turn_is_heard_piece_by_piece_as_its_frames_play():
    led = turn(("Hello there.", 1000), ("How can I help?", 1200))
    assert led.heard_text() == ("", False)
    led.heard(50)
    assert led.heard_text() == ("Hello there.", False)
    led.heard(110)
    assert led.heard_text() == ("Hello there. How can I help?", False)
    assert led.all_heard
    led.heard(10)  # never goes back
    assert led.all_heard


def test_a_cut_turn_keeps_the_words_played_before_the_cut():
    led = turn(("Our hours are nine to five.", 2000), ("We are closed on Sundays and holidays.", 2000))
    led.heard(150)  # one second into piece 1's two
    led.cut_short()
    text, cut = led.heard_text()
    assert cut
    assert text.startswith("Our hours are nine to five. We are closed")
    assert "holidays" not in text
    assert led.first_unheard == 1 and not led.all_heard


def test_pieces_whose_text_comes_before_their_audio_start_where_the_audio_before_ends():
    led = HeardLedger()
    led.add(0, "One.")
    led.add(1, "Two three four five.")  # the splitter is ahead of the TTS
    led.audio(0, 25)
    led.complete(0, "m0")
    led.audio(1, 100)
    led.complete(1, "m1")
    assert (led.pieces[1].first_frame, led.pieces[1].end_frame) == (25, 125)
    led.heard(25)
    led.cut_short()
    assert led.heard_text() == ("One.", True)


def test_word_timings_decide_when_the_tts_gives_them():
    led = HeardLedger()
    led.add(0, "alpha beta gamma delta")
    led.audio(0, 50, words=(WordTiming("alpha", 0, 400), WordTiming("beta", 450, 900)))
    led.audio(0, 50, words=(WordTiming("gamma", 0, 500), WordTiming("delta", 550, 950)))
    led.complete(0, "m0")
    led.heard(72)  # 1440 ms played: alpha, beta; gamma ends at 1500
    led.cut_short()
    assert led.heard_text() == ("alpha beta", True)


def test_a_cut_before_any_audio_means_nothing_heard():
    led = turn(("Hello.", 800))
    led.cut_short()
    assert led.heard_text() == ("", True)


def test_splitter_strategies():
    def run(strategy, text, **kw):
        s = TextSplitter(SplitOptions(strategy=strategy, **kw))
        out = []
        for ch in text:  # streamed one character at a time, as the worst case
            out += s.push(ch)
        return out + s.flush()

    text = "Hi, welcome to Rosa's Bakery. We open at 7 a.m. every day, except Monday. How can I help you today?"
    assert run("sentence", text, first_min_chars=1) == [
        "Hi, welcome to Rosa's Bakery.",
        "We open at 7 a.m. every day, except Monday.",
        "How can I help you today?",
    ]
    clause = run("clause", text, first_min_chars=1, min_chars=10)
    assert clause[0] == "Hi,"  # the first piece is short so speech starts early
    assert "".join(clause).replace(" ", "") == text.replace(" ", "")
    words = run("word", "one two three", first_min_chars=1, min_chars=1)
    assert words == ["one", "two", "three"]
    fixed = run("fixed", "aaaa bbbb cccc dddd", max_chars=10, min_chars=1)
    assert all(len(p) <= 10 for p in fixed) and " ".join(fixed) == "aaaa bbbb cccc dddd"


def test_long_text_without_breaks_is_cut_at_max_chars():
    s = TextSplitter(SplitOptions(strategy="sentence", max_chars=30))
    out = s.push("word " * 20)
    assert out and all(len(p) <= 30 for p in out)

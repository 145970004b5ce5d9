from ivr.call.ledger import HeardLedger
from ivr.call.splitter import SplitOptions, TextSplitter
from ivr.providers.base import WordTiming


def turn(*texts_ms):
    led = HeardLedger()
    for i, (text, ms) in enumerate(texts_ms):
        led.add(i, text)
    return led


def test_uncut_turn_is_heard_once_every_mark_is_back():
    led = turn(("Hello there.", 1000), ("How can I help?", 1200))
    led.sent_audio(0, 1000, now=0.0)
    led.marked(0, "m0", 0.0)
    led.sent_audio(1, 1200, now=0.1)
    led.marked(1, "m1", 0.1)
    assert led.heard_text() == ("", False)
    led.echoed("m0", 1.0)
    assert led.heard_text() == ("Hello there.", False)
    led.echoed("m1", 2.2)
    assert led.heard_text() == ("Hello there. How can I help?", False)
    assert led.all_played


def test_clear_cuts_the_playing_piece_where_it_was():
    led = turn(("Our hours are nine to five.", 2000), ("We are closed on Sundays and holidays.", 2000))
    led.sent_audio(0, 2000, now=0.0)
    led.marked(0, "m0", 0.0)
    led.sent_audio(1, 2000, now=0.05)
    led.marked(1, "m1", 0.05)
    led.echoed("m0", 2.0)  # piece 0 played; piece 1 starts at 2.0
    led.cleared(3.0)  # one second into piece 1's two
    led.echoed("m1", 3.05)  # Twilio returns the pending mark on clear: dropped, not played
    text, cut = led.heard_text()
    assert cut
    assert text.startswith("Our hours are nine to five. We are closed")
    assert "holidays" not in text
    assert not led.all_played


def test_an_echo_that_crossed_our_clear_still_counts_as_played():
    led = turn(("One.", 500), ("Two three four five.", 2000))
    led.sent_audio(0, 500, now=0.0)
    led.marked(0, "m0", 0.0)
    led.sent_audio(1, 2000, now=0.0)
    led.marked(1, "m1", 0.0)
    led.cleared(0.6)  # piece 0 finished at 0.5; its echo was still on the wire
    led.echoed("m0", 0.62)
    led.echoed("m1", 0.62)
    text, cut = led.heard_text()
    assert cut and text == "One."


def test_word_timings_decide_when_the_tts_gives_them():
    led = turn(("alpha beta gamma delta", 2000))
    led.sent_audio(0, 1000, now=0.0, words=(WordTiming("alpha", 0, 400), WordTiming("beta", 450, 900)))
    led.sent_audio(0, 1000, now=0.1, words=(WordTiming("gamma", 0, 500), WordTiming("delta", 550, 950)))
    led.marked(0, "m0", 0.1)
    led.cleared(1.45)  # 1450 ms played: alpha, beta, gamma (ends at 1500) not yet
    assert led.heard_text() == ("alpha beta", True)


def test_clear_before_any_audio_means_nothing_heard():
    led = turn(("Hello.", 800))
    led.cleared(0.0)
    assert led.heard_text() == ("", True)


def test_unknown_marks_are_not_this_turns():
    led = turn(("Hi.", 300))
    assert led.echoed("other", 1.0) is False


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

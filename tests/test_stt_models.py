"""Which model IVR_STT_MODEL names, and the pieces of the Moonshine engine that need no model:
its vocabulary file, its loop trimming, and the ORT-format -> ONNX conversion its files go through
(tested on a small graph made here). Moonshine itself, from its package: test_providers_local."""

from __future__ import annotations

import numpy as np
import pytest

from ivr.providers import local_moonshine
from ivr.providers.local_moonshine import MoonshineStt, load_tokens, ort_to_onnx, without_repeats
from ivr.providers.local_stt import WhisperStt, check_model, embedded_stt


def test_model_names_resolve_to_their_engines(tmp_path):
    pytest.importorskip("faster_whisper")
    for name in ("", "base", "moonshine", "small.en", str(tmp_path)):
        check_model(name)  # no error
    assert type(embedded_stt("moonshine")) is MoonshineStt
    assert embedded_stt("moonshine").model_path == "moonshine"
    assert type(embedded_stt(str(tmp_path))) is WhisperStt


def test_the_default_is_moonshine_where_installed_else_tiny_en(monkeypatch):
    pytest.importorskip("faster_whisper")
    from ivr.providers.local_stt import TINY, default_model_name, default_model_path

    check_model(TINY)  # the packaged model, never a download
    tiny = embedded_stt(TINY)
    assert type(tiny) is WhisperStt and tiny.model_path == default_model_path()
    monkeypatch.setattr(local_moonshine, "PACKAGE", "no_such_package_for_moonshine")
    assert default_model_name() == TINY
    assert type(embedded_stt(None)) is WhisperStt
    monkeypatch.undo()
    try:
        local_moonshine.model_dir()
    except RuntimeError:
        pytest.skip("moonshine-cpp is not installed here")
    assert default_model_name() == "moonshine"
    assert type(embedded_stt(None)) is MoonshineStt
    assert type(embedded_stt("")) is MoonshineStt


def test_an_unknown_model_name_is_a_clear_error():
    pytest.importorskip("faster_whisper")
    with pytest.raises(ValueError) as error:
        check_model("smal")
    message = str(error.value)
    assert "'smal'" in message and "moonshine" in message and "base" in message and "small.en" in message


def test_the_setting_rejects_an_unknown_model_at_startup():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("onnxruntime")
    from ivr.config import ConfigError, Settings
    from ivr.providers.registry import _Shared, _whisper_stt

    settings = Settings.from_env({"IVR_STT_MODEL": "moonshin"})
    with pytest.raises(ConfigError, match="IVR_STT_MODEL: unknown model 'moonshin'"):
        _whisper_stt(settings, _Shared(settings))


def test_moonshine_without_its_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(local_moonshine, "PACKAGE", "no_such_package_for_moonshine")
    with pytest.raises(RuntimeError, match=r"ivr\[stt-moonshine\]"):
        local_moonshine.model_dir()


def test_the_vocabulary_file_gives_each_token_its_bytes(tmp_path):
    long = b"x" * 200  # a length over 127 takes two bytes
    (tmp_path / "tokenizer.bin").write_bytes(b"\x05<unk>\x03<s>" + bytes([len(long) & 0x7F | 0x80, len(long) >> 7]) + long + b"\x06\xe2\x96\x81the")
    assert load_tokens(tmp_path / "tokenizer.bin") == [b"<unk>", b"<s>", long, "\u2581the".encode()]


@pytest.mark.parametrize(
    "text, kept",
    [
        ("Eight of spades, Four of close. Seven of hearts, seven of hearts,", "Eight of spades, Four of close. Seven of hearts,"),
        ("He was not, An old spy, an old spy, Suppose young man?", "He was not, An old spy, Suppose young man?"),
        ("five five, five five", "five five, five five"),  # digits, as a caller reads them
        ("I had had enough.", "I had had enough."),
        ("Can I speak to a person?", "Can I speak to a person?"),
    ],
)
def test_a_phrase_said_twice_running_is_kept_once(text, kept):
    assert without_repeats(text) == kept


def test_an_ort_format_model_becomes_the_same_onnx_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    # As Moonshine's files hold it: int8 weights turned to float by Cast and Mul, inside an If's
    # branches that read the outer graph's initializers, with symbolic dimensions.
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 127, (4, 3), dtype=np.int8)
    def branch(name, scale):
        return helper.make_graph(
            [helper.make_node("Cast", ["w"], [f"{name}_wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{name}_wf", f"{name}_scale"], [f"{name}_ws"]),
             helper.make_node("MatMul", ["x", f"{name}_ws"], [f"{name}_y"])],
            name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 3])],
            initializer=[numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale")])  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 0.5), else_branch=branch("else", -0.25)),
         helper.make_node("Transpose", ["y"], ["out"], perm=[1, 0])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, "batch"])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "tiny.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    converted = ort_to_onnx((tmp_path / "tiny.ort").read_bytes())
    onnx.checker.check_model(onnx.load_from_string(converted))
    session = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["batch", 4]), ("cond", [1])]
    x = rng.normal(size=(2, 4)).astype(np.float32)
    for cond, scale in ((True, 0.5), (False, -0.25)):
        (out,) = session.run(None, {"x": x, "cond": np.array([cond])})
        np.testing.assert_allclose(out, (x @ (weights.astype(np.float32) * scale)).T, rtol=1e-5)


def test_an_ort_to_onnx_conversion_refuses_other_files():
    pytest.importorskip("onnxruntime")
    with pytest.raises(Exception):
        ort_to_onnx(b"\x00" * 64)


def test_the_merged_decoders_if_becomes_one_model_per_branch():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from ivr.providers.local_moonshine import if_branches

    # As Moonshine's merged decoder: one If on use_cache_branch; the first step reads the
    # encoder's output, the next ones the cache; both read the outer graph's weights.
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    def branch(name, reads):
        return helper.make_graph([helper.make_node("MatMul", [reads, "w"], ["logits"])], name, [],
                                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["use_cache_branch"], ["logits"], then_branch=branch("then", "cache"), else_branch=branch("else", "hidden"))],
        "merged",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("hidden", "cache")]
        + [helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    branches = if_branches(model)
    assert [i.name for i in branches["else_branch"].graph.input] == ["hidden"]
    assert [i.name for i in branches["then_branch"].graph.input] == ["cache"]
    x = np.array([[1.0, 2.0]], np.float32)
    for name, reads in (("else_branch", "hidden"), ("then_branch", "cache")):
        session = ort.InferenceSession(branches[name].SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {reads: x})[0], x @ w)
    with pytest.raises(ValueError, match="one If node"):
        if_branches(branches["then_branch"])


class _ShortThenWhole:
    """A Moonshine stand-in that ends after one word unless its end is held back."""

    tokens: list = []

    def __init__(self) -> None:
        self.calls: list[int] = []

    def decode(self, audio, speech=True, bias=None, min_tokens=1):
        self.calls.append(min_tokens)
        text = "I" if min_tokens <= 1 else "Hi, what time do you open on Saturday?"
        return local_moonshine.Decoded(text, end_first=0.01)


class _Ready:
    def __init__(self, model) -> None:
        self.model = model

    def get(self):
        return self.model


def test_moonshine_decodes_again_a_transcript_far_shorter_than_its_speech():
    from ivr.metrics import STT_REDECODES

    stt = embedded_stt("moonshine")
    fake = _ShortThenWhole()
    stt._model = _Ready(fake)
    t = np.arange(3 * 8000) / 8000
    three_seconds = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    before = STT_REDECODES.labels("short")._value.get()
    assert stt.transcribe_pcm8(three_seconds) == "Hi, what time do you open on Saturday?"
    # Held back for at least a word a second of speech, and counted.
    assert fake.calls == [1, 3]
    assert stt.redecodes["short"] == 1
    assert STT_REDECODES.labels("short")._value.get() == before + 1
    # A short answer to short speech is left alone.
    fake.calls.clear()
    assert stt.transcribe_pcm8(three_seconds[: 8000 // 2]) == "I"
    assert fake.calls == [1]

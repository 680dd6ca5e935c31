"""Wake-word detection: the openWakeWord adapter and the VAD-gated detector in front of it.

This module owns
- where wake-word models come from: the .tflite files shipped in the `pyopen-wakeword`
  wheel, or a user's own .tflite path (nothing is ever downloaded);
- `WakeWordDetector`: openWakeWord on 80 ms chunks of 16 kHz audio, with a threshold per
  word, a refractory period (one utterance fires once) and a clock counted in samples;
- `GatedWakeDetector`: the same detections without running inference while nobody talks.

How the gating stays exact. An openWakeWord score depends only on the last stretch of audio:
the word model reads the last N embeddings (N = 16 for the shipped models, one per 80 ms
chunk), each embedding reads the last 76 mel frames (9.5 chunks) and each chunk's mel frames
read 3 frames of context before it. So a score depends on the current chunk and the
N + 8 chunks before it; after feeding that many chunks of the same audio, two detectors in
any prior state hold the same features and give bit-identical scores (measured). The gated
detector keeps the last `context_chunks` chunks while quiet; when voice appears it feeds
them through the feature extractor (no word models), then scores live, and it goes quiet
again only once no voiced chunk is left inside the context of the current score.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from talkbox.audio_format import LISTEN_RATE
from talkbox.config import (
    WAKE_MODELS_EMPTY,
    dotted_key,
    is_wake_model_path,
    wake_model_name,
    wake_model_violations,
)
from talkbox.errors import ConfigError, TalkboxError
from talkbox.owner_files import FileRefused, check_regular_file

CHUNK_SAMPLES = 1280  # openWakeWord's native step: 80 ms at 16 kHz
# openWakeWord models are 0.2-2 MB; a file far bigger is not one (and would be loaded whole).
MAX_MODEL_BYTES = 64 * 1024 * 1024
CHUNK_SECONDS = CHUNK_SAMPLES / LISTEN_RATE

# Feature extractors shipped beside the word models; not wake words themselves.
_FEATURE_MODEL_STEMS = ("melspectrogram", "embedding_model")
# Chunks before the current one that a score depends on, beyond the word model's own
# input length: 76 mel frames per embedding span 9.5 chunks, minus the current one.
_FEATURE_CONTEXT_CHUNKS = 8
# Raw samples before a chunk that its mel frames read (3 hops of 10 ms).
_MEL_CONTEXT_SAMPLES = 480
# What the melspectrogram model reads for one chunk: the chunk and that context.
_MEL_INPUT_SAMPLES = CHUNK_SAMPLES + _MEL_CONTEXT_SAMPLES

Int16Array = npt.NDArray[np.int16]


def _shipped_models_dir() -> Path | None:
    # find_spec locates the wheel without importing it (its import loads nothing we need).
    spec = importlib.util.find_spec("pyopen_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def available_models() -> dict[str, Path]:
    """Wake-word models shipped in the pyopen-wakeword wheel, by name (e.g. "hey_jarvis")."""
    models_dir = _shipped_models_dir()
    if models_dir is None or not models_dir.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(models_dir.glob("*.tflite"))
        if path.stem not in _FEATURE_MODEL_STEMS
    }


def _feature_model_paths() -> tuple[Path, Path]:
    models_dir = _shipped_models_dir()
    paths = tuple(
        (models_dir / f"{stem}.tflite") if models_dir else Path(stem)
        for stem in _FEATURE_MODEL_STEMS
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TalkboxError(
            "openWakeWord feature models not found (" + ", ".join(missing) + "); "
            "install the pyopen-wakeword package"
        )
    return paths[0], paths[1]


def resolve_model(name_or_path: str) -> Path:
    """The .tflite file for a shipped model name ("hey_jarvis", "hey jarvis") or a path."""
    shipped = available_models()
    if is_wake_model_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.suffix != ".tflite":
            raise ConfigError([f"wake.models: {name_or_path!r} is not a .tflite model file"])
        try:
            check_regular_file(path, MAX_MODEL_BYTES)
        except FileNotFoundError:
            raise ConfigError([f"wake.models: model file {str(path)!r} does not exist"]) from None
        except FileRefused as refusal:
            raise ConfigError(
                [f"wake.models: model file {str(path)!r} {refusal}, so not a wake word model"]
            ) from None
        except OSError as error:
            raise ConfigError(
                [f"wake.models: cannot look at model file {str(path)!r}: {error.strerror}"]
            ) from None
        return path
    name = wake_model_name(name_or_path)
    if name in shipped:
        return shipped[name]
    names = ", ".join(shipped) or "none (is pyopen-wakeword installed?)"
    raise ConfigError(
        [
            f"wake.models: unknown wake word model {name_or_path!r}; available: {names}; "
            "or give the path to a .tflite file"
        ]
    )


@dataclass(frozen=True, slots=True)
class Detection:
    """A wake word fired. `audio_time`: seconds of 16 kHz audio heard up to the end of the
    chunk that fired (the detector's clock, which counts skipped audio too)."""

    model: str
    score: float
    audio_time: float


def _as_chunk(chunk: Int16Array | bytes) -> Int16Array:
    samples = np.frombuffer(chunk, dtype=np.int16) if isinstance(chunk, bytes) else chunk
    if samples.dtype != np.int16 or samples.shape != (CHUNK_SAMPLES,):
        raise ValueError(f"wake chunk must be {CHUNK_SAMPLES} int16 samples (80 ms at 16 kHz)")
    return samples


# openwakeword/__init__.py imports its verifier-training module (scikit-learn, SciPy) and its
# Silero VAD (onnxruntime). talkbox uses neither, and importing them costs about 100 MB of
# resident memory and half a second of start-up on every device. openwakeword 0.6.0 (pinned)
# touches them only through these two names, so stand-ins that refuse to run take their place.
_UNUSED_OPENWAKEWORD_PARTS = {
    "openwakeword.custom_verifier_model": "train_custom_verifier",
    "openwakeword.vad": "VAD",
}


def _import_openwakeword() -> Any:
    """Import openwakeword without the parts talkbox never uses (deferred: the CLI often
    needs no wake word at all)."""
    if "openwakeword" not in sys.modules:
        for module_name, attribute in _UNUSED_OPENWAKEWORD_PARTS.items():
            if module_name not in sys.modules:
                stand_in = types.ModuleType(module_name)
                setattr(stand_in, attribute, _not_used_by_talkbox(f"{module_name}.{attribute}"))
                sys.modules[module_name] = stand_in
    import openwakeword

    return openwakeword


def _size_feature_models_for_one_chunk(features: Any, melspec_path: Path, embedding_path: Path
                                       ) -> None:
    """Give openWakeWord's feature extractor fresh interpreters of the same two models,
    allocated for the one chunk at a time talkbox feeds. Its start runs them on 4 s of noise
    in one batch, which leaves their tensor arenas sized for that batch for good: 36 MiB of
    the daemon's resident memory, against about 8 for interpreters sized for a chunk. The
    models, and so every score, are the same (tests/integration/test_wake.py)."""
    import tflite_runtime.interpreter as tflite

    melspec = tflite.Interpreter(model_path=str(melspec_path), num_threads=1)
    melspec.resize_tensor_input(0, [1, _MEL_INPUT_SAMPLES], strict=True)
    melspec.allocate_tensors()
    embedding = tflite.Interpreter(model_path=str(embedding_path), num_threads=1)
    embedding.allocate_tensors()  # one window of mel frames: the model's own input shape
    # openWakeWord's predict functions look these attributes up on every call.
    features.melspec_model = melspec
    features._tflite_current_melspec_input_size = _MEL_INPUT_SAMPLES
    features.embedding_model = embedding
    features._tflite_current_embedding_batch_size = 1


def _not_used_by_talkbox(name: str) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError(f"{name} is not loaded by talkbox (it saves memory on the device)")

    return refuse


class WakeWordDetector:
    """openWakeWord (tflite) over 80 ms chunks, with per-word thresholds and a refractory period.

    Scores are deterministic: the feature buffers are filled with digital silence at start
    and on `reset()` (openWakeWord's own start fills them with random noise).
    """

    def __init__(
        self,
        models: list[str],
        threshold: float = 0.5,
        thresholds: dict[str, float] | None = None,
        refractory_seconds: float = 2.0,
    ) -> None:
        # The [wake] rules are the config's; the values' ranges were checked there too.
        if not models:
            raise ConfigError([f"wake.models: {WAKE_MODELS_EMPTY}"])
        violations = wake_model_violations(models, thresholds or {})
        if violations:
            raise ConfigError([f"{dotted_key(('wake', *v.key))}: {v.message}" for v in violations])
        paths = [resolve_model(m) for m in models]
        names = [p.stem for p in paths]
        # Thresholds may be keyed by the model as listed (a name or a path) or by its name.
        listed_as = dict(zip(models, names, strict=True))
        thresholds = {listed_as.get(key, key): value for key, value in (thresholds or {}).items()}

        openwakeword = _import_openwakeword()

        melspec_path, embedding_path = _feature_model_paths()
        self._model: Any = openwakeword.Model(
            wakeword_models=[str(p) for p in paths],
            inference_framework="tflite",
            melspec_model_path=str(melspec_path),
            embedding_model_path=str(embedding_path),
        )
        # openWakeWord keeps 10 s of raw audio in a deque and copies all of it into a list
        # on every chunk, though it reads only the chunk and the 3 hops before it. Keeping
        # just those saves about a third of its CPU and changes no score (tested).
        features = self._model.preprocessor
        features.raw_data_buffer = deque(
            features.raw_data_buffer, maxlen=_MEL_INPUT_SAMPLES
        )
        _size_feature_models_for_one_chunk(features, melspec_path, embedding_path)
        self.model_names = names
        self.default_threshold = threshold
        self.thresholds = thresholds
        self.refractory_seconds = refractory_seconds
        # A model with several outputs reports one score per class label.
        self._label_model: dict[str, str] = {}
        for name in names:
            if self._model.model_outputs[name] == 1:
                self._label_model[name] = name
            else:
                for label in self._model.class_mapping[name].values():
                    self._label_model[str(label)] = name
        longest_input = max(int(self._model.model_inputs[n]) for n in names)
        self.context_chunks = longest_input + _FEATURE_CONTEXT_CHUNKS + 1
        self._samples_heard = 0
        self._last_fired: dict[str, float] = {}
        self.last_scores: dict[str, float] = dict.fromkeys(self._label_model, 0.0)
        self.last_scores_time: float | None = None
        self._fill_with_silence()

    @property
    def audio_time(self) -> float:
        """Seconds of audio processed or skipped so far."""
        return self._samples_heard / LISTEN_RATE

    def threshold_for(self, label: str) -> float:
        model = self._label_model.get(label, label)
        return self.thresholds.get(label, self.thresholds.get(model, self.default_threshold))

    def process(self, chunk: Int16Array | bytes) -> list[Detection]:
        """Score one 80 ms chunk (1280 int16 samples at 16 kHz); return what fired."""
        samples = _as_chunk(chunk)
        raw_scores = self._model.predict(samples)
        self._samples_heard += CHUNK_SAMPLES
        now = self.audio_time
        self.last_scores = {label: float(score) for label, score in raw_scores.items()}
        self.last_scores_time = now
        detections = []
        for label, score in self.last_scores.items():
            if score < self.threshold_for(label):
                continue
            last = self._last_fired.get(label)
            if last is not None and now - last < self.refractory_seconds:
                continue
            self._last_fired[label] = now
            detections.append(Detection(label, score, now))
        return detections

    def prime(self, chunk: Int16Array | bytes) -> None:
        """Feed one chunk through the feature extractor only: no scores, no clock.

        For replaying audio whose time was already counted with `advance()`.
        """
        self._model.preprocessor(_as_chunk(chunk))

    def advance(self, num_samples: int) -> None:
        """Count audio that was not (or not yet) scored, so `audio_time` stays true."""
        self._samples_heard += num_samples

    def clear_refractory(self) -> None:
        """Let every word fire again at once."""
        self._last_fired.clear()

    def reset(self) -> None:
        """Forget the audio heard and past detections (the clock keeps running)."""
        self.clear_refractory()
        self._fill_with_silence()
        self.last_scores = dict.fromkeys(self._label_model, 0.0)

    def _fill_with_silence(self) -> None:
        # Full predictions, not just features: openWakeWord zeroes the first 5 scores of a
        # fresh model, which would make a detector that starts on speech deaf for 0.4 s.
        silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
        for _ in range(self.context_chunks):
            self._model.predict(silence)


class GatedWakeDetector:
    """A `WakeWordDetector` that runs inference only around voiced audio.

    Calling contract: `feed()` takes consecutive 16 kHz PCM16 frames (any whole number of
    samples, typically 20 ms) with the VAD decision for each. While no voice is heard it only
    keeps the last `lookback_seconds` of audio. When voice appears it replays that audio into
    the feature buffers and scores live until `hangover_seconds` after the last voiced frame.
    Detections equal those of the same detector run on every chunk, except that a wake word
    the VAD never hears cannot fire. `skip()` accounts for audio not fed at all (wake word
    disabled); the audio before it is then treated as silence.
    """

    def __init__(
        self,
        detector: WakeWordDetector,
        lookback_seconds: float = 2.0,
        hangover_seconds: float | None = None,
    ) -> None:
        self.detector = detector
        # Never less than a score's full context, or resumed scores would differ.
        self.lookback_chunks = max(
            math.ceil(lookback_seconds / CHUNK_SECONDS - 1e-9), detector.context_chunks
        )
        self.hangover_chunks = (
            self.lookback_chunks
            if hangover_seconds is None
            else max(math.ceil(hangover_seconds / CHUNK_SECONDS - 1e-9), detector.context_chunks)
        )
        self._partial = bytearray()
        self._partial_voiced = False
        self._unscored: deque[Int16Array] = deque()
        # Whether the feature buffers end exactly where `_unscored` begins.
        self._contiguous = True
        self._active = False
        self._chunks_since_voice = self.hangover_chunks

    @property
    def active(self) -> bool:
        """Whether inference is running (voice within the last hangover)."""
        return self._active

    @property
    def audio_time(self) -> float:
        """Seconds of audio fed or skipped so far (including a part-chunk not yet scored)."""
        return self.detector.audio_time + len(self._partial) // 2 / LISTEN_RATE

    def feed(self, frame16k: bytes, is_speech: bool) -> list[Detection]:
        """Take one 16 kHz frame and its VAD decision; return any wake words it completed."""
        detections: list[Detection] = []
        view = memoryview(frame16k)
        chunk_bytes = CHUNK_SAMPLES * 2
        while view:
            take = chunk_bytes - len(self._partial)
            self._partial += view[:take]
            view = view[take:]
            self._partial_voiced = self._partial_voiced or is_speech
            if len(self._partial) == chunk_bytes:
                chunk = np.frombuffer(bytes(self._partial), dtype=np.int16)
                voiced = self._partial_voiced
                self._partial.clear()
                self._partial_voiced = False
                detections += self._on_chunk(chunk, voiced)
        return detections

    def skip(self, num_samples: int) -> None:
        """Account for `num_samples` of audio that will never be fed (wake word disabled)."""
        self.detector.advance(len(self._partial) // 2 + num_samples)
        self._partial.clear()
        self._partial_voiced = False
        self._forget_history()

    def reset(self) -> None:
        """Forget recent audio and past detections; the next voice starts from silence."""
        self.detector.advance(len(self._partial) // 2)
        self._partial.clear()
        self._partial_voiced = False
        self._forget_history()
        self.detector.clear_refractory()

    def _forget_history(self) -> None:
        self._unscored.clear()
        self._contiguous = False
        self._active = False
        self._chunks_since_voice = self.hangover_chunks

    def _on_chunk(self, chunk: Int16Array, voiced: bool) -> list[Detection]:
        self._chunks_since_voice = 0 if voiced else self._chunks_since_voice + 1
        if self._active:
            detections = self.detector.process(chunk)
            if self._chunks_since_voice >= self.hangover_chunks:
                self._active = False
                self._contiguous = True
            return detections
        if not voiced:
            self.detector.advance(CHUNK_SAMPLES)
            if len(self._unscored) == self.lookback_chunks:
                self._unscored.popleft()
                self._contiguous = False
            self._unscored.append(chunk)
            return []
        self._catch_up()
        self._active = True
        return self.detector.process(chunk)

    def _catch_up(self) -> None:
        if not self._contiguous:
            # Unknown past: pretend it was silence, so stale features cannot fire.
            missing = self.lookback_chunks - len(self._unscored)
            silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
            for _ in range(missing):
                self.detector.prime(silence)
        for chunk in self._unscored:
            self.detector.prime(chunk)
        self._unscored.clear()
        self._contiguous = True

"""Live recognition: audio that arrives in pieces in, partial and final results out.

    import asr

    model = asr.load_model("exp/live/model.pt")        # a model that can stream (lstm, lcblstm, ...)
    stream = asr.stream(model)                         # options=asr.resolve_options(...), endpoint=EndpointConfig(...)
    for piece in pieces:                               # float32 (or int16, int32...) samples, any length
        partial = stream.accept(piece, 16000)          # the utterance so far (it may still change)
        for final in stream.pop_finals():              # utterances ended by the endpoint rules
            print(final.text, [(w.word, w.start, w.end, w.confidence) for w in final.words])
    last = stream.finish()                             # the end of the audio: the last utterance

What one `accept` does:

1. audio at another rate than the model's is resampled on the way in with the filter offline
   decoding and training use (torchaudio's sinc interpolation, `asr.audio.resample`), applied
   piece by piece (`asr.audio.StreamResampler`): the model hears the samples `asr.transcribe`
   gives it, whatever the rate; audio below the model's training rate is counted with
   `asr.audio.SampleRateCheck` and said once;
2. the samples go to the acoustic model (`asr.streaming.OnlineEmissions`), which returns the
   log-probabilities of the output frames that are final now, and to the voice-activity
   detector (`asr.vad.VoiceActivity`, Silero VAD);
3. frame by frame, the endpoint rules (`asr.endpoint`) decide whether the current utterance
   ends there; the frames of the utterance go to its online search (`Decoder.begin()`: greedy,
   or beam search with the lexicon and n-gram LM, one view: speed views need the whole
   utterance);
4. at an endpoint the search ends, the utterance's words are force-aligned to its frames
   (`asr.align.word_alignments`: times in the stream's time, confidences) and kept within its
   audio (`asr.align.fit_to_audio`), and the result is queued as a final (`pop_finals`) unless it
   holds no words; the next frame begins a new utterance with a new search, and the acoustic
   model starts afresh there (`reset_state`): the audio after the endpoint that it has already
   heard is fed again to a new model state, so the next utterance is recognised as if it began
   a stream, as the model was trained. Carried on, the state of one utterance and its pause
   weighs on the next: on joined clean AN4 test utterances the finals' WER rises from 7.1 % to
   12.3 % (recipes/an4_streaming/RESULTS.md).

Finals equal, word for word, what the same search gives over the same frames offline.

Times are seconds from the first sample given to the stream. A partial and a final span their
utterance: `start` where it began (the end of the previous one), `end` how far it has been
recognised (the endpoint, for a final); their `words` (finals only) have the times of the words.

One `Stream` belongs to one audio stream and is used by one thread at a time; several streams
of one model run at once (the model is only read; each stream has its own model state, search
and detector).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from asr.align import Word, fit_to_audio, word_alignments
from asr.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    SampleRateCheck,
    StreamResampler,
    as_float_samples,
    is_sample_rate,
    mix_down,
    training_rate,
)
from asr.endpoint import RULE3_CUT_WINDOW, EndpointConfig, Endpointer, forced_cut
from asr.options import DecodeOptions, resolve_options

__all__ = ["Stream", "StreamResult", "EndpointConfig", "stream", "AudioSource", "file_source", "pcm_source", "mic_source", "run", "json_line", "TerminalView"]


@dataclass(frozen=True)
class StreamResult:
    """A partial (the current utterance so far) or a final (an utterance that has ended).

    text: the words, space-separated; start, end: the utterance's span in the stream, seconds;
    words: each word with its times and a confidence in [0, 1] (finals only; empty otherwise);
    final: whether the utterance has ended.
    """

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    final: bool = False

    @property
    def type(self) -> str:
        return "final" if self.final else "partial"

    def to_dict(self) -> dict[str, Any]:
        """{"type", "text", "start", "end", "words": [{"word", "start", "end", "confidence"}]},
        times rounded to milliseconds and confidences to three decimals."""
        return {
            "type": self.type,
            "text": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": round(w.confidence, 3)} for w in self.words],
        }


class Stream:
    """Live recognition of one audio stream with a loaded model (see the module docstring).

    model: a loaded checkpoint (`asr.load_model`) or a path to one, of a kind that can stream
        (`asr.encoders.streaming_names()`); others raise `asr.encoders.NotStreamingError`.
    options: decoding options (default: the checkpoint's, `asr.resolve_options(model.cfg.decode)`);
        speed views are not used (one view).
    endpoint: the endpoint rules' thresholds (default: `EndpointConfig()`, sherpa-onnx's).
    vad: use Silero VAD besides the CTC blanks to find silence (see `asr.endpoint`).
    reset_state: start the acoustic model afresh at every endpoint, its state and features
        those of a new stream from there on (the pending audio after the endpoint is fed
        again), as Kaldi's online decoders and Vosk do: the model was trained on utterances that
        start from a zero state. False carries the state across utterances.
    rate_check: a caller's `SampleRateCheck` to count narrowband input in (it then warns when it
        likes); by default the stream warns on stderr, once, at the first narrowband input.
    emissions: an object that does what `asr.streaming.OnlineEmissions(model)` does (accept,
        finish, frame_seconds; reset, or the state is carried on), used instead of it.
    """

    def __init__(
        self,
        model: Any,
        options: DecodeOptions | None = None,
        endpoint: EndpointConfig | None = None,
        *,
        vad: bool = True,
        reset_state: bool = True,
        rate_check: SampleRateCheck | None = None,
        emissions: Any = None,
    ):
        from asr.inference import decoder_for

        if isinstance(model, (str, Path)):
            from asr.decode import load_model

            model = load_model(model)
        self.model = model
        if emissions is None:
            from asr.streaming import OnlineEmissions

            emissions = OnlineEmissions(model)
        self.emissions = emissions
        self.reset_state = reset_state
        options = options or resolve_options(model.cfg.decode)
        if options.speeds != (1.0,):
            options = replace(options, speeds=(1.0,))
        self.options = options
        self.decoder = decoder_for(model, options)
        self.tokenizer = model.tokenizer
        self.sample_rate = int(model.cfg.features.sample_rate)
        self.frame_seconds = float(emissions.frame_seconds)
        self.endpoint = endpoint or EndpointConfig()
        self.endpointer = Endpointer(self.endpoint, self.frame_seconds)
        self.vad, self._speech = None, None  # the detector and its decisions
        if vad:
            from asr.vad import SpeechWindows, VoiceActivity

            self.vad = VoiceActivity(self.sample_rate)
            self._speech = SpeechWindows(self.vad.window_seconds)
        self._own_check = rate_check is None
        self.rate_check = rate_check if rate_check is not None else SampleRateCheck(training_rate(model), what="stream")
        self._piece = self.sample_rate  # model-rate samples given to the model at a time
        self.input_rate: int | None = None
        self._resampler: Any = None
        self._pending: list[torch.Tensor] = []  # frames from `_done` on, not yet decided
        self._done = 0  # frames decided (endpoint rules and search)
        self._audio = np.zeros(0, np.float32)  # model-rate samples from `_audio_base` on
        self._audio_base = 0
        self._samples = 0  # model-rate samples accepted in all
        self._finals: list[StreamResult] = []
        self._finished = False
        self._begin_utterance(0)

    # --- public -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether `finish` has been called (the stream takes no more audio)."""
        return self._finished

    @property
    def seconds(self) -> float:
        """Seconds of audio accepted so far (at the model's rate)."""
        return self._samples / self.sample_rate

    def accept(self, samples: np.ndarray | torch.Tensor, sample_rate: int | None = None) -> StreamResult:
        """Take the next samples (1-D, or 2-D (samples, channels) or (channels, samples), the
        shorter axis taken for the channels and averaged; float in [-1, 1] or integer PCM, scaled
        by `asr.audio.as_float_samples` as `asr.transcribe` scales it) at
        `sample_rate` Hz (default: the model's; one rate per stream) and return the current
        partial. Utterances that ended meanwhile are queued for `pop_finals`. Raises AudioError
        for samples that cannot be used (NaN, bool or complex, a bad rate), ValueError for a
        change of rate."""
        if self._finished:
            raise RuntimeError("Stream: accept() after finish()")
        x = self._resample(self._samples_of(samples), sample_rate)
        # A long buffer goes to the model a second at a time, each second decided before the
        # next: at an endpoint the model restarts on the audio held past it, which stays short.
        for i in range(0, len(x), self._piece):
            part = x[i : i + self._piece]
            self._feed(part, self.emissions.accept(part))
            self._process(final=False)
        return self.partial()

    def partial(self) -> StreamResult:
        """The current utterance so far."""
        hyp = self.search.partial()
        return StreamResult(hyp.text, self._utt_start * self.frame_seconds, self._done * self.frame_seconds)

    def pop_finals(self) -> list[StreamResult]:
        """The finals queued since the last call, oldest first (utterances with words only)."""
        finals, self._finals = self._finals, []
        return finals

    def finish(self) -> StreamResult:
        """The end of the audio: the remaining frames are decided and the last utterance ends.
        Returns its final (text "" when it holds no words); finals of endpoints found on the way
        are queued for `pop_finals` as usual. The stream takes no more audio."""
        if self._finished:
            raise RuntimeError("Stream: finish() called twice")
        self._finished = True
        rest = self._resampler.finish() if self._resampler is not None else np.zeros(0, np.float32)
        frames = [self.emissions.accept(rest)] if len(rest) else []
        self._feed(rest, None)
        frames.append(self.emissions.finish())
        for f in frames:
            if len(f):
                self._pending.append(f)
        if self.vad is not None:
            self._speech.add(self.vad.flush())
        self._process(final=True)
        end = min(self._done * self.frame_seconds, self.seconds) if self._samples else self._done * self.frame_seconds
        return self._end_utterance(end)

    # --- input --------------------------------------------------------------------------

    def _samples_of(self, samples: np.ndarray | torch.Tensor) -> np.ndarray:
        x = mix_down(as_float_samples(samples, "<stream>"))
        if x.ndim != 1:
            raise AudioError("<stream>", f"samples must be 1-D or (samples, channels), got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise AudioError("<stream>", "samples contain NaN or Inf")
        return x

    def _resample(self, x: np.ndarray, rate: int | None) -> np.ndarray:
        rate = self.sample_rate if rate is None else rate
        if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
            rate = int(rate)
        if not is_sample_rate(rate):
            raise AudioError("<stream>", f"implausible sample rate {rate!r} Hz (expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE})")
        rate = int(rate)
        if self.input_rate is None:
            self.input_rate = rate
            if self.rate_check.add(rate) and self._own_check:
                self.rate_check.warn(sys.stderr)
            if rate != self.sample_rate:
                self._resampler = StreamResampler(rate, self.sample_rate)
        elif rate != self.input_rate:
            raise ValueError(f"this stream's audio is at {self.input_rate} Hz; got samples at {rate} Hz (one rate per stream)")
        if self._resampler is not None:
            x = self._resampler.accept(x)
        return x

    def _feed(self, x: np.ndarray, frames: torch.Tensor | None) -> None:
        """Model-rate samples `x` (whose frames the model returned) to the detector and the
        utterance's audio."""
        if frames is not None and len(frames):
            self._pending.append(frames)
        if len(x):
            self._samples += len(x)
            self._audio = np.concatenate([self._audio, x])
            if self.vad is not None:
                self._speech.add(self.vad.accept(x))

    # --- decisions ----------------------------------------------------------------------

    def _process(self, final: bool) -> None:
        """Decide the pending frames the detector has covered (all of them at the end)."""
        while self._pending:
            frames = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
            speech, ready = np.zeros(len(frames), bool), len(frames)
            if self._speech is not None:
                speech, covered = self._speech.frames(self._done, len(frames), self.frame_seconds)
                ready = len(frames) if final else covered
            if ready == 0:
                return
            blank = (frames[:ready].argmax(-1) == self.tokenizer.blank).numpy()
            silent = blank & ~speech[:ready]
            first, restarted = 0, False
            for i in range(ready):
                rule = self.endpointer.push(bool(silent[i]))
                if rule:
                    self._step(frames[first : i + 1])
                    end = self._done + i + 1
                    cut = self._forced_cut(end) if rule == 3 else end
                    tail = self._cut_back(cut) if cut < end else None  # frames cut .. end, to decide again
                    self._end_utterance(cut * self.frame_seconds, queue=True)
                    self._begin_utterance(cut)
                    self.endpointer.restart(cut)
                    if self.reset_state and hasattr(self.emissions, "reset"):
                        self._done = cut
                        self._restart_emissions(cut)  # new pending frames: decide them afresh
                        restarted = True
                        break
                    if tail is not None:
                        self._done, self._pending = cut, [tail, frames[i + 1 :]]
                        restarted = True
                        break
                    first = i + 1
            if restarted:
                continue
            self._step(frames[first:ready])
            self._done += ready
            self._pending = [frames[ready:]] if ready < len(frames) else []
            if self._speech is not None:  # windows before a rule-3 cut's earliest frame are no longer needed
                self._speech.drop_before(self._done * self.frame_seconds - RULE3_CUT_WINDOW)
            return

    def _forced_cut(self, end: int) -> int:
        """Where the utterance that reached rule 3's length at frame `end` ends (`asr.endpoint.forced_cut`)."""
        frames = torch.cat(self._utt_frames) if self._utt_frames else torch.zeros(0, len(self.tokenizer))
        ids = self.search.partial().token_ids
        start = self._utt_start * self.frame_seconds
        words = word_alignments(frames, ids, self.tokenizer, self.frame_seconds, start) if ids and len(frames) else []
        spans = [(int(round(w.start / self.frame_seconds)), int(round(w.end / self.frame_seconds))) for w in words]
        return forced_cut(self.endpoint, self.frame_seconds, self._utt_start, end, self.endpointer.ended_silence, spans)

    def _cut_back(self, cut: int) -> torch.Tensor:
        """End the current utterance at frame `cut` instead of where it has been searched to: its
        search is run again over its frames before `cut`; returns the frames from `cut` on."""
        frames = torch.cat(self._utt_frames)
        keep = cut - self._utt_start
        self.search = self.decoder.begin()
        self._utt_frames = []
        self._step(frames[:keep])
        return frames[keep:]

    def _restart_emissions(self, frame: int) -> None:
        """The acoustic model afresh from output frame `frame`, the start of a new utterance: the
        audio held from there on is fed again, and its frames replace the undecided ones."""
        self.emissions.reset(frame)
        start = int(round(frame * self.frame_seconds * self.sample_rate))
        audio = self._audio[max(0, start - self._audio_base) :]
        out = [self.emissions.accept(audio)] if len(audio) else []
        if self._finished:
            out.append(self.emissions.finish())
        self._pending = [f for f in out if len(f)]

    def _step(self, frames: torch.Tensor) -> None:
        if len(frames):
            self.search.step(frames)
            self._utt_frames.append(frames)

    def _begin_utterance(self, frame: int) -> None:
        self.search = self.decoder.begin()
        self._utt_start = frame
        self._utt_frames: list[torch.Tensor] = []

    def _end_utterance(self, end: float, queue: bool = False) -> StreamResult:
        """End the current utterance at `end` seconds: its final (queued when it has words)."""
        hyp = self.search.end()[0]
        start = self._utt_start * self.frame_seconds
        first = int(round(start * self.sample_rate))
        last = int(round(end * self.sample_rate))
        words: list[Word] = []
        if hyp.token_ids and self._utt_frames:
            log_probs = torch.cat(self._utt_frames)
            words = word_alignments(log_probs, hyp.token_ids, self.tokenizer, self.frame_seconds, start)
            audio = self._audio[max(0, first - self._audio_base) : max(0, last - self._audio_base)]
            if len(audio):
                words = fit_to_audio(words, audio, self.sample_rate, start)
        drop = max(0, last - self._audio_base)
        if drop:
            self._audio = self._audio[drop:]
            self._audio_base += drop
        result = StreamResult(hyp.text, start, end, tuple(words), final=True)
        if queue and hyp.text:
            self._finals.append(result)
        return result


def stream(model: Any, options: DecodeOptions | None = None, endpoint: EndpointConfig | None = None, **kwargs: Any) -> Stream:
    """A `Stream` of `model` (a loaded model or a path): `asr.stream(model).accept(samples, rate)`."""
    return Stream(model, options, endpoint, **kwargs)


# ------------------------------------------------------------------------------ audio sources


@dataclass
class AudioSource:
    """Audio as it arrives: `chunks` yields float32 mono samples at `sample_rate`; `name` is
    what errors call it (a path, "<stdin>", "<microphone>")."""

    name: str
    sample_rate: int
    chunks: Iterator[np.ndarray]


def check_rate(rate: int, what: str = "sample rate") -> int:
    """`rate` as an int if it is a plausible sample rate (1-768 kHz); ValueError otherwise."""
    if not is_sample_rate(rate):
        raise ValueError(f"{what} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {rate}")
    return int(rate)


def file_source(path: str | Path, chunk_seconds: float = 0.1, realtime: bool = False) -> AudioSource:
    """An audio file (any format soundfile reads) in chunks of `chunk_seconds`; with `realtime`,
    each chunk is given when its audio would have been spoken. AudioError (one line, naming the
    file) for a file that cannot be used, at once or while reading."""
    import os

    import soundfile as sf

    from asr.audio import _sf_message, audio_info

    info = audio_info(path)
    block = max(1, int(round(chunk_seconds * info.sample_rate)))

    def chunks() -> Iterator[np.ndarray]:
        start = _now()
        try:
            with sf.SoundFile(os.fsencode(path)) as f:
                for k, x in enumerate(f.blocks(blocksize=block, dtype="float32", always_2d=True)):
                    if realtime:
                        _wait_until(start + (k + 1) * block / info.sample_rate)
                    yield x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(path, f"corrupt or truncated audio data ({_sf_message(e)})") from None

    return AudioSource(str(path), info.sample_rate, chunks())


def pcm_source(data: BinaryIO, sample_rate: int | None = None, chunk_seconds: float = 0.1, channels: int = 1, name: str = "<stdin>") -> AudioSource:
    """Raw 16-bit little-endian PCM from a binary stream (stdin), `channels` interleaved, at
    `sample_rate` (default 16000), in chunks of `chunk_seconds`. A WAV header at the start (what
    `arecord` writes unless told `-t raw`) is read and skipped: the audio must then be 16-bit
    PCM, and its rate and channels are the header's (a `sample_rate` that disagrees is an error);
    the audio ends with the data chunk (chunks after it, LIST or cover art, are not played),
    unless its size is the one a recorder writing to a pipe leaves (0xFFFFFFFF; 0 with an unknown
    RIFF size; arecord's and sox's placeholders near 2 GiB): then at the end of the stream.

    Errors (AudioError naming `name`, one line): another container (FLAC, Ogg, ...) or text
    instead of samples, a WAV header that is not 16-bit PCM, no bytes at all, and bytes that end
    in the middle of a sample frame (an odd number of bytes, say)."""
    from asr.audio import _AUDIO_MAGIC, _MAGIC, _looks_like_text

    if channels < 1 or channels > 64:
        raise ValueError(f"channels must be between 1 and 64, got {channels}")
    head = _read_exactly(data, 12)
    rate = sample_rate
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        header_rate, channels, size = _wav_stream_header(data, name, int.from_bytes(head[4:8], "little"))
        if sample_rate is not None and sample_rate != header_rate:
            raise AudioError(name, f"the WAV header says {header_rate} Hz, the sample rate given is {sample_rate} Hz")
        rate, head = header_rate, b""
        if size is not None:  # the audio ends with the data chunk: chunks after it are not samples
            data = _Limited(data, size)
    else:
        for magic, what in _AUDIO_MAGIC:
            if head.startswith(magic):
                raise AudioError(name, f"holds a {what} file, not raw 16-bit PCM: give the file's path instead")
        for magic, what in _MAGIC:
            if head.startswith(magic):
                raise AudioError(name, f"holds {what}, not raw 16-bit PCM")
        if head and _looks_like_text(head + _peek(data)):
            raise AudioError(name, "looks like text, not raw 16-bit PCM")
    rate = check_rate(16000 if rate is None else rate)
    frame_bytes = 2 * channels
    block = max(1, int(round(chunk_seconds * rate))) * frame_bytes

    def chunks() -> Iterator[np.ndarray]:
        buf, total, eof = head, 0, False
        while not eof:
            if len(buf) < block:
                more = data.read(block - len(buf))
                eof = not more
                buf += more or b""
            whole = min(len(buf), block) - min(len(buf), block) % frame_bytes
            if whole:
                x = np.frombuffer(buf[:whole], dtype="<i2").astype(np.float32) / 32768.0
                total += whole
                buf = buf[whole:]
                yield x.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else x
        if buf:
            raise AudioError(name, f"{total + len(buf)} bytes do not make whole 16-bit samples ({frame_bytes} bytes per sample frame): not raw 16-bit PCM")
        if total == 0:
            raise AudioError(name, "no audio: no bytes of 16-bit PCM")

    return AudioSource(name, rate, chunks())


def mic_source(sample_rate: int, chunk_seconds: float = 0.1) -> AudioSource:
    """The default microphone (sounddevice, the `mic` extra) at `sample_rate`, in chunks of
    `chunk_seconds`, until interrupted. RuntimeError (one line, saying what to install) without
    sounddevice or the PortAudio library it needs."""
    try:
        import sounddevice as sd
    except ImportError:
        raise RuntimeError("--mic needs the sounddevice package: pip install 'asr[mic]'") from None
    except OSError:
        raise RuntimeError(
            "--mic needs the PortAudio library, which is not installed: apt install libportaudio2 (Debian, Ubuntu), "
            "dnf install portaudio (Fedora), brew install portaudio (macOS); and pip install 'asr[mic]'"
        ) from None
    import queue

    rate = check_rate(sample_rate)
    block = max(1, int(round(chunk_seconds * rate)))
    pieces: queue.Queue[np.ndarray] = queue.Queue()

    def chunks() -> Iterator[np.ndarray]:
        try:
            with sd.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=block, callback=lambda x, n, t, s: pieces.put(x[:, 0].copy())):
                while True:
                    yield pieces.get()
        except sd.PortAudioError as e:
            raise RuntimeError(f"microphone: {str(e).splitlines()[0]}") from None

    return AudioSource("<microphone>", rate, chunks())


def _read_exactly(data: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = data.read(n - len(out))
        if not more:
            break
        out += more
    return out


def _peek(data: BinaryIO) -> bytes:
    peek = getattr(data, "peek", None)
    try:
        return peek(4096)[:4084] if peek is not None else b""
    except (OSError, ValueError):
        return b""


# What recorders writing to a pipe put in a data chunk's size, not knowing it: 0xFFFFFFFF (ffmpeg),
# 0 with a RIFF size of 0 or 0xFFFFFFFF, or a placeholder near 2 GiB (arecord 0x7FFFFFFF, sox 0x7FFFF000).
_UNKNOWN_DATA_SIZE = 0x7FFFF000


def _wav_stream_header(data: BinaryIO, name: str, riff_size: int = 0) -> tuple[int, int, int | None]:
    """After "RIFF....WAVE": the chunks up to `data`, read and skipped (odd sizes padded, any
    size) -> (rate, channels, the data chunk's size in bytes, or None when the header does not
    know it: the audio then goes on to the end of the stream). `riff_size` is the RIFF header's
    size field."""
    rate = channels = bits = None
    for _ in range(64):
        head = _read_exactly(data, 8)
        if len(head) < 8:
            raise AudioError(name, "WAV header cut short: no data chunk")
        cid, size = head[:4], int.from_bytes(head[4:], "little")
        if cid == b"data":
            if rate is None:
                raise AudioError(name, "WAV header without a fmt chunk")
            unknown = size >= _UNKNOWN_DATA_SIZE or (size == 0 and riff_size in (0, 0xFFFFFFFF))
            return rate, channels, None if unknown else size
        padded = size + (size & 1)
        if cid == b"fmt ":
            body = _read_exactly(data, padded) if size < 1 << 16 else b""
            if len(body) < size:
                raise AudioError(name, "WAV header cut short or corrupt")
            if size < 16:
                raise AudioError(name, "corrupt WAV fmt chunk")
            tag = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if tag == 0xFFFE and size >= 26:
                tag = int.from_bytes(body[24:26], "little")
            if tag != 1 or bits != 16 or not 1 <= channels <= 64:
                raise AudioError(name, f"the WAV stream is not 16-bit PCM (format tag 0x{tag:04X}, {bits} bits, {channels} channels)")
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise AudioError(name, f"implausible sample rate {rate} Hz in the WAV header")
        elif _skip(data, padded) < size:
            raise AudioError(name, "WAV header cut short or corrupt")
    raise AudioError(name, "WAV header without a data chunk")


def _skip(data: BinaryIO, n: int) -> int:
    """Read and drop up to `n` bytes of a stream that may not seek; the bytes dropped."""
    done = 0
    while done < n:
        more = data.read(min(n - done, 1 << 16))
        if not more:
            break
        done += len(more)
    return done


class _Limited:
    """A binary stream read up to `n` bytes, then at its end."""

    def __init__(self, data: BinaryIO, n: int):
        self.data, self.left = data, n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = self.data.read(n) if n else b""
        self.left -= len(out)
        return out


def _now() -> float:
    import time

    return time.monotonic()


def _wait_until(t: float) -> None:
    import time

    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# ------------------------------------------------------------------------------ running a stream


def run(stream: Stream, source: AudioSource, emit: Callable[[StreamResult], None], partials: bool = True) -> StreamResult:
    """Feed `source` to `stream` chunk by chunk, calling `emit` with each partial whose text
    changed (non-empty ones; with `partials`) and each final, in order; at the end of the audio
    (or on Ctrl-C) the stream is finished and its last final is emitted when it holds words.
    Returns that last final. An error of the source (AudioError, RuntimeError: bytes that are
    not audio, a cut-off sample) ends the audio there: the stream is finished and its finals
    emitted first, then the error propagates."""
    shown = ""
    error: Exception | None = None
    try:
        for chunk in source.chunks:
            partial = stream.accept(chunk, source.sample_rate)
            for final in stream.pop_finals():
                emit(final)
                shown = ""
            if partials and partial.text and partial.text != shown:
                emit(partial)
                shown = partial.text
    except KeyboardInterrupt:
        pass
    except (AudioError, RuntimeError) as e:  # what was heard before the bad bytes is kept
        error = e
    last = stream.finish()
    for final in stream.pop_finals():
        emit(final)
    if last.text:
        emit(last)
    if error is not None:
        raise error
    return last


def json_line(result: StreamResult) -> str:
    """One JSON line (no newline): {"type", "text", "start", "end", "words"}."""
    import json

    return json.dumps(result.to_dict(), ensure_ascii=False)


class TerminalView:
    """Results on a terminal: the partial rewrites the current line, a final is printed with its
    times and stays. `write` takes text for the terminal (e.g. `sys.stdout.write`)."""

    def __init__(self, write: Callable[[str], Any], flush: Callable[[], Any] | None = None, width: int | None = None):
        import shutil

        self.write, self.flush = write, flush or (lambda: None)
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        self.open = False

    def __call__(self, result: StreamResult) -> None:
        if result.final:
            self.write(f"\r\x1b[K[{_clock(result.start)} - {_clock(result.end)}] {result.text}\n")
            self.open = False
        else:
            text = result.text if len(result.text) < self.width - 1 else "..." + result.text[-(self.width - 5) :]
            self.write(f"\r\x1b[K{text}")
            self.open = True
        self.flush()

    def close(self) -> None:
        if self.open:
            self.write("\r\x1b[K")
            self.flush()
            self.open = False


def _clock(seconds: float) -> str:
    minutes, s = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{s:05.2f}"

"""Audio in, text out: `transcribe(model, audio)` over a path, an array or encoded bytes.

This is the one inference seam. `asr transcribe`, `asr decode`, the recipes, the benchmarks and
the Python API all reach the acoustic model and the search through the functions here:

- `read_audio`: a path, a 1-D float array (numpy or torch) with its sample rate, or the bytes of
  an encoded file (wav, flac, ogg, ... as soundfile reads them) -> mono float32 samples at the
  model's rate, with the audio's own rate (so narrowband input can be reported);
- `recognize`: many utterances' samples -> `Transcript`s, in length-bucketed batches;
- `transcribe`: one recording of any length; recordings longer than `LONG_AUDIO_SECONDS` are
  cut at pauses (`asr.segment`) and decoded segment by segment in bounded memory.

Nothing here changes process-wide state (torch's thread count, a model's config), so one
loaded model and one `Decoder` serve several threads at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.align import Word, fit_to_audio, word_alignments
from asr.audio import (
    AudioError,
    AudioTooLong,
    as_float_samples,
    bytes_blocks,
    bytes_info,
    load_audio_with_notes,
    mix_down,
    resample,
)
from asr.beam import Decoder, Hypothesis
from asr.formats import Transcript
from asr.options import DecodeOptions, make_decoder, resolve_options

__all__ = ["Transcript", "Audio", "EncodedAudio", "open_bytes", "join_segments", "read_audio", "emissions", "recognize", "transcribe", "decoder_for", "LONG_AUDIO_SECONDS"]

LONG_AUDIO_SECONDS = 30.0  # longer recordings are split at pauses and decoded segment by segment


@dataclass(frozen=True)
class Audio:
    """Samples ready for the model: mono float32 at `sample_rate` (the model's), and the rate the
    audio had (`source_rate`), e.g. 8000 for telephone audio fed to a 16 kHz model."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def read_audio(audio: str | Path | bytes | np.ndarray | torch.Tensor, sample_rate: int | None, model_rate: int, name: str | None = None) -> Audio:
    """Audio of any accepted kind as mono float32 samples at `model_rate` (Hz).

    audio: a file path; the bytes of an encoded file; or samples (a numpy array or torch tensor),
        1-D (or 2-D, (samples, channels) or (channels, samples): the shorter axis is taken for
        the channels), float in [-1, 1] or integer PCM (int16, int32, uint8, ...: scaled by
        `asr.audio.as_float_samples`), whose rate `sample_rate` must then be given.
    name: what errors call bytes (e.g. an upload's file name; default "<bytes>").
    Raises AudioError (a one-line reason naming the file, or "<bytes>" / "<array>") for anything
    that cannot be used: unreadable, empty or cut-short input, NaN or Inf samples, bool or complex
    samples, a missing sample rate.
    """
    if isinstance(audio, (str, Path)):
        loaded = load_audio_with_notes(audio, model_rate)
        return Audio(loaded.samples, model_rate, loaded.info.sample_rate)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(audio), model_rate, name or "<bytes>")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise AudioError("<array>", f"expected a path, bytes or an array of samples, got {type(audio).__name__}")
    if sample_rate is None:
        raise AudioError("<array>", "samples given without their sample_rate")
    if not 1000 <= int(sample_rate) <= 768000:
        raise AudioError("<array>", f"implausible sample rate {sample_rate} Hz")
    x = mix_down(as_float_samples(audio))
    if x.ndim != 1:
        raise AudioError("<array>", f"samples must be 1-D or (samples, channels), got shape {audio.shape}")
    if x.size == 0:
        raise AudioError("<array>", "no audio samples")
    if not np.isfinite(x).all():
        raise AudioError("<array>", "samples contain NaN or Inf")
    if int(sample_rate) != model_rate:
        x = resample(x, int(sample_rate), model_rate)
    return Audio(np.ascontiguousarray(x, dtype=np.float32), model_rate, int(sample_rate))


def _read_bytes(data: bytes, model_rate: int, name: str = "<bytes>") -> Audio:
    return open_bytes(data, name).decode(model_rate)


BLOCK_SECONDS = 2.0  # long audio is decoded in blocks of this much (the file reader's, `asr.segment`)
_SHORT_BLOCK = 1 << 16  # frames per block when a short recording is decoded whole
_MAX_BLOCK_SAMPLES = 1 << 22  # a block's samples over all its channels


@dataclass(frozen=True)
class EncodedAudio:
    """An encoded recording held in memory (e.g. an upload) whose header has been read and
    checked (`open_bytes`), decoded only when used: whole (`decode`) when short, block by block
    (`segments`) when long, so that memory holds at most LONG_AUDIO_SECONDS of mono samples plus
    one block, whatever the file's length or compression.

    `max_seconds` bounds the decoded length (None: no bound): a header declaring more raised
    AudioTooLong in `open_bytes`; decoding counts the frames and raises it too past the bound,
    for headers that say less than the data hold."""

    data: bytes
    name: str
    info: Any  # asr.audio.AudioInfo
    max_seconds: float | None = None

    @property
    def duration(self) -> float:
        """Seconds, by the header."""
        return self.info.duration

    @property
    def sample_rate(self) -> int:
        """The file's own rate (Hz)."""
        return self.info.sample_rate

    def _max_frames(self, seconds: float | None) -> int | None:
        bounds = [b for b in (seconds, self.max_seconds) if b is not None]
        return int(min(bounds) * self.info.sample_rate) + 1 if bounds else None

    def _blocksize(self, frames: int) -> int:
        return max(1, min(frames, _MAX_BLOCK_SAMPLES // max(1, self.info.channels)))

    def decode(self, model_rate: int) -> Audio:
        """All the samples, mono float32 at `model_rate`. For a recording whose header says at
        most LONG_AUDIO_SECONDS: one that decodes to more than twice that raises AudioError."""
        limit = max(2 * LONG_AUDIO_SECONDS, self.duration * 1.01)
        try:
            blocks = list(bytes_blocks(self.data, self.name, self._blocksize(_SHORT_BLOCK), self._max_frames(limit), self.max_seconds or limit))
        except AudioTooLong:
            if self.max_seconds is not None and self.max_seconds <= limit:
                raise
            raise AudioError(self.name, f"implausible length: decodes to more than {limit:g} s where the header declares {self.duration:.1f} s (corrupt header?)") from None
        mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        if mono.size == 0:
            raise AudioError(self.name, "no audio samples")
        if self.info.sample_rate != model_rate:
            mono = resample(mono, self.info.sample_rate, model_rate)
        return Audio(np.ascontiguousarray(mono, dtype=np.float32), model_rate, int(self.info.sample_rate))

    def segments(self, model_rate: int, segmenter: str | None = None) -> Iterator[Any]:
        """`asr.segment.Segment`s of at most LONG_AUDIO_SECONDS at `model_rate`, cut at pauses as
        `asr.segment.iter_segments` cuts a file (blocks of BLOCK_SECONDS at the file's rate);
        AudioError during iteration for data that fail to decode, AudioTooLong past the bound."""
        from asr.segment import segment_stream

        blocksize = self._blocksize(max(1, int(round(BLOCK_SECONDS * self.info.sample_rate))))
        blocks = bytes_blocks(self.data, self.name, blocksize, self._max_frames(None), self.max_seconds or 0.0)
        return segment_stream(blocks, self.info.sample_rate, model_rate, max_seconds=LONG_AUDIO_SECONDS, segmenter=segmenter)


def open_bytes(data: bytes, name: str = "<bytes>", max_seconds: float | None = None) -> EncodedAudio:
    """An encoded file held in memory, its header checked (`asr.audio.bytes_info`: empty, not
    audio, cut short, implausible), nothing decoded yet. Raises AudioError naming `name`, and
    AudioTooLong when the header declares more than `max_seconds`."""
    info = bytes_info(data, name)
    if max_seconds is not None and info.duration > max_seconds:
        raise AudioTooLong(name, max_seconds, info.duration)
    return EncodedAudio(data, name, info, max_seconds)


@lru_cache(maxsize=16)
def _decoder(tokens: tuple[str, ...], options: DecodeOptions) -> Decoder:
    from asr.text import Tokenizer

    if options.hotwords or options.grammar is not None:  # share the loaded lexicon and LM
        plain = replace(options, hotwords=(), grammar=None)
        base = _decoder(tokens, plain) if options.grammar is None and plain.lexicon is not None else None
        return make_decoder(Tokenizer(tokens), options, base)
    return make_decoder(Tokenizer(tokens), options)


def decoder_for(model: Any, options: DecodeOptions) -> Decoder:
    """The search for `options` over the model's tokens, built once and kept (an LM is loaded
    once per set of options, not per call)."""
    return _decoder(tuple(model.tokenizer.tokens), options)


def emissions(model: Any, audios: Sequence[Audio], speeds: Sequence[float] = (1.0,), batch_frames: int | None = None) -> list[list[torch.Tensor]]:
    """The acoustic model's log-probabilities of each utterance at each speed view:
    result[i][v] is (frames, tokens) for `audios[i]` played at `speeds[v]`.

    View by view, utterances are grouped into length-bucketed batches of at most `batch_frames`
    padded feature frames (default: the model's decode.batch_frames); each group's features are
    extracted in one call and its log-probabilities in one forward pass."""
    from asr.data import bucket_batches, pad_batch
    from asr.views import speed_views

    sr = model.cfg.features.sample_rate
    batch_frames = batch_frames or model.cfg.decode.batch_frames
    waves = [speed_views(a.samples, sr, speeds) for a in audios]
    out: list[list[torch.Tensor]] = [[] for _ in audios]
    for v in range(len(speeds)):
        lengths = [model.extractor.num_frames(len(w[v])) for w in waves]
        for batch in bucket_batches(lengths, batch_frames):
            feats = model.extractor.batch([torch.from_numpy(np.ascontiguousarray(waves[i][v])) for i in batch])
            x, n = pad_batch(feats)
            lp, out_lengths = model.log_probs(x, n)
            for j, i in enumerate(batch):
                out[i].append(lp[j, : out_lengths[j]])
    return out


def recognize(
    model: Any,
    audios: Sequence[Audio],
    options: DecodeOptions | None = None,
    *,
    decoder: Decoder | None = None,
    word_times: bool = True,
    offsets: Sequence[float] | None = None,
) -> list[Transcript]:
    """Transcripts of several utterances (each at most a few tens of seconds), in order.

    The acoustic model runs in batches (`emissions`), then the search takes each utterance's
    views (`Decoder.search_views`). `offsets` (seconds) shift each utterance's word times.
    """
    options = options or resolve_options(model.cfg.decode)
    decoder = decoder or decoder_for(model, options)
    speeds = list(decoder.speeds)
    sr = model.cfg.features.sample_rate
    t0 = time.perf_counter()
    log_probs = emissions(model, audios, speeds, options.batch_frames)
    each = (time.perf_counter() - t0) / max(1, len(audios))
    results = []
    for i, a in enumerate(audios):
        t1 = time.perf_counter()
        hyps = decoder.search_views(log_probs[i])
        offset = offsets[i] if offsets is not None else 0.0
        words = _words(model, log_probs[i][speeds.index(1.0)], hyps[0], a.samples, sr, offset) if word_times else []
        seconds = each + time.perf_counter() - t1
        results.append(Transcript(text=hyps[0].text, words=words, duration=a.duration, seconds=seconds, sample_rate=a.source_rate, nbest=hyps))
    return results


def _words(model: Any, log_probs: torch.Tensor, hyp: Hypothesis, samples: np.ndarray, sr: int, offset: float) -> list[Word]:
    frame_seconds = model.cfg.model.stack * model.cfg.features.hop_ms / 1000
    words = word_alignments(log_probs, hyp.token_ids, model.tokenizer, frame_seconds, offset)
    return fit_to_audio(words, samples, sr, offset)


def transcribe(
    model: Any,
    audio: str | Path | bytes | np.ndarray | torch.Tensor,
    sample_rate: int | None = None,
    options: DecodeOptions | None = None,
    *,
    decoder: Decoder | None = None,
    word_times: bool = True,
    segmenter: str | None = None,
) -> Transcript:
    """Transcribe one recording of any length.

    model: a loaded model (`asr.load_model`) or a path to one.
    audio: a path, encoded bytes, or samples (1-D float array or tensor) with `sample_rate` (Hz).
    options: decoding options (default: the checkpoint's own, `resolve_options(model.cfg.decode)`).
    Returns a `Transcript` (its `path` is the path given, else ""); raises
    `asr.audio.AudioError` for audio that cannot be used.

    Recordings up to LONG_AUDIO_SECONDS are decoded whole; longer ones are cut at pauses into
    segments of at most that length (`asr.segment`), decoded one by one and joined, with word
    times in the recording's time. A path or encoded bytes are then decoded block by block, so memory does not grow
    with the file's length. `segmenter` finds the pauses: "energy" or "silero" (Silero VAD);
    default `asr.segment.DEFAULT_SEGMENTER`.
    """
    from asr.decode import load_model

    model = load_model(model) if isinstance(model, (str, Path)) else model
    options = options or resolve_options(model.cfg.decode)
    decoder = decoder or decoder_for(model, options)
    sr = model.cfg.features.sample_rate
    t0 = time.perf_counter()
    if isinstance(audio, (str, Path)):
        from asr.audio import audio_info

        info = audio_info(audio)
        if info.duration > LONG_AUDIO_SECONDS:
            return transcribe_long(model, audio, info, options, decoder, word_times, segmenter=segmenter)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        encoded = open_bytes(bytes(audio))
        if encoded.duration > LONG_AUDIO_SECONDS:
            return join_segments(model, encoded.segments(sr, segmenter), encoded.duration, encoded.sample_rate, options, decoder, word_times)
        audio = encoded
    a = encoded.decode(sr) if isinstance(audio, EncodedAudio) else read_audio(audio, sample_rate, sr)
    if a.duration <= LONG_AUDIO_SECONDS:
        result = recognize(model, [a], options, decoder=decoder, word_times=word_times)[0]
        path = os.fspath(audio) if isinstance(audio, (str, Path)) else ""
        return replace(result, path=path, seconds=time.perf_counter() - t0)
    from asr.segment import segment_stream

    blocks = (a.samples[i : i + sr] for i in range(0, len(a.samples), sr))
    segments = segment_stream(blocks, sr, sr, max_seconds=LONG_AUDIO_SECONDS, segmenter=segmenter)
    return join_segments(model, segments, a.duration, a.source_rate, options, decoder, word_times, t0=t0)


def transcribe_long(
    model: Any, path: str | Path, info: Any, options: DecodeOptions, decoder: Decoder, word_times: bool = True, *, segmenter: str | None = None
) -> Transcript:
    """A file longer than LONG_AUDIO_SECONDS whose header (`asr.audio.audio_info`) the caller
    has read: read block by block, cut at pauses (`segmenter`, as `transcribe`), decoded
    segment by segment and joined."""
    from asr.segment import iter_segments

    t0 = time.perf_counter()
    segments = iter_segments(path, model.cfg.features.sample_rate, max_seconds=LONG_AUDIO_SECONDS, segmenter=segmenter)
    return replace(join_segments(model, segments, info.duration, info.sample_rate, options, decoder, word_times, t0=t0), path=os.fspath(path))


def join_segments(
    model: Any,
    segments: Iterable[Any],
    duration: float,
    source_rate: int,
    options: DecodeOptions,
    decoder: Decoder,
    word_times: bool = True,
    *,
    on_segment: Callable[[Transcript], None] | None = None,
    t0: float | None = None,
) -> Transcript:
    """One Transcript of a long recording's `asr.segment.Segment`s (at the model's rate), decoded
    one by one as they come, with word times in the recording's time; `duration` (seconds) and
    `source_rate` (Hz) are the recording's. `on_segment` is called with each segment's Transcript
    as it is done (e.g. to send its text on); the segments' iterator may stop the work by raising."""
    t0 = time.perf_counter() if t0 is None else t0
    texts, words = [], []
    sr = model.cfg.features.sample_rate
    for seg in segments:
        r = recognize(model, [Audio(seg.samples, sr, source_rate)], options, decoder=decoder, word_times=word_times, offsets=[seg.start])[0]
        if r.text:
            texts.append(r.text)
        words += r.words
        if on_segment is not None:
            on_segment(r)
    return Transcript(text=" ".join(texts), words=words, duration=duration, seconds=time.perf_counter() - t0, sample_rate=source_rate)

"""Live recognition, the model side: log-probabilities of audio that arrives in pieces.

`OnlineEmissions` runs a loaded model (`asr.load_model` on a checkpoint) on audio as it comes:
online features (`asr.features.OnlineFeatures`), the training set's global normalisation frame
by frame, frame stacking, then the encoder's streaming interface (`Encoder.init_state`, `step`,
`finish`) and the output layer. What `accept` and `finish` return, concatenated, is what
`model.log_probs` gives for the whole signal, whatever the sizes of the pieces:

    online = OnlineEmissions(model)
    for piece in pieces:                 # float32 samples at model.cfg.features.sample_rate
        emit(online.accept(piece))       # (n_new, vocab): the frames that are final now
    emit(online.finish())                # the rest

Only encoders that can stream (`asr.encoders.streaming_names()`: lstm, with or without
`model.lookahead`, gru, rnn, lcblstm) and the global normalisation (`features.cmvn = "global"`;
per-utterance means need the whole utterance) can; other models raise `NotStreamingError`.
A frame's log-probabilities are final once the samples of its stacked feature frames and the
encoder's look-ahead (`Encoder.lookahead_frames`) have arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asr.audio import as_float_samples
from asr.encoders import NotStreamingError, streaming_names
from asr.features import OnlineFeatures

__all__ = ["NotStreamingError", "OnlineEmissions", "check_streaming", "stream_log_probs"]


def check_streaming(model: Any) -> None:
    """Raise NotStreamingError (one line) if `model` (a loaded checkpoint) cannot stream: an
    export, per-utterance mean normalisation, or an encoder that needs the whole utterance."""
    net = getattr(model, "model", None)
    encoder = getattr(net, "encoder", None)
    if encoder is None or not hasattr(model, "normalizer"):
        raise NotStreamingError(f"{type(model).__name__} cannot stream: load the checkpoint (.pt), not an export")
    cmvn = model.cfg.features.cmvn
    if cmvn != "global":
        raise NotStreamingError(f"features.cmvn = {cmvn!r} cannot stream: it needs the whole utterance's mean (streaming needs features.cmvn = 'global')")
    if not encoder.streaming:
        kinds = ", ".join(streaming_names()) or "none"
        raise NotStreamingError(f"model.kind {model.cfg.model.kind!r} cannot stream: it needs the whole utterance (streaming kinds: {kinds})")


class OnlineEmissions:
    """One audio stream through a loaded model: `accept(samples)` -> the log-probabilities of the
    output frames that are final now, `finish()` -> the rest.

    `model` is what `asr.load_model` returns for a checkpoint (`asr.checkpoint.Recognizer`: its
    `extractor`, `normalizer`, `model`, `cfg`). All state of the stream is in this object; the
    model is shared and only read (put in eval mode, run under torch.no_grad), so several
    streams of one model can run at once, one per thread or interleaved. Each `accept` runs
    the network once over all the frames it makes available.

    Attributes: `frame_seconds`, seconds per output frame (model.stack * hop); `frames`, the
    output frames returned so far (frame k covers about [k, k + 1) * frame_seconds of audio);
    `sample_rate`, the rate `accept` expects; `lookahead_seconds`, how long after a frame's
    audio its output can wait for the encoder's look-ahead (besides the stacked frames and the
    FFT window).

    With `gates`, each `accept` and `finish` also leaves in `last_gates` the encoder's state at
    the frames it returned, computed in the same run (`Encoder.step`): one dict per layer, an
    LSTM layer's "input", "forget", "output" and "cell" (forward direction), another's
    "hidden", each (n_new, H) float32 on the CPU; without it nothing is kept.

    Raises NotStreamingError (see `check_streaming`) for a model that cannot stream."""

    def __init__(self, model: Any, gates: bool = False):
        check_streaming(model)
        self.keep_gates = gates
        self.last_gates: list[dict[str, torch.Tensor]] = []
        self.recognizer = model
        self.net = model.model.eval()
        self.encoder = self.net.encoder
        self.normalizer = model.normalizer
        self.device = next(self.net.parameters()).device
        self.sample_rate = model.cfg.features.sample_rate
        self.stack = self.net.stack
        self.features = OnlineFeatures(model.extractor)
        self.frame_seconds = self.stack * model.extractor.hop / self.sample_rate
        self.lookahead_seconds = self.encoder.lookahead_frames() * self.frame_seconds
        self.frames = 0
        self.finished = False
        dtype = next(self.net.parameters()).dtype
        self._pending = torch.zeros(0, model.extractor.dim, device=self.device, dtype=dtype)  # normalised frames not yet stacked
        with torch.no_grad():
            self._state = self.encoder.init_state(1, self.device)

    @property
    def vocab(self) -> int:
        return self.net.output.out_features

    def reset(self, frame: int = 0) -> None:
        """Start afresh, as at the beginning of a stream: the encoder's state, the feature
        extraction and the frames not yet stacked are dropped. The next `accept` takes audio
        from output frame `frame` on (its first sample at frame * frame_seconds), and `frames`
        counts on from `frame`."""
        self.features = OnlineFeatures(self.recognizer.extractor)
        self._pending = self._pending[:0]
        with torch.no_grad():
            self._state = self.encoder.init_state(1, self.device)
        self.frames = frame
        self.finished = False

    def accept(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The next samples (n,) float32 at `sample_rate` (any n, 0 included; integer PCM is scaled
        by `asr.audio.as_float_samples`) -> log-probabilities
        (n_new, vocab) float32 on the CPU of the output frames that are final now (maybe none)."""
        if self.finished:
            raise RuntimeError("OnlineEmissions: accept() after finish()")
        with torch.no_grad():
            return self._run(self.features.accept(as_float_samples(samples, "<stream>")), final=False)

    def finish(self) -> torch.Tensor:
        """The end of the audio -> the log-probabilities of the remaining output frames
        (n_rest, vocab): the last partial stack and the encoder's held-back frames, computed
        with the zero padding the offline model gives the end of an utterance."""
        if self.finished:
            raise RuntimeError("OnlineEmissions: finish() called twice")
        self.finished = True
        with torch.no_grad():
            return self._run(self.features.finish(), final=True)

    def _run(self, feats: torch.Tensor, final: bool) -> torch.Tensor:
        if feats.shape[0]:
            x = self.normalizer(feats.to(self.device, torch.float32)).to(self._pending.dtype)
            self._pending = torch.cat([self._pending, x])
        whole = self._pending.shape[0] // self.stack
        if final and self._pending.shape[0] % self.stack:
            whole += 1
            pad = whole * self.stack - self._pending.shape[0]
            self._pending = torch.cat([self._pending, self._pending.new_zeros(pad, self._pending.shape[1])])
        stacked = self._pending[: whole * self.stack].reshape(1, whole, self.stack * self._pending.shape[1])
        self._pending = self._pending[whole * self.stack :]
        outputs = []
        traces: list[list[dict[str, torch.Tensor]]] = []
        if whole:
            if self.keep_gates:
                traces.append([])
                y, self._state = self.encoder.step(stacked, self._state, traces[-1])
            else:
                y, self._state = self.encoder.step(stacked, self._state)
            outputs.append(y)
        if final:
            if self.keep_gates:
                traces.append([])
                outputs.append(self.encoder.finish(self._state, traces[-1]))
            else:
                outputs.append(self.encoder.finish(self._state))
            self._state = None
        if self.keep_gates:
            self.last_gates = _joined(traces, len(self.net.encoder.layer_names()))
        outputs = [y for y in outputs if y.shape[1]]
        if not outputs:
            return torch.zeros(0, self.vocab)
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        log_probs = self.net.layer_log_probs(y)[0].float().cpu()
        self.frames += log_probs.shape[0]
        return log_probs


def _joined(traces: list[list[dict[str, torch.Tensor]]], layers: int) -> list[dict[str, torch.Tensor]]:
    """Per layer, the gate steps of successive encoder calls one after the other, (n, H) float32
    on the CPU (batch 1)."""
    joined = []
    for i in range(layers):
        parts = [t[i] for t in traces if i < len(t) and t[i] and next(iter(t[i].values())).shape[1]]
        names = parts[0].keys() if parts else ()
        joined.append({k: torch.cat([p[k][0] for p in parts]).float().cpu() for k in names})
    return joined


def stream_log_probs(model: Any, samples: np.ndarray | torch.Tensor, chunk_samples: int) -> torch.Tensor:
    """`samples` (n,) fed to an `OnlineEmissions` of `model` in pieces of `chunk_samples`, then
    finished: the log-probabilities of the whole signal (T', vocab), as the stream gives them."""
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be at least 1, got {chunk_samples}")
    online = OnlineEmissions(model)
    samples = as_float_samples(samples)
    pieces = [online.accept(samples[i : i + chunk_samples]) for i in range(0, len(samples), chunk_samples)]
    pieces.append(online.finish())
    return torch.cat(pieces)

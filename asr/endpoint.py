"""Endpointing: where one utterance of a live stream ends and the next begins.

The rules are sherpa-onnx's (`sherpa-onnx/csrc/endpoint.h`, after Kaldi's OnlineEndpointRule),
with its defaults; an endpoint is found as soon as any rule holds:

- rule 1: at least `rule1_min_trailing_silence` seconds (2.4) of trailing silence, whether or
  not anything was heard before it (a stretch of silence or noise is closed off);
- rule 2: at least `rule2_min_trailing_silence` seconds (1.2) of trailing silence after
  something that is not silence (the pause after a sentence);
- rule 3: the utterance is `rule3_min_utterance_length` seconds (20) long, whatever it holds.

Where rule 3 cuts
-----------------
sherpa-onnx cuts where rule 3 holds, which falls inside a word as often as not ("YES" across the
mark becomes "Y" and "ES"). Here the cut moves back, by at most `RULE3_CUT_WINDOW` seconds (2;
half the utterance at most), to where no word is being spoken (`forced_cut`): the middle of the
trailing silence when the utterance ends in one (`RULE3_MIN_PAUSE`, 0.1 s, at least), else before
the last word decoded so far, the one that may still be going on (the middle of the gap between
it and the word before, from a forced alignment of the words on the frames), which is carried
into the next utterance; only a word longer than the window is still cut. The next utterance
begins at the cut and its frames are decided again from there.

As in sherpa-onnx, the utterance "contains something" when it is longer than its trailing
silence, i.e. some frame of it was not silence.

What counts as silence
----------------------
An output frame of the acoustic model (`frame_seconds` long) is silence when its most likely
CTC token is the blank (sherpa-onnx's "trailing blanks") and, with a voice-activity detector,
the detector hears no speech anywhere in the frame's interval. Both must agree: the CTC output
alone ends utterances in the middle of speech the model does not recognise (a long hesitation,
a word the model spells with blanks for a while), and the detector alone ignores sounds that
are not speech to it but are what the model was trained on (tones, spelled-out digits in
noise). A frame with a decoded token or with speech by the detector resets the trailing
silence. Without a detector, only the CTC output counts (sherpa-onnx's rule exactly).

The rules are checked frame by frame, so where utterances end does not depend on how the
audio was cut into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointConfig", "Endpointer", "endpoint_rule", "forced_cut", "RULE3_CUT_WINDOW", "RULE3_MIN_PAUSE"]

RULE3_CUT_WINDOW = 2.0  # seconds before rule 3's mark within which its cut may move back
RULE3_MIN_PAUSE = 0.1  # seconds of trailing silence that tell the utterance's last word has ended


@dataclass(frozen=True)
class EndpointConfig:
    """The three endpoint rules' thresholds, in seconds (sherpa-onnx's names and defaults).

    rule1_min_trailing_silence: silence that ends an utterance even when nothing was heard.
    rule2_min_trailing_silence: silence that ends an utterance after something was heard.
    rule3_min_utterance_length: the longest an utterance may grow.
    """

    rule1_min_trailing_silence: float = 2.4
    rule2_min_trailing_silence: float = 1.2
    rule3_min_utterance_length: float = 20.0

    def __post_init__(self) -> None:
        for name in ("rule1_min_trailing_silence", "rule2_min_trailing_silence", "rule3_min_utterance_length"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < float(value) < 1e6:
                raise ValueError(f"endpoint {name} must be a positive number of seconds, got {value!r}")


def endpoint_rule(config: EndpointConfig, utterance_seconds: float, trailing_silence: float) -> int:
    """The first rule (1, 2 or 3) that holds for an utterance `utterance_seconds` long ending in
    `trailing_silence` seconds of silence; 0 for none (sherpa-onnx's `Endpoint::IsEndpoint`).
    A small tolerance keeps frame counts times `frame_seconds` from falling short by rounding."""
    eps = 1e-6
    heard = utterance_seconds > trailing_silence + eps
    if trailing_silence + eps >= config.rule1_min_trailing_silence:
        return 1
    if heard and trailing_silence + eps >= config.rule2_min_trailing_silence:
        return 2
    if utterance_seconds + eps >= config.rule3_min_utterance_length:
        return 3
    return 0


class Endpointer:
    """The endpoint rules over one stream's output frames.

    `push(silent)` takes one frame's decision (silence or not, see the module docstring) and
    returns the rule that ends the utterance at that frame (0: it goes on; `ended_silence` then
    holds its trailing silent frames); after an endpoint the next frame starts a new utterance.
    Frames count from the start of the stream.
    """

    def __init__(self, config: EndpointConfig | None, frame_seconds: float):
        if not frame_seconds > 0:
            raise ValueError(f"frame_seconds must be positive, got {frame_seconds}")
        self.config = config or EndpointConfig()
        self.frame_seconds = frame_seconds
        self.frames = 0  # frames pushed since the stream began
        self.start = 0  # first frame of the current utterance
        self.last_sound = 0  # frame after the last one that was not silence (>= start)
        self.ended_silence = 0  # the trailing silent frames of the utterance ended last
        self.ended_start = 0  # and its first frame

    @property
    def utterance_seconds(self) -> float:
        return (self.frames - self.start) * self.frame_seconds

    @property
    def trailing_silence(self) -> float:
        return (self.frames - self.last_sound) * self.frame_seconds

    def push(self, silent: bool) -> int:
        self.frames += 1
        if not silent:
            self.last_sound = self.frames
        rule = endpoint_rule(self.config, self.utterance_seconds, self.trailing_silence)
        if rule:
            self.ended_silence, self.ended_start = self.frames - self.last_sound, self.start
            self.start = self.last_sound = self.frames
        return rule

    def restart(self, frame: int) -> None:
        """Start the current utterance at `frame`, after the start of the one ended last and at
        most the frames pushed, the frames after it not yet pushed: they are pushed again (after
        an endpoint moved back by `forced_cut`)."""
        if not self.ended_start < frame <= self.frames:
            raise ValueError(f"restart at frame {frame} outside the last utterance ({self.ended_start}-{self.frames})")
        self.frames = self.start = self.last_sound = frame


def forced_cut(config: EndpointConfig, frame_seconds: float, start: int, limit: int, trailing_silence: int, words: list[tuple[int, int]]) -> int:
    """The frame at which an utterance that began at frame `start` and reached rule 3's length
    at frame `limit` (exclusive) ends, so that no word is cut (see the module docstring).

    trailing_silence: the silent frames that end it; words: the (first, end) frames (end
    exclusive) of the words decoded in it, in order. Returns a frame in
    (`start`, `limit`]: `limit - trailing_silence // 2` for a trailing pause, else the middle of
    the gap before the last word when that lies within the window, else `limit`."""
    window = min(int(RULE3_CUT_WINDOW / frame_seconds + 1e-9), (limit - start) // 2)
    lowest = max(start + 1, limit - window)
    if trailing_silence * frame_seconds + 1e-9 >= RULE3_MIN_PAUSE:
        return max(lowest, limit - trailing_silence // 2)
    if words:
        first = words[-1][0]
        before = words[-2][1] if len(words) > 1 else start
        if lowest <= first:
            return max(lowest, (min(before, first) + first) // 2)
    return limit

"""A request's own hotwords and grammar (HTTP form fields, a WebSocket's start message, a
Wyoming `transcribe` event) -> the decoding options of that request alone.

The server's options are never changed: each request gets a new `DecodeOptions` value (its
hotwords added to the server's, its grammar instead of the server's), and the search for it is
built (and cached, `asr.inference.decoder_for`) here, so a word the model cannot spell is a
ContextError before any audio is queued. A request that gives neither gets the server's options
object itself, and so today's search.
"""

from __future__ import annotations

from typing import Any

from asr.context import ContextError, Grammar, parse_hotwords, split_list
from asr.options import DecodeOptions, with_context

__all__ = ["request_options", "options_from_form"]


def request_options(
    model: Any,
    options: DecodeOptions,
    hotwords: str | list | None = None,
    grammar: str | None = None,
    *,
    hotwords_field: str = "hotwords",
    grammar_field: str = "grammar",
) -> DecodeOptions:
    """`options` with a request's `hotwords` (`WORD[:BOOST]` items: a list of strings, or one
    string of items separated by commas or newlines) and `grammar` (grammar text).

    ContextError (one line, its `param` the field's name) for a list that is not one, an empty
    list, a bad boost, a word the model's tokens cannot spell, a grammar that does not parse."""
    if hotwords is None and grammar is None:
        return options
    added: tuple = ()
    field = hotwords_field
    try:
        if hotwords is not None:
            if isinstance(hotwords, str):
                items = split_list(hotwords)
            elif isinstance(hotwords, list) and all(isinstance(h, str) for h in hotwords):
                items = [h for h in hotwords if h.strip()]
            else:
                raise ContextError(f"{hotwords_field}: expected a list of strings (WORD or WORD:BOOST), got {str(hotwords)[:80]!r}")
            added = parse_hotwords(items, hotwords_field)
        value = options.grammar
        if grammar is not None:
            field = grammar_field
            if not isinstance(grammar, str):
                raise ContextError(f"{grammar_field}: expected the grammar as text, got {type(grammar).__name__}")
            value = Grammar(grammar, grammar_field)
        merged = tuple({h.words: h for h in (*options.hotwords, *added)}.values())
        out = with_context(options, merged, value)
        from asr.inference import decoder_for

        field = hotwords_field if added else grammar_field
        decoder_for(model, out)
    except ContextError as e:
        e.param = field  # type: ignore[attr-defined]
        raise
    return out


def options_from_form(model: Any, options: DecodeOptions, form: Any, prompt_as_hotwords: bool = False) -> DecodeOptions:
    """The options of a transcription request from its multipart form: the `hotwords` and
    `grammar` fields, and `prompt` read as more hotwords when `prompt_as_hotwords` (an empty
    prompt is no hotwords)."""
    hotwords = form.get("hotwords")
    grammar = form.get("grammar")
    prompt = form.get("prompt") if prompt_as_hotwords else None
    if isinstance(prompt, str) and prompt.strip():
        options = request_options(model, options, prompt, hotwords_field="prompt")
    return request_options(model, options, hotwords if hotwords is None else str(hotwords), grammar if grammar is None else str(grammar))

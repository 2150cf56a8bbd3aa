"""Structured outputs: `response_format` json_object / json_schema as a token mask, with xgrammar
(the grammar library vLLM itself uses).

The mask acts on the rule's distribution: disallowed tokens get -inf and the row is re-normalised, so
the doctors steer what is said while the grammar holds the form. That is the distribution vLLM's own
structured outputs give (vLLM masks the patient's logits before our processor; the rule keeps every
token the patient rules out out, decode_rule.py), so both engines sample alike.

xgrammar accepts some JSON Schema keywords without enforcing them; `check_schema` refuses those with a
400 naming the keyword and where it is, rather than returning output that does not validate. The list
is vLLM 0.32's (vllm/v1/structured_output/backend_xgrammar.py, has_xgrammar_unsupported_json_features,
each with its xgrammar tracking issue), where vLLM falls back to another backend instead.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence as Seq
import torch

from llmdoctor.server.engine.protocol import OutputFormat
from llmdoctor.server.errors import InvalidRequestError

PARAM = "response_format"
MAX_SCHEMA_DEPTH = 128  # JSON objects nested deeper are refused before xgrammar's recursive converter sees them
# string formats xgrammar enforces (xgrammar's json_schema_converter.cc, as vLLM lists them)
STRING_FORMATS = {"email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
                  "uri-reference", "uri-template", "json-pointer", "relative-json-pointer"}


# ---- checks (API side and engine side) -------------------------------------------------------------------


def check_schema(schema: object, param: str = f"{PARAM}.json_schema.schema") -> str:
    """The schema as canonical JSON text, or InvalidRequestError naming what is not supported and where."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param} must be a JSON Schema object", param)
    problem = _unsupported(schema, "#", 0)
    if problem:
        raise InvalidRequestError(f"{param}: {problem}; structured outputs cannot enforce it", param)
    text = json.dumps(schema, sort_keys=True)
    try:
        import xgrammar as xgr

        xgr.Grammar.from_json_schema(text)
    except RuntimeError as exc:  # xgrammar's converter: "Unsupported type ...", "Cannot find field ..."
        raise InvalidRequestError(f"{param}: {_xgrammar_message(exc)}", param) from None
    return text


def _xgrammar_message(exc: Exception) -> str:
    """xgrammar's message without its C++ source location prefix."""
    text = str(exc).strip()
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text


def _types(node: dict) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _unsupported(node: dict, where: str, depth: int) -> str | None:
    """The first keyword xgrammar would accept without enforcing, as 'WHERE uses KEYWORD ...'; else None."""
    if depth > MAX_SCHEMA_DEPTH:
        return f"the schema nests JSON objects more than {MAX_SCHEMA_DEPTH} deep"
    types = _types(node)
    found = None
    if types & {"integer", "number"} and "multipleOf" in node:
        found = "multipleOf"
    elif "array" in types and (keys := [k for k in ("uniqueItems", "contains", "minContains", "maxContains")
                                        if k in node]):
        found = keys[0]
    elif "string" in types and "format" in node and node["format"] not in STRING_FORMATS:
        found = f"format {node['format']!r} (supported: {', '.join(sorted(STRING_FORMATS))})"
    elif "string" in types and ("pattern" in node or "format" in node) and ("minLength" in node or
                                                                            "maxLength" in node):
        found = "minLength/maxLength together with pattern or format"
    elif "object" in types and "propertyNames" in node and (
            "patternProperties" in node or "properties" in node or node.get("unevaluatedProperties", True) is not True
            or (isinstance(node["propertyNames"], dict) and ("pattern" in node["propertyNames"] or
                                                             "format" in node["propertyNames"])
                and ("minLength" in node["propertyNames"] or "maxLength" in node["propertyNames"]))):
        found = "propertyNames together with properties, patternProperties, unevaluatedProperties or length bounds"
    elif "object" in types and isinstance(node.get("patternProperties"), dict) and (
            "properties" in node or len(node["patternProperties"]) > 1):
        found = "patternProperties together with properties, or more than one pattern"
    elif isinstance(node.get("allOf"), list) and len(node["allOf"]) >= 2:
        found = "allOf with more than one branch"
    if found:
        return f"{where} uses {found}"
    for key, value in node.items():
        children = [(f"{where}/{key}", value)] if isinstance(value, dict) else (
            [(f"{where}/{key}/{i}", v) for i, v in enumerate(value) if isinstance(v, dict)]
            if isinstance(value, list) else [])
        for path, child in children:
            problem = _unsupported(child, path, depth + 1)
            if problem:
                return problem
    return None


# ---- the mask (torch engine) -----------------------------------------------------------------------------


class Grammars:
    """One engine's grammar compiler (its tokenizer's vocabulary) and the matchers of its requests.
    Compiled grammars are cached by xgrammar, keyed by the schema text."""

    def __init__(self, tokenizer_folder, vocab_size: int):
        self._folder, self.vocab_size = tokenizer_folder, vocab_size
        self._compiler = None
        self._lock = threading.Lock()

    def matcher(self, fmt: OutputFormat):
        """A fresh matcher for one request (compiles on first use of a schema; call off the event loop)."""
        import xgrammar as xgr

        with self._lock:
            if self._compiler is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self._folder)
                info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info)
            compiler = self._compiler
        try:
            compiled = (compiler.compile_builtin_json_grammar() if fmt.kind == "json_object"
                        else compiler.compile_json_schema(fmt.schema))
        except RuntimeError as exc:
            raise InvalidRequestError(f"{PARAM}: {_xgrammar_message(exc)}", PARAM) from None
        return xgr.GrammarMatcher(compiled)


def mask_rows(scores: torch.Tensor, rows: Seq[int], matchers: Seq) -> None:
    """Each row's grammar mask on scores[rows] (disallowed tokens -inf), in place; one bitmask for all."""
    if not rows:
        return
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(rows), scores.shape[-1])
    for i, matcher in enumerate(matchers):
        matcher.fill_next_token_bitmask(bitmask, i)
    index = torch.tensor(list(rows), device=scores.device)
    sub = scores.index_select(0, index).float()
    xgr.apply_token_bitmask_inplace(sub, bitmask.to(scores.device))
    scores.index_copy_(0, index, sub.to(scores.dtype))

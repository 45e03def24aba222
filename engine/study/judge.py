"""Behaviour judges: which of the SimpleRL-Zoo study's four reasoning behaviours a response shows.

The behaviours (the paper's definitions, as in `judge_prompt.md`):

* ``verification``: checking a result already obtained (substituting it back, recomputing it
  another way, "let me check");
* ``backtracking``: abandoning or correcting an earlier step ("wait, that is wrong", "let me redo");
* ``subgoal_setting``: splitting the problem into intermediate goals ("first find ..., then ...",
  "step 1 ... step 2");
* ``enumeration``: going through several cases or candidate values one by one ("case 1 ... case
  2", "n = 1: ..., n = 2: ..., n = 3: ...").

Two judges share one interface, ``judge.label(texts) -> list[Labels]``:

* `RuleJudge` (the default, offline): patterns over the response's structure, not single
  keywords: a keyword counts only in the phrasing that makes it the behaviour ("check" as a verb
  on a result, not "checkbook"; "wait" as an interjection, not "wait time"), and enumeration and
  subgoals need at least two ordered parts;
* `LLMJudge`: any OpenAI-compatible ``/chat/completions`` endpoint with the labelling prompt kept
  in this package (`judge_prompt.md`), requests sent concurrently in batches, retried a bounded
  number of times with back-off, every wait bounded (connect, each read, each attempt, and a total
  deadline), parsed answers cached by response hash, every unparseable answer counted (its labels
  are None, never guessed, never cached).

Model outputs are untrusted text: they are only matched with regular expressions or sent as a
JSON string; nothing is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

#: The four behaviours, in report order.
BEHAVIOURS: tuple[str, ...] = ("verification", "backtracking", "subgoal_setting", "enumeration")

#: A response's labels: behaviour -> present (None: the judge could not tell, e.g. a parse failure).
Labels = dict[str, Optional[bool]]

PROMPT_FILE = Path(__file__).with_name("judge_prompt.md")

# -- the rule judge ---------------------------------------------------------------------------------

_F = re.IGNORECASE
_VERIFY = [
    # "let me check/verify", "let's double-check", "we can verify", "to confirm", "checking:"
    re.compile(r"\b(?:let\s+me|let's|let\s+us|we\s+(?:can|should|need\s+to|will)|i\s+(?:will|should|can)|to)\s+"
               r"(?:quickly\s+)?(?:double[-\s]?check|re-?check|check|verify|confirm)\b(?!\s+(?:out|in)\b)", _F),
    re.compile(r"(?:^|[\n.!:;]\s*)(?:double[-\s]?check(?:ing)?|verif(?:y|ying|ication)|check(?:ing)?)\s*[:,]", _F),
    # substituting a result back into the question or equation
    re.compile(r"\b(?:substitut\w*|plug\w*)\b[^.\n]{0,60}\bback\b", _F),
    re.compile(r"\b(?:this|which|it)\s+(?:checks\s+out|is\s+(?:consistent|correct)\s+with|satisfies)\b", _F),
    re.compile(r"\b(?:the\s+answer|our\s+answer|this\s+result|the\s+result)\s+is\s+(?:verified|confirmed|correct)\b", _F),
    re.compile(r"\b(?:sanity|quick)\s+check\b", _F),
]
_BACKTRACK = [
    # "wait," / "wait." / "hmm, wait": an interjection, not "wait for" / "wait time"
    re.compile(r"(?:^|[\n.!?,;:]\s*|\bhmm\s*,?\s*|\boh\s*,?\s*)wait\b(?=\s*[,.!:;-]|\s+(?:a\s+(?:moment|second|minute)|no)\b)", _F),
    re.compile(r"\b(?:that|this|it|which)(?:'s|\s+is|\s+was)\s+(?:wrong|incorrect|not\s+(?:right|correct))\b", _F),
    re.compile(r"\bi\s+(?:made|have\s+made)\s+(?:a|an)\s+(?:\w+\s+)?(?:mistake|error)\b", _F),
    re.compile(r"\b(?:let\s+me|let's|let\s+us|i\s+(?:need|have)\s+to|we\s+(?:need|have)\s+to)\s+"
               r"(?:re-?do|re-?calculate|re-?compute|re-?think|re-?consider|re-?evaluate|start\s+over|try\s+again|go\s+back)\b", _F),
    re.compile(r"\b(?:let's|let\s+me|let\s+us)\s+try\s+(?:a\s+)?(?:different|another)\s+(?:approach|way|method)\b", _F),
    re.compile(r"\b(?:this|that)\s+(?:approach\s+)?(?:doesn't|does\s+not|won't|will\s+not)\s+work\b", _F),
    re.compile(r"\bcorrection\s*:", _F),
    re.compile(r"\b(?:no|oops)\s*,\s*(?:that|this|it|i|we)\b", _F),
]
# ordered parts: "first ... then/next/finally/second", "step 1 ... step 2", "to find X, we (first) need"
_ORDINAL_FIRST = re.compile(r"(?:^|[\n.!:;]\s*)first(?:ly)?\s*,|\bfirst\s*,?\s+(?:we|let's|let\s+us|i)\b|"
                            r"\bwe\s+(?:first|need\s+to\s+first)\b", _F)
_ORDINAL_NEXT = re.compile(r"(?:^|[\n.!:;]\s*)(?:then|next|second(?:ly)?|after\s+that|finally|now)\s*,|"
                           r"\b(?:then|next|finally|second)\s*,?\s+(?:we|let's|let\s+us|i)\b", _F)
_STEP_N = re.compile(r"\bstep\s*(\d+)\b|^\s*(\d+)[.)]\s+\S", _F | re.MULTILINE)
_NEED_TO_FIND = re.compile(r"\bto\s+(?:find|determine|compute|calculate|solve\s+for)\b[^.\n]{1,80}?,\s*"
                           r"(?:we|i)\s+(?:first\s+)?(?:need|must|have|should)\b", _F)
_BREAK_DOWN = re.compile(r"\b(?:break|split|divide)\s+(?:this|the\s+problem|it)\s+(?:down\s+)?into\b", _F)
# cases and tried values
_CASE = re.compile(r"\bcase\s*(\d+|[ivx]+|[a-d])\b", _F)
_TRY_VALUE = re.compile(r"(?:^|[\n.,;]\s*|\b(?:if|for|when|try|trying)\s+)([a-z])\s*=\s*(-?\d+)\s*[:,)]", _F)
_LIST_ALL = re.compile(r"\b(?:list|enumerate|check)\s+(?:all|each|every)\s+(?:the\s+)?(?:possible|possibilities|cases|options|values|pairs)\b", _F)


def _any(patterns: Sequence[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def rule_labels(text: str) -> Labels:
    """The rule judge's labels of one response (see the module docstring)."""
    steps = {int(a or b) for a, b in _STEP_N.findall(text)}
    subgoal = (bool(_ORDINAL_FIRST.search(text) and _ORDINAL_NEXT.search(text))
               or (1 in steps and 2 in steps) or bool(_NEED_TO_FIND.search(text)) or bool(_BREAK_DOWN.search(text)))
    cases = {c.lower() for c in _CASE.findall(text)}
    tried: dict[str, set[str]] = {}
    for var, val in _TRY_VALUE.findall(text):
        tried.setdefault(var.lower(), set()).add(val)
    enumeration = len(cases) >= 2 or any(len(v) >= 3 for v in tried.values()) or bool(_LIST_ALL.search(text))
    return {"verification": _any(_VERIFY, text), "backtracking": _any(_BACKTRACK, text),
            "subgoal_setting": subgoal, "enumeration": enumeration}


class RuleJudge:
    """The offline judge (`rule_labels`)."""

    name = "rules"

    def label(self, texts: Sequence[str]) -> list[Labels]:
        return [rule_labels(t) for t in texts]

    def stats(self) -> dict[str, int]:
        return {"responses": 0}


# -- the LLM judge ----------------------------------------------------------------------------------

def judge_prompt() -> str:
    """The labelling instructions sent as the system message (``judge_prompt.md``)."""
    return PROMPT_FILE.read_text()


_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.DOTALL)
_TRUE = {"1", "true", "yes", "y", "present"}
_FALSE = {"0", "false", "no", "n", "absent"}


def parse_labels(answer: str) -> Optional[Labels]:
    """The labels in a judge's answer: the last JSON object holding all four behaviours as
    booleans / 0-1 / yes-no; None when there is none (a parse failure)."""
    for m in reversed(list(_JSON_OBJ.finditer(answer or ""))):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        out: Labels = {}
        for b in BEHAVIOURS:
            v = obj.get(b)
            s = str(v).strip().lower() if v is not None else None
            if isinstance(v, bool):
                out[b] = v
            elif s in _TRUE:
                out[b] = True
            elif s in _FALSE:
                out[b] = False
            else:
                break
        else:
            return out
    return None


def response_key(model: str, text: str) -> str:
    """The cache key of ``text`` judged by ``model`` with the current prompt (sha256, hex)."""
    h = hashlib.sha256()
    for part in (model, judge_prompt(), text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class JudgeStats:
    """What an `LLMJudge` did: responses asked about, cache hits, HTTP requests, retries, requests
    that failed after every retry (or were never sent because the deadline had passed), answers that
    could not be parsed, and whether the total deadline cut the judging short."""

    responses: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0
    failed: int = 0
    parse_failures: int = 0
    labelled: int = 0
    deadline_hit: bool = False
    examples: list[str] = field(default_factory=list)  # a few unparseable answers (truncated)
    errors: list[str] = field(default_factory=list)  # a few request failures (truncated)


class JudgeRequestError(RuntimeError):
    """One request that got no usable answer after its attempts (the message says why)."""


#: Largest answer body read (bytes); a longer one is an error, not read on.
MAX_ANSWER_BYTES = 1 << 20


class LLMJudge:
    """Labels responses through an OpenAI-compatible chat endpoint (``<url>/chat/completions``).

    Every wait is bounded. connect_timeout_s: opening the connection; read_timeout_s: each read of
    the socket (a server that accepts and never answers); request_timeout_s: one attempt from connect
    to the last byte (a server that drips bytes slowly: the socket is shut at this time);
    deadline_s: the judge's whole life, over every `label` call: after it nothing more is sent and
    requests in flight are cut, their responses counted as failed. retries: extra attempts per
    request on connection errors, timeouts, HTTP 429 and 5xx and malformed bodies (back-off
    ``backoff_s * 2**attempt`` seconds, within the deadline).

    batch_size: requests in flight at once; cache: a JSON-lines file ``{key, labels, raw}`` read at
    start and appended to, holding parsed answers only (an unparseable or failed answer is asked
    again by a later run). max_chars: a longer response is cut to its first and last
    ``max_chars // 2`` characters.
    """

    name = "llm"

    def __init__(self, url: str, model: str, *, api_key: Optional[str] = None, batch_size: int = 8,
                 retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 120.0, max_tokens: int = 256,
                 cache: Optional[str | Path] = None, max_chars: int = 8000, connect_timeout_s: float = 10.0,
                 read_timeout_s: Optional[float] = None, deadline_s: float = 3600.0) -> None:
        import urllib.parse

        self.url = url.rstrip("/") + "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge url {url!r} is not an http(s) URL")
        self._parts = parts
        self.model = model
        self.api_key = api_key
        self.batch_size = max(1, batch_size)
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.request_timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.read_timeout_s = float(read_timeout_s if read_timeout_s is not None else min(60.0, timeout_s))
        self.deadline_s = float(deadline_s)
        self._until: Optional[float] = None
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.prompt = judge_prompt()
        self.cache_path = Path(cache) if cache else None
        self._cache: dict[str, Labels] = {}
        self._lock = threading.Lock()
        self.s = JudgeStats()
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    labels = rec["labels"]
                    if isinstance(labels, dict) and all(isinstance(labels.get(b), bool) for b in BEHAVIOURS):
                        self._cache[rec["key"]] = {b: labels[b] for b in BEHAVIOURS}
                    # anything else (an unparseable answer cached by an older version, junk) is asked again
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue  # a line cut by a crash

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        half = self.max_chars // 2
        return text[:half] + "\n[...]\n" + text[-half:]

    def _left(self) -> float:
        """Seconds left before the deadline."""
        if self._until is None:
            self._until = time.monotonic() + self.deadline_s
        return self._until - time.monotonic()

    def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """One POST: (status, body), every wait bounded (see the class docstring)."""
        import http.client
        import socket

        budget = min(self.request_timeout_s, self._left())
        if budget <= 0:
            raise TimeoutError("the judge's deadline has passed")
        u = self._parts
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=min(self.connect_timeout_s, budget))
        cut = threading.Event()

        def shut() -> None:  # the attempt's time is up: unblock any read by shutting the socket
            cut.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(budget, shut)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            conn.sock.settimeout(min(self.read_timeout_s, budget))
            path = u.path + (f"?{u.query}" if u.query else "")
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER_BYTES + 1)
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            if cut.is_set():
                raise TimeoutError(f"no complete answer within {budget:.0f} s") from None
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise TimeoutError(f"no data for {min(self.read_timeout_s, budget):.0f} s") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if cut.is_set():
            raise TimeoutError(f"no complete answer within {budget:.0f} s")
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return status, data

    def _post(self, text: str) -> str:
        import http.client

        body = json.dumps({
            "model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": self.prompt},
                         {"role": "user", "content": "Response to label:\n<<<\n" + self._clip(text) + "\n>>>"}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                pause = self.backoff_s * 2 ** (attempt - 1)
                if pause >= self._left():
                    break
                with self._lock:
                    self.s.retries += 1
                time.sleep(pause)
            if self._left() <= 0:
                with self._lock:
                    self.s.deadline_hit = True
                last = "the judge's deadline passed"
                break
            with self._lock:
                self.s.requests += 1
            try:
                status, data = self._attempt(body, headers)
            except (OSError, http.client.HTTPException, ValueError) as exc:  # TimeoutError is an OSError
                last = f"{type(exc).__name__}: {exc}"
                if self._left() <= 0:
                    with self._lock:
                        self.s.deadline_hit = True
                continue
            if status != 200:
                last = f"HTTP {status}: {data[:200].decode(errors='replace')}"
                if status != 429 and status < 500:
                    break  # a client error does not get better by asking again
                continue
            try:
                content = json.loads(data.decode("utf-8"))["choices"][0]["message"]["content"]
                return str(content or "")
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                last = f"malformed reply body ({type(exc).__name__}): {data[:120].decode(errors='replace')}"
        raise JudgeRequestError(f"judge request failed after {attempt + 1} attempt(s): {last}")

    def _one(self, key: str, text: str) -> Optional[Labels]:
        if self._left() <= 0:
            with self._lock:
                self.s.failed += 1
                self.s.deadline_hit = True
            return None
        try:
            raw = self._post(text)
        except JudgeRequestError as exc:
            with self._lock:
                self.s.failed += 1
                if len(self.s.errors) < 5:
                    self.s.errors.append(str(exc)[:300])
            return None  # not cached: a later run asks again
        labels = parse_labels(raw)
        with self._lock:
            if labels is None:  # counted, never cached: a later run (a better judge) asks again
                self.s.parse_failures += 1
                if len(self.s.examples) < 5:
                    self.s.examples.append(raw[:200])
                return None
            self.s.labelled += 1
            self._cache[key] = labels
            if self.cache_path:
                with self.cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "labels": labels, "raw": raw[:2000]}) + "\n")
        return labels

    def label(self, texts: Sequence[str]) -> list[Labels]:
        """Labels of each text; a parse or request failure gives every behaviour None."""
        keys = [response_key(self.model, t) for t in texts]
        self.s.responses += len(texts)
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k in self._cache:
                self.s.cached += 1
            elif k not in todo:
                todo[k] = t
        got: dict[str, Optional[Labels]] = {}
        items = list(todo.items())
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            for s in range(0, len(items), self.batch_size):
                chunk = items[s:s + self.batch_size]
                results = list(pool.map(lambda kv: self._one(*kv), chunk))
                got.update({k: labels for (k, _), labels in zip(chunk, results)})
        none: Labels = {b: None for b in BEHAVIOURS}
        return [dict(self._cache.get(k) or got.get(k) or none) for k in keys]

    def stats(self) -> dict:
        return {k: v for k, v in self.s.__dict__.items()}

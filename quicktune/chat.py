"""``quicktune chat``: talk to an exported GGUF in the terminal, through llama.cpp.

The prompt is rendered with the chat template stored in the GGUF (the one the model
was trained with, checked at export) and tokenized by llama.cpp from the GGUF's own
vocabulary; an answer ends at the end-of-turn or EOS token, as in Ollama. No torch.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune import llamacpp
from quicktune.data.system_prompt import served_prompt
from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens
from quicktune.errors import QuicktuneError
from quicktune.export.exporter import chat_context, trained_context
from quicktune.models import read_gguf_fields
from quicktune.recipe import load_recipe
from quicktune.runs import exported_gguf, pick_quantization, read_manifest, resolve_run, run_label
from quicktune.templates import TemplateError

MIN_ANSWER = 16  # tokens: below this a message leaves no room to answer
HELP = "/reset starts over · /system TEXT sets the system prompt (/system alone clears it) · /exit leaves"


@dataclass
class ChatTarget:
    gguf: Path
    system: str | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    num_ctx: int = 4096
    label: str = ""


def resolve_target(ref: str, runs_root: Path, quant: str | None, num_ctx: int | None = None) -> ChatTarget:
    """A run (any form ``resolve_run`` takes) with its recipe's settings, or a GGUF file as it is.

    A GGUF inside a run's export folder is that run with that quantization."""
    path = Path(ref)
    if path.suffix == ".gguf" and not path.is_file():
        raise QuicktuneError(f"{ref}: no such GGUF file")
    try:
        run_dir = resolve_run(ref, runs_root)
    except QuicktuneError:
        if path.suffix != ".gguf":
            raise
        return ChatTarget(path, num_ctx=num_ctx or _gguf_context(path), label=path.name)
    manifest = read_manifest(run_dir)
    ggufs = (manifest.get("export") or {}).get("ggufs") or {}
    if path.suffix == ".gguf":  # the file names the quantization
        quant = next((q for q, item in ggufs.items() if (run_dir / item["file"]).resolve() == path.resolve()), None)
        if quant is None:  # a GGUF the export did not write: as it is
            return ChatTarget(path, num_ctx=num_ctx or _gguf_context(path), label=path.name)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    wanted = pick_quantization(run_dir, manifest, quant)
    gguf = exported_gguf(run_dir, manifest, wanted)
    return ChatTarget(
        gguf,
        system=served_prompt(recipe, manifest),  # the Modelfile's SYSTEM: what training used
        temperature=recipe.export.temperature,
        top_p=recipe.export.top_p,
        num_ctx=num_ctx or _modelfile_context(run_dir, manifest, wanted) or chat_context(recipe, gguf)[0],
        label=f"{run_label(run_dir)} ({wanted})",
    )


def _modelfile_context(run_dir: Path, manifest: dict, quant: str) -> int | None:
    """num_ctx of the quantization's Modelfile, as Ollama will run it (it may be edited, or older)."""
    name = ((manifest.get("export") or {}).get("modelfiles") or {}).get(quant)
    path = run_dir / name if name else None
    found = (
        re.search(r"^PARAMETER num_ctx (\d+)\s*$", path.read_text(encoding="utf-8"), re.M)
        if path and path.is_file()
        else None
    )
    return int(found.group(1)) if found else None


def _gguf_context(gguf: Path) -> int:
    """A GGUF no run exported: 4096 tokens, or less when the model was trained on less."""
    llamacpp.check_gguf(gguf)  # a damaged file is named as such before its header is read for the context

    return min(4096, trained_context(gguf) or 4096)


@dataclass
class ChatSession:
    llm: Any
    tokenizer: Any  # ChatTokenizer with the GGUF's template and special tokens (no vocabulary needed)
    stop_ids: set[int]
    add_bos: bool
    system: str | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    history: list[dict[str, str]] = field(default_factory=list)
    dropped: int = 0  # exchanges the last reply forgot to stay inside the context
    cut_by_context: bool = False  # the last answer stopped because the context was full

    def messages(self, user: str, history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *(self.history if history is None else history), {"role": "user", "content": user}]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            text = self.tokenizer.render(messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise QuicktuneError(f"the GGUF's chat template cannot render this conversation: {exc}") from None
        bos = self.tokenizer.special.get("bos_token")
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def reply(self, user: str) -> Iterator[str]:
        """Fit the conversation into the context, then stream the answer's text (a generator);
        the exchange joins the history once it is complete. ``dropped`` says how many of the
        oldest exchanges had to be forgotten for the prompt and an answer to fit."""
        n_ctx = self.llm.n_ctx()
        room = min(self.max_tokens, n_ctx // 4)  # kept free for the answer
        tokens = self._fit(user, n_ctx - room)
        if len(tokens) + min(room, MIN_ANSWER) > n_ctx:  # only when no history is left to forget
            raise QuicktuneError(
                f"this message needs {len(tokens)} tokens with the system prompt; the context holds {n_ctx}",
                hint="Send a shorter message, or chat with a larger context (--ctx).",
            )
        return self._stream(user, tokens, min(self.max_tokens, n_ctx - len(tokens)))

    def _fit(self, user: str, limit: int) -> list[int]:
        """The prompt's tokens with as many of the latest exchanges as fit in ``limit`` tokens (all of them when
        they fit); the older ones are forgotten (``history`` loses them, ``dropped`` counts them).

        Linear in the context, not in the history: the exchanges' texts are counted newest first, each text
        only up to what could still fit, and counting stops at the first that cannot; that bound (a text
        counts at least the tokens it has alone, less one at each seam) leaves a handful of exact renders
        (a binary search) over a prompt no longer than the context."""
        pairs = len(self.history) // 2
        self.dropped = 0
        if not pairs:
            return self.prompt_tokens(self.messages(user))

        def kept(count: int) -> list[int]:
            return self.prompt_tokens(self.messages(user, self.history[2 * (pairs - count):]))

        fitting = {0: kept(0)}  # exchanges kept -> the prompt's tokens, for counts known to fit
        room, most = limit - len(fitting[0]), 0
        for index in range(pairs - 1, -1, -1):
            for turn in self.history[2 * index: 2 * index + 2]:
                text = turn["content"][: max(room, 0) * 64 + 64].encode("utf-8")  # more is not needed to overflow
                room -= max(0, len(self.llm.tokenize(text, add_bos=False, special=False)) - 1)
            if room < 0:
                break
            most += 1
        low, high, probe = 0, most, most  # the most exchanges that fit lie in [low, high]; all of them first
        while low < high:
            tokens = kept(probe)
            if len(tokens) <= limit:
                low, fitting[probe] = probe, tokens
            else:
                high = probe - 1
            probe = (low + high + 1) // 2
        self.dropped = pairs - low
        self.history = self.history[2 * self.dropped:]
        return fitting[low]

    def _stream(self, user: str, tokens: list[int], budget: int) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer = []
        self.cut_by_context = False
        for token in self.llm.generate(tokens, temp=self.temperature, top_p=self.top_p, top_k=40):  # top_k as in Ollama
            if token in self.stop_ids:
                break
            piece = decoder.decode(self.llm.detokenize([token]))
            answer.append(piece)
            yield piece
            if len(answer) >= budget:
                self.cut_by_context = budget < self.max_tokens
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            answer.append(tail)
            yield tail
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(answer)}]

    def reset(self) -> None:
        self.history = []


def open_session(target: ChatTarget, *, system: str | None = None, max_tokens: int = 512) -> ChatSession:
    fields = read_gguf_fields(target.gguf, "tokenizer.")
    template = fields.get("tokenizer.chat_template")
    if not template:
        raise QuicktuneError(f"{target.gguf.name} has no chat template", hint="Export it with quicktune export.")
    tokenizer = ChatTokenizer(None, template, gguf_special_tokens(fields), str(target.gguf))
    llm = llamacpp.load(target.gguf, n_ctx=target.num_ctx)
    stop_ids = {llm.token_eos()}
    end_of_turn = tokenizer.end_of_turn()
    if end_of_turn:
        ids = llm.tokenize(end_of_turn.encode("utf-8"), add_bos=False, special=True)
        if len(ids) == 1:
            stop_ids.add(ids[0])
    return ChatSession(
        llm,
        tokenizer,
        stop_ids,
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token")),
        system=system if system is not None else target.system,
        temperature=target.temperature,
        top_p=target.top_p,
        max_tokens=max_tokens,
    )


def interactive(session: ChatSession, console, label: str) -> None:
    console.print(f"[bold]chatting with {label}[/], a {session.llm.n_ctx()}-token context · {HELP}")
    if session.system:
        console.print(f"[dim]system: {session.system}[/]")
    while True:
        try:
            line = console.input("[bold cyan]you ›[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            console.print("[dim]conversation cleared[/]")
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system") :].strip() or None
            session.reset()
            console.print(f"[dim]system prompt {'set' if session.system else 'cleared'}; conversation cleared[/]")
            continue
        if text.startswith("/"):
            console.print(f"[yellow]unknown command[/] {text.split()[0]} · {HELP}")
            continue
        try:
            pieces = session.reply(text)
        except QuicktuneError as exc:
            console.print(f"[yellow]{exc.message}[/] · {exc.hint}")
            continue
        if session.dropped:
            console.print(
                f"[dim](the conversation outgrew the {session.llm.n_ctx()}-token context: forgot the oldest "
                f"{session.dropped} exchange{'s' if session.dropped > 1 else ''}; /reset starts over)[/]"
            )
        console.print("[bold green]model ›[/] ", end="")
        try:
            for piece in pieces:
                console.out(piece, end="", highlight=False)
        except KeyboardInterrupt:
            console.print("[dim] (stopped)[/]", end="")
        if session.cut_by_context:
            console.print("[dim] (cut: the context is full; /reset starts over)[/]", end="")
        console.print()

"""``quicktune chat``: talk to an exported GGUF in the terminal, through llama.cpp.

The prompt is rendered with the chat template stored in the GGUF (the one the model
was trained with, checked at export) and tokenized by llama.cpp from the GGUF's own
vocabulary; an answer ends at the end-of-turn or EOS token, as in Ollama. No torch.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

HELP = "/reset starts over · /system TEXT sets the system prompt (/system alone clears it) · /exit leaves"


@dataclass
class ChatTarget:
    gguf: Path
    system: str | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    num_ctx: int = 4096
    label: str = ""


def resolve_target(ref: str, runs_root: Path, quant: str | None) -> ChatTarget:
    """A GGUF file as it is, or a run folder's exported GGUF with the recipe's settings."""
    path = Path(ref)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise QuicktuneError(f"{ref}: no such GGUF file")
        return ChatTarget(path, label=path.name)
    from quicktune.recipe import load_recipe
    from quicktune.train.runs import read_manifest, resolve_run, run_label

    run_dir = resolve_run(ref, runs_root)
    manifest = read_manifest(run_dir)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    ggufs = (manifest.get("export") or {}).get("ggufs") or {}
    if not ggufs:
        raise QuicktuneError(f"{run_dir} has not been exported yet", hint=f"Run: quicktune export {ref}")
    wanted = quant or next((q for q in recipe.export.quantizations if q in ggufs), "f16")
    if wanted not in ggufs:
        raise QuicktuneError(
            f"{run_dir} has no {wanted} GGUF (exported: {', '.join(ggufs)})",
            hint=f"Add it with: quicktune export {ref} --quant {wanted}",
        )
    return ChatTarget(
        run_dir / ggufs[wanted]["file"],
        system=recipe.export.system or recipe.data.system_prompt,
        temperature=recipe.export.temperature,
        top_p=recipe.export.top_p,
        num_ctx=max(recipe.export.num_ctx or recipe.model.max_seq_length, 2048),
        label=f"{run_label(run_dir)} ({wanted})",
    )


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

    def messages(self, user: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user}]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        from quicktune.templates import TemplateError

        try:
            text = self.tokenizer.render(messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise QuicktuneError(f"the GGUF's chat template cannot render this conversation: {exc}") from None
        bos = self.tokenizer.special.get("bos_token")
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def reply(self, user: str) -> Iterator[str]:
        """Stream the answer's text; the exchange joins the history once it is complete."""
        messages = self.messages(user)
        tokens = self.prompt_tokens(messages)
        while len(tokens) + 16 > self.llm.n_ctx() and len(self.history) >= 2:
            self.history = self.history[2:]  # forget the oldest exchange
            messages = self.messages(user)
            tokens = self.prompt_tokens(messages)
        if len(tokens) + 16 > self.llm.n_ctx():
            raise QuicktuneError(f"the prompt ({len(tokens)} tokens) does not fit the context ({self.llm.n_ctx()})")
        budget = min(self.max_tokens, self.llm.n_ctx() - len(tokens))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer = []
        count = 0
        for token in self.llm.generate(tokens, temp=self.temperature, top_p=self.top_p, top_k=40):  # top_k as in Ollama
            if token in self.stop_ids:
                break
            piece = decoder.decode(self.llm.detokenize([token]))
            answer.append(piece)
            yield piece
            count += 1
            if count >= budget:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            answer.append(tail)
            yield tail
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(answer)}]

    def reset(self) -> None:
        self.history = []


def open_session(target: ChatTarget, *, system: str | None = None, max_tokens: int = 512) -> ChatSession:
    from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens
    from quicktune.export import llamacpp
    from quicktune.models import read_gguf_fields

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
    console.print(f"[bold]chatting with {label}[/] · {HELP}")
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
        console.print("[bold green]model ›[/] ", end="")
        try:
            for piece in session.reply(text):
                console.out(piece, end="", highlight=False)
        except KeyboardInterrupt:
            console.print("[dim] (stopped)[/]", end="")
        console.print()

"""method grpo's rows: each conversation's prompt (every turn before its last answer), rendered and
tokenized as eval and the exported model see it, and that answer as the reference the rewards score
against. The rows are checked (``quicktune.data.check``) and split like SFT's; then every reward is
tried on the reference answers before any model loads (``quicktune.rewards.check_on_references``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quicktune.data.records import Example
from quicktune.data.report import PreparedData
from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.recipe import Recipe
from quicktune.rewards import RewardReport, check_on_references, resolve


@dataclass(frozen=True)
class PromptRow:
    """One GRPO prompt: where it came from, its turns, their rendering and ids, and the reference answer."""

    origin: str
    messages: tuple[dict[str, str], ...]
    prompt: str  # the chat-rendered text the model continues (what a reward receives as its prompt)
    prompt_ids: list[int]
    reference: str | None

    def for_trainer(self) -> dict[str, str | None]:
        """The dataset row TRL's GRPOTrainer reads: the prompt, and the columns every reward receives."""
        return {"prompt": self.prompt, "reference": self.reference, "origin": self.origin}


@dataclass
class PreparedPrompts(PreparedData):
    """SFT's prepared data (checked, split, tokenized) with each row as a GRPO prompt."""

    train_prompts: list[PromptRow] = field(default_factory=list)
    eval_prompts: list[PromptRow] = field(default_factory=list)
    rewards: RewardReport | None = None
    stops: list[int] = field(default_factory=list)  # the trained template's end-of-turn and eos ids: answers end there


def prompt_rows(examples: list[Example], tokenizer: ChatTokenizer | None) -> list[PromptRow]:
    """Each example split into its prompt and its last answer (None when it ends on the user's turn)."""
    rows = []
    for example in examples:
        turns = example.as_dicts()
        answer = turns[-1]["content"] if turns and turns[-1]["role"] == "assistant" else None
        prompt_turns = turns[:-1] if answer is not None else turns
        if tokenizer is not None:
            text = tokenizer.render(prompt_turns, add_generation_prompt=True)
            ids = tokenizer.encode_batch([text])[0].ids
        else:
            text, ids = prompt_turns[-1]["content"] if prompt_turns else "", []
        rows.append(PromptRow(example.origin, tuple(prompt_turns), text, list(ids), answer))
    return rows


def prepare_prompts(recipe: Recipe, prepared: PreparedData, tokenizer: ChatTokenizer | None) -> PreparedPrompts:
    """``prepared`` with its rows as prompts, and the recipe's rewards resolved and tried on the train
    rows' reference answers: a reward that cannot run is an error (``RewardError``, exit 2); one that
    scores a reference below its top is a warning in the data report."""
    train, evaluation = prompt_rows(prepared.train, tokenizer), prompt_rows(prepared.eval, tokenizer)
    rewards = resolve(recipe.grpo.rewards, None)
    encode = (lambda texts: [e.ids for e in tokenizer.encode_batch(texts)]) if tokenizer is not None else None
    report = check_on_references(rewards, [r.prompt for r in train], [r.reference for r in train],
                                 [r.origin for r in train], encode)
    prepared.report.warnings.extend(report.warnings)
    prepared.report.rewards, prepared.report.reward_rows = dict(report.means), report.checked_rows
    return PreparedPrompts(prepared.train, prepared.eval, prepared.train_tokens, prepared.eval_tokens,
                           prepared.report, train_prompts=train, eval_prompts=evaluation, rewards=report,
                           stops=sorted(stop_token_ids(tokenizer)) if tokenizer is not None else [])

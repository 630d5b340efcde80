"""Every chat template in llama.cpp's corpus (the official templates of ~70 models, from the
llama-cpp-python sdist): quicktune renders it as transformers does, and either derives an Ollama
TEMPLATE that Go's text/template renders like the chat template, or refuses with a named reason.
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from quicktune import templates
from quicktune.data.tokenizer import ChatTokenizer
from quicktune.export import ollama

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def _msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


CONVERSATIONS = [
    _msgs(("user", "Hi!")),
    _msgs(("system", "Be brief."), ("user", "What is 2+2?")),
    _msgs(("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3?")),
    _msgs(("user", "  spaced out  \n"), ("assistant", " ok "), ("user", "next")),
]

# Templates whose conversation is not "literal text between messages", with the reason given.
REFUSED = {
    "Qwen-QwQ-32B": "renders a",  # strips earlier answers' reasoning: history differs from the live turn
    "fireworks-ai-llama-3-firefunction-v2": "'functions' is undefined",  # needs a `functions` variable
}


def _transformers(source: str, conversation, tools):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [conversation], chat_template=source, add_generation_prompt=True, tools=tools, **SPECIAL,
        **templates.server_context(),  # the date llama-server gives every template, as quicktune does
    )
    return rendered[0]


def _outcome(render):
    try:
        return render()
    except Exception as exc:  # a template refusing the conversation: compared as "raises"
        return exc


def _corpus(official_templates):
    paths = sorted(official_templates.glob("*.jinja"))
    assert len(paths) >= 60, f"expected llama.cpp's ~70 templates, found {len(paths)}"
    return paths


def test_quicktune_renders_every_template_as_transformers(official_templates):
    tally: Counter[str] = Counter()
    differences = []
    for path in _corpus(official_templates):
        source = path.read_text(encoding="utf-8")
        for index, conversation in enumerate(CONVERSATIONS):
            expected = _outcome(
                lambda source=source, conversation=conversation: _transformers(source, conversation, None)
            )
            if isinstance(expected, Exception) and "tools" in templates.template_variables(source):
                # quicktune renders a tool-use template with an empty tool list, as transformers does when given one
                expected = _outcome(
                    lambda source=source, conversation=conversation: _transformers(source, conversation, [])
                )
            got = _outcome(
                lambda source=source, conversation=conversation: templates.render(
                    source, conversation, add_generation_prompt=True, special_tokens=SPECIAL
                )
            )
            if isinstance(expected, Exception) and isinstance(got, Exception):
                tally["both raise"] += 1
            elif got == expected:
                tally["equal"] += 1
            else:
                tally["differ"] += 1
                differences.append(f"{path.stem} #{index}: quicktune {got!r:.120} != transformers {expected!r:.120}")
    print(dict(tally))
    assert not differences, "\n".join(differences)
    assert tally["equal"] >= 250


def test_every_template_gives_a_checked_modelfile_template_or_a_named_refusal(official_templates):
    derived, refused = {}, {}
    for path in _corpus(official_templates):
        tokenizer = ChatTokenizer(None, path.read_text(encoding="utf-8"), {**SPECIAL}, path.stem)
        try:
            derived[path.stem] = (ollama.read_format(tokenizer.render, bos="<s>", add_bos=False), tokenizer)
        except ollama.TemplateUnsupported as exc:
            refused[path.stem] = str(exc)
    print(f"{len(derived)} derived, {len(refused)} refused: {refused}")
    assert set(refused) == set(REFUSED), refused
    for stem, why in REFUSED.items():
        assert why in refused[stem]
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): Ollama renders TEMPLATE with it")
    mismatched = []
    for stem, (fmt, tokenizer) in derived.items():
        renderable = [c for c in CONVERSATIONS
                      if not isinstance(_outcome(lambda tokenizer=tokenizer, c=c: tokenizer.render(c)), Exception)]
        # A Go TEMPLATE cannot trim: for a template that trims, a client sends messages stripped (fmt.trims)
        sent = [fmt.client_messages(c) for c in renderable]
        for conversation, got in zip(renderable, ollama.go_render(fmt.go_template(), sent)):
            if fmt.bos + got != tokenizer.render(conversation, add_generation_prompt=True):
                mismatched.append(f"{stem}: {conversation}")
    assert not mismatched, "\n".join(mismatched)

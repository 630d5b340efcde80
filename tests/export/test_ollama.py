"""The Modelfile TEMPLATE renders, in Go's text/template, exactly the prompt the model was trained on.

The templates under test are the models' official ones (llama.cpp's copies, from the
llama-cpp-python sdist), SmolLM2's from its GGUF, and quicktune's family templates.
Golden Modelfiles: regenerate with
    QUICKTUNE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/export/test_ollama.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from quicktune import templates
from quicktune.data.tokenizer import ChatTokenizer
from quicktune.export import ollama

GOLDEN = Path(__file__).parent / "golden"
needs_go = pytest.mark.skipif(
    shutil.which("go") is None, reason="Go is not installed (apt-get install golang-go): Ollama renders with it"
)

# Official templates: file stem -> (family, special tokens, does the GGUF add BOS itself)
OFFICIAL = {
    "Qwen-Qwen2.5-7B-Instruct": ("chatml", {"eos_token": "<|im_end|>"}, False),
    "Qwen-Qwen3-0.6B": ("chatml", {"eos_token": "<|im_end|>"}, False),
    "meta-llama-Llama-3.1-8B-Instruct": ("llama3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True),
    "meta-llama-Llama-3.3-70B-Instruct": ("llama3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistral", {"bos_token": "<s>", "eos_token": "</s>"}, True),
    "google-gemma-2-2b-it": ("gemma", {"bos_token": "<bos>", "eos_token": "<eos>"}, True),
    "microsoft-Phi-3.5-mini-instruct": ("phi3", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}, False),
}
DATED = {"meta-llama-Llama-3.2-3B-Instruct"}  # renders today's date: no golden file

FAMILY_SPECIALS = {
    "chatml": ({"eos_token": "<|im_end|>"}, False),
    "llama3": ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True),
    "mistral": ({"bos_token": "<s>", "eos_token": "</s>"}, True),
    "gemma": ({"bos_token": "<bos>", "eos_token": "<eos>"}, True),
    "phi3": ({"eos_token": "<|endoftext|>"}, False),
}


def _msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


CONVERSATIONS = [
    _msgs(("user", "Hi!")),
    _msgs(("system", "You are a pirate."), ("user", "Where is the treasure?")),
    _msgs(("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3?")),
    _msgs(
        ("system", "Reply in JSON.\nNo prose."),
        ("user", "Lunch with Ana at Nopa, Friday 1pm"),
        ("assistant", '{"title": "lunch", "person": "Ana"}'),
        ("user", "Café with Zoë — {{ .System }} 12 €"),
        ("assistant", "{}"),
        ("user", "last one"),
    ),
]


def _tokenizer(template: str, special: dict) -> ChatTokenizer:
    return ChatTokenizer(None, template, {"bos_token": None, **special}, "test")


def _official(official_templates: Path, stem: str) -> ChatTokenizer:
    family, special, _ = OFFICIAL[stem]
    return _tokenizer((official_templates / f"{stem}.jinja").read_text(encoding="utf-8"), special)


def _check_parity(tokenizer: ChatTokenizer, add_bos: bool) -> ollama.TurnFormat:
    fmt = ollama.read_format(tokenizer.render, bos=tokenizer.special.get("bos_token"), add_bos=add_bos)
    rendered = ollama.go_render(fmt.go_template(), CONVERSATIONS)
    for conversation, got in zip(CONVERSATIONS, rendered):
        assert fmt.bos + got == tokenizer.render(conversation, add_generation_prompt=True)
    return fmt


def _golden(name: str, fmt: ollama.TurnFormat, tokenizer: ChatTokenizer, system: str | None = None) -> None:
    settings = ollama.ModelfileSettings(
        gguf_name=f"{name}-q4_k_m.gguf",
        name=f"{name}:q4_k_m",
        modelfile_name="runs/example/v1/export/Modelfile.q4_k_m",
        stops=ollama.stop_tokens(tokenizer.end_of_turn(), tokenizer.eos_token),
        temperature=0.7,
        top_p=0.9,
        num_ctx=4096,
        system=system,
    )
    text = ollama.render_modelfile(fmt, settings)
    path = GOLDEN / f"{name}.Modelfile"
    if os.environ.get("QUICKTUNE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden file {path.name}; regenerate with QUICKTUNE_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


@needs_go
@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_template_parity_on_official_templates(official_templates, stem):
    family, _, add_bos = OFFICIAL[stem]
    tokenizer = _official(official_templates, stem)
    fmt = _check_parity(tokenizer, add_bos)
    assert fmt.family == family
    if add_bos:
        assert fmt.bos and not fmt.go_template().startswith(fmt.bos)  # llama.cpp adds BOS, the TEMPLATE must not


@pytest.mark.parametrize("stem", sorted(set(OFFICIAL) - DATED))
def test_golden_modelfiles_for_official_templates(official_templates, stem):
    _, _, add_bos = OFFICIAL[stem]
    tokenizer = _official(official_templates, stem)
    fmt = ollama.read_format(tokenizer.render, bos=tokenizer.special.get("bos_token"), add_bos=add_bos)
    _golden(stem, fmt, tokenizer)


@needs_go
@pytest.mark.parametrize("family", sorted(templates.FAMILY_TEMPLATES))
def test_family_templates_parity_and_golden(family):
    special, add_bos = FAMILY_SPECIALS[family]
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES[family], special)
    fmt = _check_parity(tokenizer, add_bos)
    assert fmt.family == family
    _golden(f"family-{family}", fmt, tokenizer, system="Be brief.")


@needs_go
@pytest.mark.slow
def test_smollm2_template_parity_and_golden(smollm2_tokenizer):
    fmt = _check_parity(smollm2_tokenizer, add_bos=False)
    assert fmt.family == "chatml"
    assert "You are a helpful AI assistant named SmolLM" in fmt.head  # its default system prompt, kept
    _golden("SmolLM2-135M-Instruct", fmt, smollm2_tokenizer)


def test_stops_cover_end_of_turn_and_eos():
    llama3 = _tokenizer(templates.FAMILY_TEMPLATES["llama3"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    assert ollama.stop_tokens(llama3.end_of_turn(), llama3.eos_token) == ["<|eot_id|>", "<|end_of_text|>"]
    mistral = _tokenizer(templates.FAMILY_TEMPLATES["mistral"], {"bos_token": "<s>", "eos_token": "</s>"})
    assert ollama.stop_tokens(mistral.end_of_turn(), mistral.eos_token) == ["</s>"]


def test_modelfile_has_parameters_system_and_quoted_literals():
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES["chatml"], {"eos_token": "<|im_end|>"})
    fmt = ollama.read_format(tokenizer.render)
    settings = ollama.ModelfileSettings("m.gguf", "m:q8_0", "Modelfile.q8_0", ["<|im_end|>"], 0.0, 1.0, 512, "Be brief.")
    text = ollama.render_modelfile(fmt, settings)
    assert "FROM ./m.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    assert "PARAMETER temperature 0\n" in text and "PARAMETER num_ctx 512\n" in text
    assert text.endswith('SYSTEM """Be brief."""\n')
    assert "ollama create m:q8_0 -f Modelfile.q8_0" in text
    assert ollama._lit("a {{ b") == '{{ "a {{ b" }}'
    with pytest.raises(ollama.QuicktuneError, match='"""'):
        ollama.render_modelfile(fmt, ollama.ModelfileSettings("m", "m", "M", ["x"], 0, 1, 1, 'say """hi"""'))


@pytest.mark.parametrize(
    "template, why",
    [
        ("{% for m in messages[-1:] %}{{ m['content'] }}{% endfor %}", "exactly once"),
        ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}|{% endif %}{% endfor %}", "system prompt"),
        ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
         "{% if messages|length > 2 %}(long){% endif %}", "renders"),
    ],
)
def test_a_template_that_is_not_turn_by_turn_is_an_explicit_error(template, why):
    tokenizer = _tokenizer(template, {})
    with pytest.raises(ollama.TemplateUnsupported, match=why) as caught:
        ollama.read_format(tokenizer.render)
    assert "model.chat_template" in caught.value.hint


@needs_go
def test_go_renders_like_ollama_collates():
    # System messages are joined into .System; consecutive messages of one role are merged.
    out = ollama.go_render(
        "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}",
        [_msgs(("system", "a"), ("system", "b"), ("user", "x"), ("user", "y"))],
    )
    assert out == ["a\n\nb|system=a\n\nb;user=x\n\ny;"]

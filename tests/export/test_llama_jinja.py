"""Which renderer Ollama uses for an export, and llama.cpp's own rendering of the Jinja template.

Ollama (v0.30+) lets llama-server render the GGUF's chat template itself when that template
has tools or thinking and the Modelfile TEMPLATE does not (export/renderer.py). For those
exports the prompt is what llama.cpp's engine renders, checked here with the real llama.cpp
code of the installed llama-cpp-python (export/llama_template.py builds it once).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from quicktune import templates
from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens
from quicktune.export import ollama
from quicktune.export.llama_template import (
    CheckerUnavailable,
    LlamaRendering,
    build_checker,
    jinja_parity,
    llama_render,
)
from quicktune.export.renderer import GO, JINJA, go_template_fields, ollama_renderer
from quicktune.models import read_gguf_fields, resolve_model
from tests.conftest import SMOLLM2, _test_cache_root
from tests.export.test_ollama import CONVERSATIONS, FAMILY_SPECIALS, OFFICIAL, _official, _tokenizer

# The goldens' official templates: the renderer Ollama's rule picks (tools/thinking -> Jinja).
EXPECTED_RENDERER = {
    "Qwen-Qwen2.5-7B-Instruct": (JINJA, "template has tools"),
    "Qwen-Qwen3-0.6B": (JINJA, "template has tools and thinking"),
    "meta-llama-Llama-3.1-8B-Instruct": (JINJA, "template has tools"),
    "meta-llama-Llama-3.2-3B-Instruct": (JINJA, "template has tools"),
    "meta-llama-Llama-3.3-70B-Instruct": (JINJA, "template has tools"),
    "mistralai-Mistral-Nemo-Instruct-2407": (JINJA, "template has tools"),
    "google-gemma-2-2b-it": (GO, "template has no tools or thinking"),
    "microsoft-Phi-3.5-mini-instruct": (GO, "template has no tools or thinking"),
}
# llama.cpp passes today's date as date_string; these templates print it in the system header,
# where training (no date_string) printed their default. Llama 3.2's calls strftime_now in both.
DEFAULT_DATE = {"meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"}  # print date_string


def _format(tokenizer: ChatTokenizer, add_bos: bool) -> ollama.TurnFormat:
    return ollama.read_format(tokenizer.render, bos=tokenizer.special.get("bos_token"), add_bos=add_bos)


@pytest.fixture(scope="session")
def checker(llama_cpp_src) -> Path:
    """The checker, built once into the tests' persistent cache (about 2 CPU-minutes)."""
    try:
        return build_checker(llama_cpp_src, cache_root=_test_cache_root())
    except CheckerUnavailable as exc:
        pytest.skip(f"skipped: {exc}")


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", sorted(EXPECTED_RENDERER))
def test_renderer_ollama_uses_for_official_templates(official_templates, stem):
    tokenizer = _official(official_templates, stem)
    fmt = _format(tokenizer, OFFICIAL[stem][2])
    renderer = ollama_renderer(tokenizer.chat_template, fmt.go_template())
    assert (renderer.renderer, renderer.reason) == EXPECTED_RENDERER[stem]
    assert renderer.label.startswith("llama.cpp Jinja (" if renderer.renderer == JINJA else "Go TEMPLATE (")


@pytest.mark.parametrize("family", sorted(templates.FAMILY_TEMPLATES))
def test_family_templates_are_rendered_by_the_go_template(family):
    special, add_bos = FAMILY_SPECIALS[family]
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES[family], special)
    fmt = _format(tokenizer, add_bos)
    assert ollama_renderer(tokenizer.chat_template, fmt.go_template()).renderer == GO
    # The rule reduces to "does the Jinja template have tools/thinking" because quicktune's
    # TEMPLATE reads no field that gives Ollama a capability (.Tools, .Suffix, .Thinking).
    assert go_template_fields(fmt.go_template()) <= {"system", "messages", "role", "content"}


def test_smollm2_template_is_rendered_by_the_go_template():
    fields = read_gguf_fields(resolve_model(SMOLLM2).path, "tokenizer.")
    template = fields["tokenizer.chat_template"]
    assert ollama_renderer(template, "{{ .System }}{{ range .Messages }}{{ .Content }}{{ end }}").renderer == GO


def test_rule_edges_follow_ollamas_source():
    go = '{{ range .Messages }}{{ if eq .Role "user" }}{{ .Content }}{{ end }}{{ end }}'
    tools = "{% if tools %}{{ tools }}{% endif %}{{ messages[0]['content'] }}"
    assert ollama_renderer(tools, go).renderer == JINJA
    assert ollama_renderer(None, go).renderer == GO  # a GGUF without a chat template
    assert ollama_renderer(tools, go, go_template_env="1").renderer == GO
    assert ollama_renderer("{{ messages[0]['content'] }}", go, go_template_env="false").renderer == JINJA
    assert ollama_renderer(tools, go, go_template_env="yes please").renderer == GO  # unparsable: true
    thinking = "{{ messages[0]['content'] }}{% if add_generation_prompt %}<think>\n</think>{% endif %}"
    assert ollama_renderer(thinking, go).reason == "template has thinking"
    # A TEMPLATE with a real tool round trip keeps Go against a Jinja template whose tool
    # support is weaker (no tool results), even with more capabilities there.
    go_tools = (
        '{{ if .Tools }}{{ .Tools }}{{ end }}{{ range .Messages }}{{ if eq .Role "tool" }}tool_response'
        "{{ .Content }}{{ else }}{{ range .ToolCalls }}{{ .Function.Name }}{{ end }}{{ end }}{{ end }}"
    )
    weaker = "{% if tools %}{{ tools }}{% endif %}{% if thinking %}<think></think>{% endif %}{{ messages }}"
    assert ollama_renderer(weaker, go_tools).renderer == GO
    stronger = weaker + (
        "{% for message in messages %}{{ message.tool_calls }}"
        "{% if message.role == 'tool' %}{{ message.content }}{% endif %}{% endfor %}"
    )
    assert ollama_renderer(stronger, go_tools).renderer == JINJA
    # Same capabilities (tools): Jinja only when it alone round-trips tool calls.
    assert ollama_renderer("{{ tools }}" + "{{ messages }}", go_tools).renderer == GO


# --- llama.cpp's engine, on the real code ---------------------------------------------------------


def _all_conversations(fmt: ollama.TurnFormat) -> list[list[dict[str, str]]]:
    return [fmt.client_messages(c) for c in ollama.CHECK_CONVERSATIONS + CONVERSATIONS]


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_llama_cpp_renders_official_templates_as_training_did(official_templates, checker, stem):
    _, special, add_bos = OFFICIAL[stem]
    tokenizer = _official(official_templates, stem)
    fmt = _format(tokenizer, add_bos)
    conversations = _all_conversations(fmt)
    rendering = llama_render(
        conversations,
        template=tokenizer.chat_template,
        bos=special.get("bos_token") or "",
        eos=special["eos_token"],
        add_bos=add_bos,
        checker=checker,
    )
    assert rendering.add_bos == add_bos and not any(rendering.errors)
    today = f"Today Date: {datetime.now().strftime('%d %b %Y')}\n"
    for index, conversation in enumerate(conversations):
        served, trained = rendering.served(index), tokenizer.render(conversation, add_generation_prompt=True)
        if stem in DEFAULT_DATE:  # both print the date of the render (templates.server_context)
            assert today in served and today in trained
        assert served == trained, f"conversation {index + 1}"
        if add_bos:  # llama-server drops the template's BOS text and adds BOS as a token
            assert not rendering.prompts[index].startswith(rendering.bos)


def test_gguf_mode_reads_template_and_tokens_from_the_file(checker):
    path = resolve_model(SMOLLM2).path
    fields = read_gguf_fields(path, "")
    tokenizer = ChatTokenizer(None, fields["tokenizer.chat_template"], gguf_special_tokens(fields), "smollm2")
    conversations = ollama.CHECK_CONVERSATIONS + CONVERSATIONS
    rendering = llama_render(conversations, gguf=path, checker=checker)
    assert (rendering.add_bos, rendering.bos, rendering.enable_thinking) == (False, "<|im_start|>", False)
    expected = [tokenizer.render(c, add_generation_prompt=True) for c in conversations]
    assert jinja_parity(rendering, expected) == f"{len(conversations)}/{len(conversations)} conversations"


def test_gguf_mode_handles_bos_like_llama_server(tmp_path, llama_cpp_src, official_templates, checker):
    """A Llama 3 vocabulary (llama.cpp adds BOS itself) with Llama 3.1's template in the file."""
    from quicktune.llamacpp import rewrite_metadata

    template = (official_templates / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    gguf = rewrite_metadata(
        llama_cpp_src / "models" / "ggml-vocab-llama-bpe.gguf",
        tmp_path / "llama3-vocab.gguf",
        values={"tokenizer.chat_template": template, "tokenizer.ggml.add_bos_token": True},
    )
    conversation = [{"role": "user", "content": "Hi"}]
    rendering = llama_render([conversation], gguf=gguf, checker=checker)
    assert (rendering.add_bos, rendering.bos) == (True, "<|begin_of_text|>")
    assert rendering.prompts[0].startswith("<|start_header_id|>system")  # BOS text dropped ...
    assert rendering.served(0).startswith("<|begin_of_text|><|start_header_id|>")  # ... and added as a token


def test_a_template_llama_cpp_cannot_render_is_reported_per_conversation(checker):
    picky = ("{% if messages[0]['content'] == 'boom' %}{{ raise_exception('no boom') }}{% endif %}"
             "{{ messages[0]['content'] }}")
    rendering = llama_render([[{"role": "user", "content": "x"}], [{"role": "user", "content": "boom"}]],
                             template=picky, checker=checker)
    assert rendering.prompts[0] == "x" and rendering.prompts[1] is None and "no boom" in rendering.errors[1]
    assert jinja_parity(rendering, ["x", "boom"]).startswith("1/2 conversations (conversation 2 raised")
    # A template that always raises: llama-server would not start, and no conversation renders.
    broken = "{{ raise_exception('never') }}"
    rendering = llama_render([[{"role": "user", "content": "x"}]], template=broken, checker=checker)
    assert rendering.prompts == [None] and rendering.errors[0].startswith("llama-server would not start")


def test_parity_names_the_first_difference():
    rendering = LlamaRendering(["<s>a b", "x"], [None, None], add_bos=False, bos="", enable_thinking=False)
    assert jinja_parity(rendering, ["<s>a b", "x"]) == "2/2 conversations"
    note = jinja_parity(rendering, ["<s>a c", "x"])
    assert note.startswith("1/2 conversations (conversation 1 at character 5: llama.cpp 'b', training 'c'")


def test_every_template_in_llama_cpps_corpus(official_templates, checker, capsys):
    """llama.cpp's ~70 official templates: llama.cpp's rendering against quicktune's (training's).

    Counts renders equal / different / raised on either side; the driver must answer every
    conversation of every template (an error is a result, a crash is not)."""
    conversations = ollama.CHECK_CONVERSATIONS + CONVERSATIONS
    rows, totals = [], Counter()
    for path in sorted(official_templates.glob("*.jinja")):
        source = path.read_text(encoding="utf-8")
        bos = "<|begin_of_text|>" if "<|begin_of_text|>" in source else "<s>"
        tokenizer = _tokenizer(source, {"bos_token": bos, "eos_token": "</s>"})
        rendering = llama_render(conversations, template=source, bos=bos, eos="</s>", checker=checker)
        assert len(rendering.prompts) == len(conversations)
        counts = Counter()
        for index, conversation in enumerate(conversations):
            try:
                trained = tokenizer.render(conversation, add_generation_prompt=True)
            except Exception:
                trained = None
            served = rendering.served(index)
            key = "llama.cpp raises" if served is None else "python raises" if trained is None else (
                "equal" if served == trained else "differ")
            counts[key] += 1
        totals.update(counts)
        renderer = ollama_renderer(source, "{{ .Content }}").renderer
        rows.append(f"{path.stem:55} {renderer:5} " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    with capsys.disabled():
        print("\n" + "\n".join(rows) + f"\n{len(rows)} templates x {len(conversations)} conversations: {dict(totals)}")
    assert len(rows) >= 60 and totals["equal"] > totals["differ"]


# --- the export's check -----------------------------------------------------------------------------


def _smollm2_template_tokenizer() -> tuple[Path, ChatTokenizer]:
    path = resolve_model(SMOLLM2).path
    fields = read_gguf_fields(path, "")
    return path, ChatTokenizer(None, fields["tokenizer.chat_template"], gguf_special_tokens(fields), "smollm2")


def test_export_check_renders_the_gguf_through_llama_cpp(monkeypatch, checker):
    from quicktune.export.verify import _llama_served

    monkeypatch.setenv("QUICKTUNE_CACHE", str(_test_cache_root()))  # where the fixture built the checker
    gguf, tokenizer = _smollm2_template_tokenizer()
    fmt = _format(tokenizer, add_bos=False)
    served, parity = _llama_served(gguf, tokenizer, fmt, CONVERSATIONS)
    total = len(ollama.CHECK_CONVERSATIONS) + len(CONVERSATIONS)
    assert parity == f"{total}/{total} conversations"
    assert [text for text, _ in served] == [tokenizer.render(c, add_generation_prompt=True) for c in CONVERSATIONS]


def test_without_a_compiler_the_check_is_skipped_with_the_reason(monkeypatch, tmp_path):
    from quicktune.export.llama_template import checker_status
    from quicktune.export.verify import _llama_served

    monkeypatch.setenv("PATH", str(tmp_path))  # no g++
    monkeypatch.setenv("QUICKTUNE_CACHE", str(tmp_path / "cache"))  # nothing built yet
    gguf, tokenizer = _smollm2_template_tokenizer()
    served, parity = _llama_served(gguf, tokenizer, None, CONVERSATIONS)
    assert served is None and parity == "skipped: g++ is not installed (apt-get install g++)"
    assert checker_status() == ("fail", "unavailable: g++ is not installed (the checker is compiled on first use)")

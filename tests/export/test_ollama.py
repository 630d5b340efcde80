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
from quicktune.export.renderer import ollama_renderer
from quicktune.ollama_rules import ModelfileSyntaxError, dropped_characters, go_is_print, read_modelfile

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
    "meta-llama-Llama-3.3-70B-Instruct": (
        "llama3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True
    ),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistral", {"bos_token": "<s>", "eos_token": "</s>"}, True),
    "google-gemma-2-2b-it": ("gemma", {"bos_token": "<bos>", "eos_token": "<eos>"}, True),
    "microsoft-Phi-3.5-mini-instruct": ("phi3", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}, False),
}
# Llama 3.x templates print today's date (date_string, strftime_now): golden files hold TODAY instead.
TODAY = "{{today}}"

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
    _family, special, _ = OFFICIAL[stem]
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
        renderer=ollama_renderer(tokenizer.chat_template, fmt.go_template()),
    )
    text = ollama.render_modelfile(fmt, settings)
    assert f"# Ollama renders prompts with: {settings.renderer.label}." in text
    back = read_modelfile(text)  # as Ollama's parser reads it: exactly what was meant
    assert back.template == fmt.go_template()
    assert back.stops == settings.stops and all(len(stop.split()) == 1 for stop in back.stops)
    assert back.system == (system.strip() if system and fmt.trims else system)
    text = text.replace(templates.server_context()["date_string"], TODAY)
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


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
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
    llama3 = _tokenizer(templates.FAMILY_TEMPLATES["llama3"],
                        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    assert ollama.stop_tokens(llama3.end_of_turn(), llama3.eos_token) == ["<|eot_id|>", "<|end_of_text|>"]
    mistral = _tokenizer(templates.FAMILY_TEMPLATES["mistral"], {"bos_token": "<s>", "eos_token": "</s>"})
    assert ollama.stop_tokens(mistral.end_of_turn(), mistral.eos_token) == ["</s>"]


def test_modelfile_has_parameters_system_and_quoted_literals():
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES["chatml"], {"eos_token": "<|im_end|>"})
    fmt = ollama.read_format(tokenizer.render)
    settings = ollama.ModelfileSettings("m.gguf", "m:q8_0", "Modelfile.q8_0", ["<|im_end|>"], 0.0, 1.0, 512,
                                        "Be brief.")
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
        ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}|{% endif %}{% endfor %}",
         "system prompt"),
        (("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
          "{% if messages|length > 2 %}(long){% endif %}"), "renders"),
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


# --- Ollama's Modelfile parser: what it reads back -------------------------------------------


def test_a_quoted_value_is_literal_so_an_escaped_stop_never_matches():
    # The line quicktune used to write for Phi-3.5: Ollama keeps the backslash and the n.
    back = read_modelfile('FROM ./m.gguf\nPARAMETER stop "<|end|>\\n<|endoftext|>"\n')
    assert back.stops == ["<|end|>\\n<|endoftext|>"]
    back = read_modelfile('FROM ./m.gguf\nPARAMETER stop "say \\"hi\\""\n')
    assert back.stops == ['say \\"hi\\"']  # the outer quotes are stripped, nothing else


def test_quoting_forms_and_where_a_value_ends():
    text = (
        "# a comment line\n"
        "FROM ./m.gguf\n"
        'TEMPLATE """line one\n  "quoted" line\n\tlast """\n'
        'SYSTEM "two\nlines"\n'
        "PARAMETER stop <|im_end|>\n"
        "parameter num_ctx   512  \n"
        "MESSAGE user hello there\n"
        'LICENSE """a""" \n'
    )
    back = read_modelfile(text)
    assert back.value("model") == "./m.gguf"
    assert back.template == 'line one\n  "quoted" line\n\tlast '
    assert back.system == "two\nlines"  # a quoted value runs on until a line ends with its quote
    assert back.stops == ["<|im_end|>"]
    assert back.value("num_ctx") == "512"
    assert back.value("message") == "user: hello there"
    assert back.value("license") == "a"
    with pytest.raises(ModelfileSyntaxError, match="never closed"):
        read_modelfile('FROM ./m.gguf\nSYSTEM """open\n')
    with pytest.raises(ModelfileSyntaxError, match="unknown command"):
        read_modelfile("FROM ./m.gguf\nSTOP x\n")
    with pytest.raises(ModelfileSyntaxError, match="no FROM"):
        read_modelfile('SYSTEM "x"\n')


def test_characters_go_does_not_print_are_dropped_except_tab_cr_lf():
    system = "Réponds en français\u00a0!\u200b soft\u00adhyphen\x07 tab\tcr\rlf\nend"
    back = read_modelfile(f'FROM ./m.gguf\nSYSTEM """{system}"""\n')
    assert back.system == "Réponds en français! softhyphen tab\tcr\rlf\nend"
    assert dropped_characters(system) == ["\u00a0", "\u200b", "\u00ad", "\x07"]
    assert go_is_print(" ") and go_is_print("é") and go_is_print("€") and go_is_print("\u0301")  # a mark
    assert not go_is_print("\u3000") and not go_is_print("\t")  # only the ASCII space among spaces


GO_IS_PRINT = """package main

import (
	"bufio"
	"os"
	"strconv"
	"unicode"
)

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		known := false
		for _, table := range unicode.Categories {
			if unicode.Is(table, r) {
				known = true
				break
			}
		}
		switch {
		case !known:
			out.WriteByte('?')
		case strconv.IsPrint(r):
			out.WriteByte('1')
		default:
			out.WriteByte('0')
		}
	}
}
"""


@needs_go
def test_go_is_print_matches_go_on_every_code_point_both_unicode_versions_know(tmp_path):
    import subprocess
    import unicodedata

    source = tmp_path / "isprint.go"
    source.write_text(GO_IS_PRINT)
    done = subprocess.run(
        ["go", "run", str(source)], capture_output=True, text=True, check=True, env={**os.environ, "GO111MODULE": "off"}
    )
    marks = done.stdout
    assert len(marks) == 0x110000
    compared = differ = 0
    for code, mark in enumerate(marks):
        char = chr(code)
        if mark == "?" or unicodedata.category(char) == "Cn":
            continue  # unassigned in Go's or Python's Unicode version
        compared += 1
        differ += go_is_print(char) != (mark == "1")
    assert compared > 280_000 and differ == 0


# --- what quicktune writes, read back ----------------------------------------------------------


def _chatml_format():
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES["chatml"], {"eos_token": "<|im_end|>"})
    return ollama.read_format(tokenizer.render)


def test_a_system_prompt_ollama_would_change_is_an_error_naming_the_characters_and_the_key():
    settings = ollama.ModelfileSettings(
        "m.gguf", "m:q8_0", "Modelfile", ["<|im_end|>"], 0, 1, 512, "Réponds en français\u00a0!",
        system_key="data.system_prompt",
    )
    with pytest.raises(ollama.ModelfileValueError) as caught:
        ollama.render_modelfile(_chatml_format(), settings)
    message = str(caught.value)
    assert "data.system_prompt" in message and "U+00A0 NO-BREAK SPACE" in message
    assert "'Réponds en français!'" in message  # what Ollama would serve instead


@pytest.mark.parametrize("stop", ["<|end|>\n<|endoftext|>", 'say "hi"', "two words", "bell\x07"])
def test_a_stop_that_is_not_one_token_ollama_reads_literally_is_refused(stop):
    with pytest.raises(ollama.ModelfileValueError, match="stop"):
        ollama.stop_tokens(stop, "</s>")


def test_system_with_quotes_and_edges_round_trips():
    settings = ollama.ModelfileSettings(
        "m.gguf", "m", "Modelfile", ["<|im_end|>"], 0, 1, 512, ' Say "hi"\n\tthen stop "'
    )
    text = ollama.render_modelfile(_chatml_format(), settings)
    assert read_modelfile(text).system == ' Say "hi"\n\tthen stop "'  # chatml does not trim: kept as trained


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_stops_are_single_tokens_on_official_templates(official_templates, stem):
    tokenizer = _official(official_templates, stem)
    stops = ollama.stop_tokens(tokenizer.end_of_turn(), tokenizer.eos_token)
    expected = {
        "microsoft-Phi-3.5-mini-instruct": ["<|end|>", "<|endoftext|>"],  # the template writes <|end|>\n<|endoftext|>
        "google-gemma-2-2b-it": ["<end_of_turn>", "<eos>"],
        "mistralai-Mistral-Nemo-Instruct-2407": ["</s>"],
    }
    assert stops == expected.get(stem, [OFFICIAL[stem][1]["eos_token"]])


@pytest.mark.slow
def test_end_of_turn_with_a_vocabulary_is_the_longest_token_the_tail_starts_with(smollm2_tokenizer):
    phi = ChatTokenizer(
        smollm2_tokenizer.backend,
        "{% for m in messages %}{{ m['content'] }}<|im_end|><|im_start|>{% endfor %}",
        smollm2_tokenizer.special,
        "test",
    )
    assert phi.end_of_turn() == "<|im_end|>"  # two special tokens with nothing between them
    assert smollm2_tokenizer.end_of_turn() == "<|im_end|>"


# --- whitespace at a message's edges -------------------------------------------------------------

TRIMMING = {
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "google-gemma-2-2b-it",
}


@needs_go
@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_whitespace_edges_train_and_serve_alike(official_templates, stem):
    _, _, add_bos = OFFICIAL[stem]
    tokenizer = _official(official_templates, stem)
    assert tokenizer.trims_messages() == (stem in TRIMMING)  # probed, not looked up by name
    fmt = ollama.read_format(tokenizer.render, bos=tokenizer.special.get("bos_token"), add_bos=add_bos)
    assert fmt.trims == (stem in TRIMMING)
    edged = _msgs(("system", "Be exact. \n"), ("user", "  hi  \n"), ("assistant", "\nhello "), ("user", "\tbye "))
    trained = tokenizer.render(edged, add_generation_prompt=True)
    sent, raw = ollama.go_render(fmt.go_template(), [fmt.client_messages(edged), edged])
    assert fmt.bos + sent == trained  # what a client that strips edges gets from Ollama
    assert (fmt.bos + raw == trained) == (stem not in TRIMMING)  # why the README tells Ollama users to strip


def test_data_check_strips_edges_for_a_trimming_template_and_says_so(tmp_path):
    from quicktune.data.check import prepare
    from tests.conftest import write_jsonl

    rows = [
        {"messages": [{"role": "user", "content": f"  question {i} \n"},
                      {"role": "assistant", "content": f"answer {i}\n"}]}
        for i in range(3)
    ]
    data = write_jsonl(tmp_path / "edges.jsonl", rows)
    trimming = _tokenizer(templates.FAMILY_TEMPLATES["llama3"], FAMILY_SPECIALS["llama3"][0])
    prepared = prepare([str(data)], tokenizer=None)
    assert prepared.train[0].messages[0].content == "  question 0 \n"  # no template: left as written
    from quicktune.data.formats import strip_message_edges

    stripped, changed = strip_message_edges(prepared.train)
    assert changed == 6 and stripped[0].messages[0].content == "question 0"
    assert trimming.render(prepared.train[0].as_dicts()) == trimming.render(stripped[0].as_dicts())
    chatml = _tokenizer(templates.FAMILY_TEMPLATES["chatml"], {"eos_token": "<|im_end|>"})
    assert not chatml.trims_messages() and trimming.trims_messages()


@pytest.mark.slow
def test_data_check_reports_stripped_edges_and_a_system_prompt_ollama_drops(tmp_path):
    from quicktune.data.check import prepare
    from quicktune.data.tokenizer import load_chat_tokenizer
    from tests.conftest import SMOLLM2, write_jsonl

    rows = [
        {"messages": [{"role": "user", "content": f"  question {i} \n"},
                      {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(3)
    ]
    data = write_jsonl(tmp_path / "edges.jsonl", rows)
    gemma = load_chat_tokenizer(SMOLLM2, chat_template="gemma")
    report = prepare([str(data)], tokenizer=gemma, system_prompt="Réponds en français\u00a0!").report
    assert any("3 message(s) start or end with whitespace" in w for w in report.warnings)
    assert any(w.startswith("data.system_prompt:") and "U+00A0 NO-BREAK SPACE" in w for w in report.warnings)
    chatml = load_chat_tokenizer(SMOLLM2)
    report = prepare([str(data)], tokenizer=chatml).report
    assert not any("whitespace" in w for w in report.warnings)


def test_modelfile_system_loses_its_edges_when_the_template_trims():
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES["llama3"], FAMILY_SPECIALS["llama3"][0])
    fmt = ollama.read_format(tokenizer.render, bos="<|begin_of_text|>", add_bos=True)
    settings = ollama.ModelfileSettings("m.gguf", "m", "Modelfile", ["<|eot_id|>"], 0, 1, 512, "Be brief.\n")
    assert read_modelfile(ollama.render_modelfile(fmt, settings)).system == "Be brief."


# --- Gemma 2 and a system message -----------------------------------------------------------------


@needs_go
def test_gemma2_system_message_training_ollama_and_llama_server_agree(official_templates):
    from quicktune.export.llama_template import CheckerUnavailable, llama_render

    tokenizer = _official(official_templates, "google-gemma-2-2b-it")
    assert not tokenizer.accepts_system()  # the official template raises on it
    conversations = [
        _msgs(("system", "Answer in French."), ("user", "What is 2+2?")),
        _msgs(("system", "Be terse.\nOne line."), ("user", "a"), ("assistant", "b"), ("user", "c")),
    ]
    trained = [tokenizer.render(c, add_generation_prompt=True) for c in conversations]
    assert trained[0] == (
        "<bos><start_of_turn>user\nAnswer in French.\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    )
    fmt = ollama.read_format(tokenizer.render, bos="<bos>", add_bos=True)
    served_by_go = ollama.go_render(fmt.go_template(), conversations)
    assert [fmt.bos + text for text in served_by_go] == trained  # Ollama, Go TEMPLATE
    try:  # llama-server (and Ollama when it renders the GGUF's template): llama.cpp's own engine
        rendering = llama_render(
            conversations, template=tokenizer.chat_template, bos="<bos>", eos="<eos>", add_bos=True
        )
    except CheckerUnavailable as exc:
        pytest.skip(f"llama.cpp's template engine: {exc}")
    assert [rendering.served(i) for i in range(len(conversations))] == trained


def test_fold_system_joins_like_llama_cpp_source(llama_cpp_src):
    """The separator llama.cpp's server path puts between a refused system message and the next turn."""
    import re

    from quicktune.data.tokenizer import fold_system

    chat_cpp = (llama_cpp_src / "common" / "chat.cpp").read_text(encoding="utf-8")
    body = chat_cpp[chat_cpp.index("static void system_message_not_supported") :][:1200]
    joined = re.search(
        r'first_msg\.at\("content"\)\.get<std::string>\(\)\s*\+\s*"((?:[^"\\]|\\.)*)"\s*\+\s*second_msg', body
    )
    assert joined, "llama.cpp no longer merges a system message this way: check fold_system against it"
    separator = joined[1].encode().decode("unicode_escape")
    folded = fold_system(_msgs(("system", "S"), ("user", "U"), ("assistant", "A")))
    assert folded == _msgs(("user", f"S{separator}U"), ("assistant", "A")) and separator == "\n"


def _family_modelfile(family: str, template_check: str | None) -> str:
    special, add_bos = FAMILY_SPECIALS[family]
    tokenizer = _tokenizer(templates.FAMILY_TEMPLATES[family], special)
    fmt = ollama.read_format(tokenizer.render, bos=tokenizer.special.get("bos_token"), add_bos=add_bos)
    if template_check == "measure":
        template_check = ollama.template_check(fmt, tokenizer.render)
    settings = ollama.ModelfileSettings(
        gguf_name="x-q4_k_m.gguf", name="x:q4_k_m", modelfile_name="Modelfile.q4_k_m",
        stops=ollama.stop_tokens(tokenizer.end_of_turn(), tokenizer.eos_token), temperature=0.7, top_p=0.9,
        num_ctx=4096, renderer=ollama_renderer(tokenizer.chat_template, fmt.go_template()),
        template_check=template_check,
    )
    return ollama.render_modelfile(fmt, settings)


def _header(text: str) -> str:
    return " ".join(line.removeprefix("# ") for line in text.splitlines() if line.startswith("#"))


def test_the_header_says_go_did_not_render_the_template_when_go_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no go here
    text = _family_modelfile("chatml", "measure")
    header = _header(text)
    assert "checked that both render the same prompts" not in header
    assert "Not rendered with Go's text/template on this export (Go is not installed" in header
    assert f"reproduces it on {len(ollama.CHECK_CONVERSATIONS)} conversations (in Python)" in header
    assert read_modelfile(text).template is not None  # still a Modelfile Ollama reads
    assert all(len(line) <= 100 for line in text.splitlines() if line.startswith("#"))


@needs_go
def test_the_header_says_what_go_rendered_on_this_export():
    header = _header(_family_modelfile("gemma", "measure"))
    n = len(ollama.CHECK_CONVERSATIONS)
    assert f"Rendered with Go's text/template (as Ollama does) on this export: {n}/{n} conversations equal" in header


def test_a_modelfile_written_without_a_check_does_not_claim_one():
    assert "Not rendered with Go's text/template for this file." in _header(_family_modelfile("phi3", None))

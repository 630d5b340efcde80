"""quicktune's training tokenizer for a GGUF base against llama.cpp, on llama.cpp's real vocabularies.

The llama-cpp-python sdist ships llama.cpp's tokenizer tests: ``models/ggml-vocab-<name>.gguf``
(the vocabulary of a real model family), ``.inp`` (test strings separated by a
``\\n__ggml_vocab_test__\\n`` line) and ``.out`` (one line of the ids llama.cpp expects per
string). For every vocabulary quicktune supports, ``load_chat_tokenizer(<vocab>.gguf)`` must
give exactly those ids on every string, and llama.cpp itself (vocab only) must agree; the others
are refused at load time with a message naming the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quicktune.errors import QuicktuneError
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.slow

SEPARATOR = "\n__ggml_vocab_test__\n"
# llama.cpp's file name -> the families quicktune trains with it
SUPPORTED = {
    "llama-bpe": "Llama 3.x",
    "llama-spm": "Llama 2, Mistral (SentencePiece)",
    "phi-3": "Phi-3/3.5",
    "qwen2": "Qwen2/2.5/3",
    "qwen35": "Qwen3.5",
}
# Refused, and why: the message must name the cause.
REFUSED = {
    "gemma-4": "'gemma4'",  # llama.cpp's own tokenizer type for Gemma 4; transformers cannot read the file
    "command-r": "'command-r'",
    "deepseek-llm": "'deepseek-llm'",
    "bert-bge": "'bert'",
}
_table: dict[str, tuple[int, int | None, int | None, int]] = {}  # cases, ours/.out, llama.cpp/.out, ours/llama.cpp


def read_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    raw = Path(f"{vocab}.inp").read_text(encoding="utf-8")
    texts = raw.removesuffix(SEPARATOR).split(SEPARATOR)  # most files end with a separator, gemma-4's not
    expected = Path(f"{vocab}.out").read_text(encoding="utf-8").splitlines()
    assert len(expected) == len(texts)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, expected)]


@pytest.fixture(scope="module")
def vocabs(llama_cpp_src) -> Path:
    return llama_cpp_src / "models"


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_training_tokenizer_equals_llama_cpp(vocabs: Path, name: str):
    import llama_cpp

    from quicktune.data.tokenizer import load_chat_tokenizer

    vocab = vocabs / f"ggml-vocab-{name}.gguf"
    cases = read_cases(vocab)
    tokenizer = load_chat_tokenizer(str(vocab))
    llm = llama_cpp.Llama(model_path=str(vocab), vocab_only=True, verbose=False)
    ours = [encoding.ids for encoding in tokenizer.encode_batch([text for text, _ in cases])]
    theirs = [llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text, _ in cases]
    expected = [ids for _, ids in cases]
    _table[name] = (len(cases), _equal(ours, expected), _equal(theirs, expected), _equal(ours, theirs))
    wrong = [
        (text, [tokenizer.backend.id_to_token(i) for i in want], [tokenizer.backend.id_to_token(i) for i in got])
        for (text, want), got in zip(cases, ours)
        if got != want
    ]
    assert not wrong, f"{name}: {len(wrong)} of {len(cases)} strings differ, first: {wrong[0]}"
    assert theirs == expected, f"{name}: llama.cpp itself disagrees with its .out file"


def _equal(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def test_smollm2_training_tokenizer_equals_llama_cpp(vocabs: Path, smollm2_tokenizer):
    """The demo's GGUF has no .out file: llama.cpp on the SmolLM2 GGUF itself is the reference,
    on the test strings of all of llama.cpp's vocabularies."""
    import llama_cpp

    from quicktune.models import resolve_model

    files = sorted(vocabs.glob("*.gguf.inp"))
    texts = list(dict.fromkeys(text for inp in files for text, _ in read_cases(inp.with_suffix(""))))
    llm = llama_cpp.Llama(model_path=str(resolve_model(SMOLLM2).path), vocab_only=True, verbose=False)
    ours = [encoding.ids for encoding in smollm2_tokenizer.encode_batch(texts)]
    theirs = [llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text in texts]
    _table["smollm2"] = (len(texts), None, None, _equal(ours, theirs))
    assert ours == theirs


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_vocabulary_is_refused(vocabs: Path, name: str):
    from quicktune.data.tokenizer import load_chat_tokenizer

    with pytest.raises(QuicktuneError) as caught:
        load_chat_tokenizer(str(vocabs / f"ggml-vocab-{name}.gguf"))
    assert REFUSED[name] in str(caught.value) and "llama.cpp" in str(caught.value)


def test_print_table():
    """The table for the issue's closing note (run with -s): vocabulary x cases x equal."""
    if not _table:
        pytest.skip("no vocabulary was checked in this run")
    families = {**SUPPORTED, "smollm2": "SmolLM2 (the demo's GGUF, no .out)"}
    columns = ("cases", "quicktune == .out", "llama.cpp == .out", "quicktune == llama.cpp")
    print(f"\n {'vocabulary':<11} {'family':<36} " + " ".join(f"{c:>22}" for c in columns))
    for name, counts in _table.items():
        cells = " ".join(f"{'-' if n is None else n:>22}" for n in counts)
        print(f" {name:<11} {families[name]:<36} {cells}")
